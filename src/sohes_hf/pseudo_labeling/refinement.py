"""Step 3 of self-exploration: mask refinement and removal of poorly-agreeing masks (section 3.1).

SOHES refines every pseudo-label with the off-the-shelf CascadePSP model, computes the IoU of each
mask before and after refinement, and removes the masks with a poor IoU "because they are likely
noisy samples". A mask the refiner moves a lot is one whose boundary the clustering and the
refiner disagree on; the default cut (``refinement_iou_threshold`` = 0.5) drops a mask when less
than half of the union of the two versions is shared.

Backends: ``none`` (identity, for ablations and machines without the weights) and ``cascadepsp``
(pip ``segmentation-refinement``, the ``refine`` extra of sohes-hf). CascadePSP is applied to a
square crop around each mask (the box's longer side grown by ``crop_margin`` of it on each side,
rounded up to a multiple of 32 px), so a small entity is refined at a useful scale, large images
do not cost full-image passes per mask, and crops share shapes, so many go through the network
in one batch (:mod:`sohes_hf.pseudo_labeling.cascadepsp`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import decode_mask, encode_mask, mask_boxes_xywh

logger = get_logger(__name__)

RLE = dict[str, Any]
#: Refiner network precisions: fp32 is the package's arithmetic; fp16 / bf16 run it under autocast.
REFINER_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_MIN_LOCAL_STEP_SIDE = 66


class MaskRefiner(ABC):
    """Turns masks of an image into refined masks of the same size (one output per input)."""

    name: str = "abstract"

    @abstractmethod
    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        """Refines masks.

        Args:
            image: RGB (H, W, 3) uint8.
            masks: N COCO RLEs of size (H, W).

        Returns:
            N refined RLEs of size (H, W), in input order (a mask may become empty).
        """


class IdentityRefiner(MaskRefiner):
    """The ``none`` backend: returns the masks unchanged (every IoU is 1, nothing is dropped)."""

    name = "none"

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        check_rgb_image(image)
        return [dict(rle) for rle in masks]


class CascadePSPRefiner(MaskRefiner):
    """CascadePSP (Cheng et al., CVPR 2020) with the official ``segmentation-refinement`` weights.

    The network is the package's ``RefinementModule``; its global and local steps are run by
    :mod:`sohes_hf.pseudo_labeling.cascadepsp`, which gives the package's ``Refiner.refine``
    output for each crop but passes up to ``batch_size`` crops (or local windows) of one shape
    through the network at once: on a GPU, one mask per call leaves it mostly idle.

    Args:
        weights_folder: folder holding the checkpoint as ``<folder>/model`` (a state dict whose
            keys carry the ``module.`` prefix, as the package ships it); loaded offline with
            ``weights_only=True``. ``None`` uses the package's folder (``~/.segmentation-refinement``)
            and lets the package download the file there.
        device: "cpu" or "cuda[:i]".
        max_side: CascadePSP's ``L``: the side of its global step (package default 900).
        fast: global step only.
        crop_margin: context around each mask's box, as a fraction of the box side, on each side.
        min_crop_side: smallest crop side in pixels.
        square_crop_step: crops are squares (side: the box's longer side grown by ``crop_margin``
            per side) rounded up to a multiple of this many pixels, so that they share shapes
            and batch; 0 crops the grown box itself (one shape per mask, nothing to batch).
        batch_size: most crops per network pass (1 = the package's one mask at a time). A pass at
            ``L`` = 900 holds ~0.6 GB of activations per crop in float32; lower it if memory is short.
        precision: "fp32" (default: the package's arithmetic and masks), or "bf16" / "fp16":
            the network under autocast, several times faster on a GPU with tensor cores, masks
            differing from the package's along uncertain boundaries.
    """

    name = "cascadepsp"

    def __init__(
        self,
        weights_folder: str | Path | None = None,
        device: str = "cpu",
        max_side: int = 900,
        fast: bool = False,
        crop_margin: float = 0.5,
        min_crop_side: int = 32,
        square_crop_step: int = 32,
        batch_size: int = 8,
        precision: str = "fp32",
    ) -> None:
        if max_side < (8 if fast else _MIN_LOCAL_STEP_SIDE):
            # The package's local step walks windows of stride L // 2 - 32, which must be positive.
            minimum = 8 if fast else _MIN_LOCAL_STEP_SIDE
            raise ValueError(f"max_side: must be >= {minimum} (fast={fast}), got {max_side}")
        if crop_margin < 0:
            raise ValueError(f"crop_margin: must be >= 0, got {crop_margin}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        if precision not in REFINER_PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(REFINER_PRECISIONS)}, got {precision!r}")
        self.max_side = int(max_side)
        self.fast = bool(fast)
        self.crop_margin = float(crop_margin)
        self.min_crop_side = int(min_crop_side)
        if (
            isinstance(square_crop_step, bool)
            or not isinstance(square_crop_step, int)
            or square_crop_step < 0
        ):
            raise ValueError(f"square_crop_step: must be an integer >= 0, got {square_crop_step!r}")
        self.square_crop_step = square_crop_step
        self.batch_size = batch_size
        self.precision = precision
        self.device = torch.device(device)
        self.model = load_cascadepsp(weights_folder, self.device)

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        from sohes_hf.pseudo_labeling.cascadepsp import binarize, mask_to_input, normalize_image, refine_crops

        height, width = check_rgb_image(image)
        boxes = mask_boxes_xywh(masks) if len(masks) else np.zeros((0, 4))
        decoded = []
        for rle in masks:
            mask = decode_mask(rle)
            if mask.shape != (height, width):
                raise ValueError(f"masks: size {mask.shape} differs from the image's {(height, width)}")
            decoded.append(mask)
        windows = {  # empty masks have nothing to refine
            i: _crop_window(box, width, height, self.crop_margin, self.min_crop_side, self.square_crop_step)
            for i, box in enumerate(boxes)
            if box[2] > 0 and box[3] > 0
        }
        with torch.inference_mode():
            pixels = normalize_image(torch.from_numpy(image).to(self.device))
            crops = [pixels[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows.values()]
            inputs = [
                mask_to_input(torch.from_numpy(decoded[i][y0:y1, x0:x1]).to(self.device))
                for i, (x0, y0, x1, y1) in windows.items()
            ]
            probabilities = refine_crops(
                self.model,
                crops,
                inputs,
                self.max_side,
                self.fast,
                self.batch_size,
                autocast_dtype=REFINER_PRECISIONS[self.precision],
            )
            refined_crops = {
                i: binarize(p).cpu().numpy() for i, p in zip(windows, probabilities, strict=True)
            }
        refined = []
        for i, mask in enumerate(decoded):
            if i not in windows:
                refined.append(encode_mask(mask))
                continue
            x0, y0, x1, y1 = windows[i]
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = refined_crops[i]
            refined.append(encode_mask(full))
        return refined


def load_cascadepsp(weights_folder: str | Path | None, device: torch.device | str) -> torch.nn.Module:
    """CascadePSP's ``RefinementModule`` with the package's weights, in eval mode on ``device``.

    Args:
        weights_folder: folder holding ``model`` (state dict, ``module.``-prefixed keys); ``None``
            uses ``~/.segmentation-refinement`` and lets the package download and check the file.
        device: where the network runs.
    """
    try:
        import segmentation_refinement  # noqa: F401  (the package, not a stale cached submodule)
        from segmentation_refinement.models.psp.pspnet import RefinementModule
    except ImportError as error:
        raise ImportError(
            "the cascadepsp refiner needs the segmentation-refinement package: pip install 'sohes-hf[refine]'"
        ) from error
    if weights_folder is None:
        from segmentation_refinement.download import download_and_or_check_model_file

        folder = Path.home() / ".segmentation-refinement"
        folder.mkdir(parents=True, exist_ok=True)
        weights_file = folder / "model"
        download_and_or_check_model_file(str(weights_file))
    else:
        weights_file = Path(weights_folder) / "model"
        if not weights_file.is_file():
            raise FileNotFoundError(
                f"weights_folder: {weights_file} not found (expected CascadePSP's state dict "
                "saved as <folder>/model)"
            )
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = RefinementModule()
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return model.eval().to(device)


@dataclass(frozen=True)
class RefinementResult:
    """Outcome of refinement and IoU filtering.

    Attributes:
        masks: refined RLEs that passed the filter.
        kept_indices: (K,) int64 indices of the kept masks in the input list.
        ious: (N,) float64 IoU of every input mask with its refined version.
        seconds: wall time of the refiner (network) call.
    """

    masks: list[RLE]
    kept_indices: np.ndarray
    ious: np.ndarray
    seconds: float


def refine_and_filter(
    image: np.ndarray,
    masks: Sequence[Mapping[str, Any]],
    refiner: MaskRefiner,
    iou_threshold: float,
) -> RefinementResult:
    """Refines masks and keeps those whose before/after IoU is >= ``iou_threshold`` (section 3.1).

    Empty refined masks are always dropped.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: must be in [0, 1], got {iou_threshold}")
    start = time.perf_counter()
    refined = refiner.refine(image, masks) if len(masks) else []
    seconds = time.perf_counter() - start
    if len(refined) != len(masks):
        raise ValueError(f"refiner {refiner.name!r} returned {len(refined)} masks for {len(masks)}")
    ious = np.array([_paired_iou(a, b) for a, b in zip(masks, refined, strict=True)], dtype=np.float64)
    areas = np.array([int(mask_utils.area(_to_coco(r))) for r in refined], dtype=np.int64)
    kept = np.flatnonzero((ious >= iou_threshold) & (areas > 0)).astype(np.int64)
    logger.debug(
        "refinement (%s): kept %d of %d masks (IoU >= %.2f)",
        refiner.name,
        len(kept),
        len(masks),
        iou_threshold,
    )
    return RefinementResult(masks=[refined[i] for i in kept], kept_indices=kept, ious=ious, seconds=seconds)


def build_refiner(
    backend: str,
    weights_folder: str | Path | None = None,
    device: str = "cpu",
    max_side: int = 900,
    fast: bool = False,
    batch_size: int = 8,
    precision: str = "fp32",
) -> MaskRefiner:
    """Creates the refiner named by ``backend`` ("cascadepsp" or "none"); see :class:`CascadePSPRefiner`."""
    if backend == "none":
        return IdentityRefiner()
    if backend == "cascadepsp":
        return CascadePSPRefiner(
            weights_folder=weights_folder,
            device=device,
            max_side=max_side,
            fast=fast,
            batch_size=batch_size,
            precision=precision,
        )
    raise ValueError(f"backend: must be one of cascadepsp, none, got {backend!r}")


def _crop_window(
    box: np.ndarray, width: int, height: int, margin: float, min_side: int, square_side_step: int = 0
) -> tuple[int, int, int, int]:
    """The crop CascadePSP refines a mask in: x0, y0, x1, y1 (pixels, end exclusive).

    The mask's box XYWH grown by ``margin`` x its size per side (at least ``min_side``). With
    ``square_side_step`` > 0 the window is instead a square whose side, ``(1 + 2 margin)`` x the
    box's longer side, is rounded up to a multiple of ``square_side_step``, centred on the box
    and shifted inside the image (clipped only where the image is smaller): crops then share a
    few shapes, every square one goes through the global step at the same L x L size, and masks
    can be batched (tight boxes give ~80 global shapes for 100 masks).
    """
    x, y, w, h = (float(v) for v in box)
    if square_side_step <= 0:
        grow_x = max(margin * w, (min_side - w) / 2.0, 0.0)
        grow_y = max(margin * h, (min_side - h) / 2.0, 0.0)
        x0 = max(0, int(np.floor(x - grow_x)))
        y0 = max(0, int(np.floor(y - grow_y)))
        x1 = min(width, int(np.ceil(x + w + grow_x)))
        y1 = min(height, int(np.ceil(y + h + grow_y)))
        return x0, y0, x1, y1
    side = max((1.0 + 2.0 * margin) * max(w, h), float(min_side))
    side_pixels = int(np.ceil(side / square_side_step)) * square_side_step
    x0, x1 = _centred_span(x + w / 2.0, side_pixels, width)
    y0, y1 = _centred_span(y + h / 2.0, side_pixels, height)
    return x0, y0, x1, y1


def _centred_span(centre: float, length: int, limit: int) -> tuple[int, int]:
    """[start, end) of ``length`` pixels centred on ``centre``, shifted (then clipped) into [0, limit)."""
    length = min(length, limit)
    start = int(np.clip(np.floor(centre - length / 2.0), 0, limit - length))
    return start, start + length


def check_rgb_image(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of an (H, W, 3) uint8 RGB image; ValueError naming ``image`` otherwise."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array, got {getattr(image, 'shape', None)} "
            f"{getattr(image, 'dtype', None)}"
        )
    return int(image.shape[0]), int(image.shape[1])


def _to_coco(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _paired_iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    coco_a, coco_b = _to_coco(a), _to_coco(b)
    union_is_empty = mask_utils.area(coco_a) == 0 and mask_utils.area(coco_b) == 0
    if union_is_empty:
        return 0.0
    return float(mask_utils.iou([coco_a], [coco_b], [0])[0, 0])
