"""Batched CascadePSP against the official package, one mask at a time (section 3.1 step 3).

The reference is ``segmentation_refinement`` itself (``Refiner.refine`` and ``process_im_single_pass``)
run on the same crops with the same random-initialised weights of the real architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sohes_hf.masks import decode_mask, encode_mask, mask_boxes_xywh
from sohes_hf.pseudo_labeling.cascadepsp import mask_to_input, normalize_image, refine_crops
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.refinement import CascadePSPRefiner, _crop_window

pytest.importorskip("segmentation_refinement")

_SIDE = 72  # the smallest L whose local windows are a few pixels apart (stride L // 2 - 32 = 4)


class _PassRecorder:
    """Forward pre-hook noting (batch size, has coarse input) of each network pass."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, bool]] = []

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.passes.append((int(args[0].shape[0]), len(args) > 2 and args[2] is not None))


def _checkpoint(folder: Path) -> torch.nn.Module:
    """Random CascadePSP in the package's checkpoint layout (``module.`` keys) saved as folder/model.

    The final bias is lowered a little so the random network's global prediction is neither all
    foreground nor all background on the test crops: otherwise every local window is skipped.
    """
    from segmentation_refinement.models.psp.pspnet import RefinementModule

    torch.manual_seed(0)
    model = RefinementModule().eval()
    with torch.no_grad():
        model.final_21.bias -= 0.2
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, folder / "model")
    return model


def _scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 48 x 96 image and masks whose square crops (margin 0.5, side step 8) are 48 x 80 (clipped
    by the image; three local windows at L = 72), twice 32 x 32 (min side; one batch), and an empty mask."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 96, 3), dtype=np.uint8)
    boxes = [(20, 20, 38, 8), (4, 4, 12, 12), (70, 30, 12, 12)]  # x, y, w, h
    masks = []
    for x, y, w, h in boxes:
        mask = np.zeros((48, 96), dtype=bool)
        mask[y : y + h, x : x + w] = True
        image[mask] //= 3  # darker inside, so the random network's prediction varies
        masks.append(mask)
    masks.append(np.zeros((48, 96), dtype=bool))
    return image, masks


@pytest.mark.slow  # CascadePSP (68M parameters): 6 global and ~10 local passes at <= 72 px, twice
def test_batched_refiner_gives_the_package_masks(tmp_path: Path) -> None:
    from segmentation_refinement import Refiner

    model = _checkpoint(tmp_path)
    image, masks = _scene()
    refiner = CascadePSPRefiner(weights_folder=tmp_path, max_side=_SIDE, square_crop_step=8, batch_size=4)
    recorder = _PassRecorder()
    refiner.model.register_forward_pre_hook(recorder)
    refined = [decode_mask(r) for r in refiner.refine(image, [encode_mask(m) for m in masks])]

    package = Refiner(device="cpu", model_folder=str(tmp_path), download_and_check_model=False)
    boxes = mask_boxes_xywh([encode_mask(m) for m in masks[:3]])
    for mask, box, result in zip(masks[:3], boxes, refined[:3], strict=True):
        x0, y0, x1, y1 = _crop_window(box, 96, 48, refiner.crop_margin, refiner.min_crop_side, 8)
        assert (y1 - y0, x1 - x0) in {(48, 80), (32, 32)}
        output = package.refine(image[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.uint8) * 255, L=_SIDE)
        expected = np.zeros_like(mask)
        expected[y0:y1, x0:x1] = output > 127
        np.testing.assert_array_equal(result, expected)
        assert 0 < expected.sum() < mask.size  # not a trivially empty or full answer
    assert not refined[3].any()
    # The local step ran, and crops of one shape shared a pass.
    assert any(has_coarse for _, has_coarse in recorder.passes)
    assert max(size for size, _ in recorder.passes) > 1
    assert model.final_21.bias.item() == pytest.approx(refiner.model.final_21.bias.item())


@pytest.mark.slow  # three global passes at 72 px
def test_fast_mode_probabilities_match_the_package(tmp_path: Path) -> None:
    from segmentation_refinement.eval_helper import process_im_single_pass

    model = _checkpoint(tmp_path)
    rng = np.random.default_rng(1)
    shapes = [(24, 90), (24, 90), (72, 72)]  # shrunk (twice, one batch), kept as is
    images = [rng.integers(0, 256, size=(*s, 3), dtype=np.uint8) for s in shapes]
    masks = [rng.random(s) < 0.5 for s in shapes]
    image_inputs = [normalize_image(torch.from_numpy(i)) for i in images]
    mask_inputs = [mask_to_input(torch.from_numpy(m)) for m in masks]
    batched = refine_crops(model, image_inputs, mask_inputs, max_side=_SIDE, fast=True, batch_size=8)
    with torch.no_grad():
        for image, mask, result in zip(image_inputs, mask_inputs, batched, strict=True):
            expected = process_im_single_pass(model, image[None], mask[None], _SIDE)[0, 0]
            assert result.shape == expected.shape
            assert torch.max(torch.abs(result - expected)).item() < 1e-5
    # bf16 autocast: float32 outputs of the same shapes, close to the float32 ones.
    low = refine_crops(
        model,
        image_inputs[:1],
        mask_inputs[:1],
        _SIDE,
        fast=True,
        batch_size=8,
        autocast_dtype=torch.bfloat16,
    )
    assert low[0].dtype == torch.float32 and low[0].shape == batched[0].shape
    assert torch.mean(torch.abs(low[0] - batched[0])).item() < 0.05


def test_normalization_matches_the_package_transforms() -> None:
    """The package's torchvision transforms (ToTensor, Normalize), written as its Refiner builds them."""
    from torchvision import transforms

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    mask = rng.random((5, 7)) < 0.5
    image_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
    )
    mask_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    assert torch.equal(normalize_image(torch.from_numpy(image)), image_transform(image))
    assert torch.equal(mask_to_input(torch.from_numpy(mask)), mask_transform(mask.astype(np.uint8) * 255))


def test_bad_batch_size_and_precision_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CascadePSPRefiner(weights_folder=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        CascadePSPRefiner(weights_folder=tmp_path, precision="int8")
    with pytest.raises(ValueError, match="square_crop_step"):
        CascadePSPRefiner(weights_folder=tmp_path, square_crop_step=-1)
    with pytest.raises(ValueError, match="refinement_batch_size"):
        SelfExplorationConfig(refinement_batch_size=0)
    with pytest.raises(ValueError, match="refinement_precision"):
        SelfExplorationConfig(refinement_precision="auto")


@pytest.mark.parametrize("step", [8, 32])
def test_square_crops_hold_the_box_inside_the_image(step: int) -> None:
    rng = np.random.default_rng(step)
    width, height = 200, 120
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 150, 2))
        w, h = min(w, width), min(h, height)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        x0, y0, x1, y1 = _crop_window(np.array([x, y, w, h]), width, height, 0.5, 32, step)
        assert 0 <= x0 <= x and x + w <= x1 <= width and 0 <= y0 <= y and y + h <= y1 <= height
        side = int(np.ceil(max(2.0 * max(w, h), 32) / step)) * step  # (1 + 2 x margin) x longer side
        assert (y1 - y0, x1 - x0) == (min(side, height), min(side, width))
