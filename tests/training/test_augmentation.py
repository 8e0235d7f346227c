"""Joint image/mask/hierarchy augmentations (paper sections 3.2-3.3, appendix E)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sohes_hf.modeling.targets import ancestor_matrix
from sohes_hf.training.augmentation import (
    AugmentedSample,
    copy_paste,
    drop_masks,
    large_scale_jitter,
    normalize_image,
    photometric_strong,
)


def _nested_sample(size: int = 48, colour: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Red channel 1 exactly on the root mask; root > part > sub-part, plus a second root."""
    image = torch.zeros(3, size, size)
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    masks[0, 4:36, 4:36] = True
    masks[1, 8:24, 8:24] = True
    masks[2, 10:16, 10:16] = True
    masks[3, 40:46, 2:46] = True
    image[0][masks[0]] = colour
    image[1][masks[3]] = colour
    return image, masks, torch.tensor([-1, 0, 1, -1])


def _brute_force_relink(parents: list[int], keep: list[bool]) -> list[int]:
    index = {old: new for new, old in enumerate(i for i, k in enumerate(keep) if k)}
    out = []
    for node, kept in enumerate(keep):
        if not kept:
            continue
        ancestor = parents[node]
        while ancestor != -1 and not keep[ancestor]:
            ancestor = parents[ancestor]
        out.append(-1 if ancestor == -1 else index[ancestor])
    return out


@pytest.mark.parametrize(
    "keep", [[True, False, True, True], [False, True, True, False], [True, True, False, True]]
)
def test_drop_masks_relinks_to_nearest_surviving_ancestor(keep: list[bool]) -> None:
    _, masks, parents = _nested_sample()
    kept_masks, new_parents = drop_masks(masks, parents, torch.tensor(keep))
    assert kept_masks.shape[0] == sum(keep)
    assert new_parents.tolist() == _brute_force_relink(parents.tolist(), keep)


def test_large_scale_jitter_keeps_masks_aligned_with_pixels() -> None:
    image, masks, parents = _nested_sample()
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        out = large_scale_jitter(image, masks, parents, 64, 0.5, 2.0, 0.5, generator)
        assert out.image.shape == (3, 64, 64) and out.masks.shape[1:] == (64, 64)
        assert out.valid.dtype == torch.bool and out.masks.dtype == torch.bool
        # Padding holds no image content and no mask.
        assert torch.all(out.image[:, ~out.valid] == 0)
        assert not out.masks[:, ~out.valid].any()
        # The root's mask follows its red pixels: mask and red >= 0.5 agree except on edge pixels.
        if out.masks.shape[0] and out.parents[0] == -1 and out.masks[0].sum() > 50:
            red = out.image[0] > 0.5
            disagreement = (red ^ out.masks[0]).float().sum() / out.masks[0].sum()
            assert disagreement < 0.25


def test_large_scale_jitter_is_deterministic_given_the_generator() -> None:
    image, masks, parents = _nested_sample()
    a = large_scale_jitter(image, masks, parents, 64, 0.1, 2.0, 0.5, torch.Generator().manual_seed(3))
    b = large_scale_jitter(image, masks, parents, 64, 0.1, 2.0, 0.5, torch.Generator().manual_seed(3))
    assert (
        torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks) and torch.equal(a.parents, b.parents)
    )


def test_large_scale_jitter_keeps_hierarchy_true() -> None:
    """After cropping, every surviving ancestor still contains its descendants' pixels."""
    image, masks, parents = _nested_sample()
    for seed in range(8):
        out = large_scale_jitter(
            image, masks, parents, 64, 0.5, 2.0, 0.5, torch.Generator().manual_seed(seed), 4
        )
        assert (out.masks.flatten(1).sum(1) >= 4).all()
        relation = ancestor_matrix(out.parents.numpy())
        for i, j in zip(*np.nonzero(relation), strict=True):
            assert not (out.masks[j] & ~out.masks[i]).any()


def _canvas_sample(image: torch.Tensor, masks: torch.Tensor, parents: torch.Tensor) -> AugmentedSample:
    return AugmentedSample(image, masks, parents, torch.ones(image.shape[1:], dtype=torch.bool))


def test_copy_paste_occludes_drops_and_appends_trees() -> None:
    image, masks, parents = _nested_sample()
    target = _canvas_sample(image, masks, parents)
    # Source: one root covering the target's sub-part and part (fully) with a child of its own.
    source_masks = torch.zeros(2, 48, 48, dtype=torch.bool)
    source_masks[0, 6:26, 6:26] = True
    source_masks[1, 6:10, 6:10] = True
    source_image = torch.full((3, 48, 48), 0.5)
    source = _canvas_sample(source_image, source_masks, torch.tensor([-1, 0]))
    out = copy_paste(target, source, max_pasted_objects=3, generator=torch.Generator().manual_seed(0))
    region = source_masks[0]
    # Target part (8:24) and sub-part (10:16) are fully covered: dropped. Root 0 and root 3 stay,
    # minus the occluded pixels; then the pasted root and its child, with the child's parent renumbered.
    assert out.masks.shape[0] == 4
    assert torch.equal(out.masks[0], masks[0] & ~region)
    assert torch.equal(out.masks[1], masks[3])
    assert torch.equal(out.masks[2], source_masks[0]) and torch.equal(out.masks[3], source_masks[1])
    assert out.parents.tolist() == [-1, -1, -1, 2]
    assert torch.equal(out.image[:, region], source_image[:, region])
    assert torch.equal(out.image[:, ~region], image[:, ~region])


def test_copy_paste_without_source_masks_is_identity() -> None:
    image, masks, parents = _nested_sample()
    target = _canvas_sample(image, masks, parents)
    empty = _canvas_sample(
        torch.zeros_like(image), torch.zeros(0, 48, 48, dtype=torch.bool), torch.zeros(0).long()
    )
    assert copy_paste(target, empty, 2, torch.Generator().manual_seed(0)) is target


def test_photometric_strong_keeps_geometry_and_padding() -> None:
    image, _, _ = _nested_sample()
    image = image + 0.2 * torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    valid = torch.zeros(48, 48, dtype=torch.bool)
    valid[:40, :30] = True
    image = image.clamp(0, 1) * valid
    out = photometric_strong(image, valid, 0.4, 0.5, 0.5, torch.Generator().manual_seed(2))
    assert out.shape == image.shape
    assert torch.all(out[:, ~valid] == 0)
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, image)


def test_normalize_image_zeroes_padding() -> None:
    image = torch.rand(3, 8, 8)
    valid = torch.zeros(8, 8, dtype=torch.bool)
    valid[:4] = True
    out = normalize_image(image, valid, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(out[:, :4], (image[:, :4] - 0.5) / 0.25)
    assert torch.all(out[:, 4:] == 0)
