"""Step 3 of self-exploration: mask refinement and removal of poorly-agreeing masks (section 3.1).

SOHES refines every pseudo-label with the off-the-shelf CascadePSP model, computes the IoU of each
mask before and after refinement, and removes the masks with a poor IoU "because they are likely
noisy samples". A mask the refiner moves a lot is one whose boundary the clustering and the
refiner disagree on; the default cut (``refinement_iou_threshold`` = 0.5) drops a mask when less
than half of the union of the two versions is shared.

Backends: ``none`` (identity, for ablations and machines without the weights) and ``cascadepsp``
(pip ``segmentation-refinement``, the ``refine`` extra of sohes-hf). CascadePSP is applied to a
crop around each mask (the mask's box grown by ``crop_margin`` of its size on each side), so a
small entity is refined at a useful scale and large images do not cost full-image passes per mask.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import decode_mask, encode_mask, mask_boxes_xywh

logger = get_logger(__name__)

RLE = dict[str, Any]
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
    """CascadePSP (Cheng et al., CVPR 2020) through the official ``segmentation-refinement`` package.

    Args:
        weights_folder: folder holding the checkpoint as ``<folder>/model`` (a state dict whose
            keys carry the ``module.`` prefix, as the package ships it); loaded offline. ``None``
            uses the package's folder (``~/.segmentation-refinement``) and lets it download.
        device: "cpu" or "cuda[:i]".
        max_side: CascadePSP's ``L``: the side of its global step (package default 900).
        fast: global step only.
        crop_margin: context around each mask's box, as a fraction of the box side, on each side.
        min_crop_side: smallest crop side in pixels.
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
    ) -> None:
        try:
            import segmentation_refinement
        except ImportError as error:
            raise ImportError(
                "the cascadepsp refiner needs the segmentation-refinement package: "
                "pip install 'sohes-hf[refine]'"
            ) from error
        if max_side < (8 if fast else _MIN_LOCAL_STEP_SIDE):
            # The package's local step walks windows of stride L // 2 - 32, which must be positive.
            minimum = 8 if fast else _MIN_LOCAL_STEP_SIDE
            raise ValueError(f"max_side: must be >= {minimum} (fast={fast}), got {max_side}")
        if crop_margin < 0:
            raise ValueError(f"crop_margin: must be >= 0, got {crop_margin}")
        if weights_folder is not None:
            weights_file = Path(weights_folder) / "model"
            if not weights_file.is_file():
                raise FileNotFoundError(
                    f"weights_folder: {weights_file} not found (expected CascadePSP's state dict "
                    "saved as <folder>/model)"
                )
        self.max_side = int(max_side)
        self.fast = bool(fast)
        self.crop_margin = float(crop_margin)
        self.min_crop_side = int(min_crop_side)
        self._refiner = segmentation_refinement.Refiner(
            device=str(device),
            model_folder=None if weights_folder is None else str(weights_folder),
            download_and_check_model=weights_folder is None,
        )

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[RLE]:
        height, width = check_rgb_image(image)
        boxes = mask_boxes_xywh(masks) if len(masks) else np.zeros((0, 4))
        refined = []
        for rle, box in zip(masks, boxes, strict=True):
            mask = decode_mask(rle)
            if mask.shape != (height, width):
                raise ValueError(f"masks: size {mask.shape} differs from the image's {(height, width)}")
            if box[2] <= 0 or box[3] <= 0:  # empty mask: nothing to refine
                refined.append(encode_mask(mask))
                continue
            x0, y0, x1, y1 = _crop_window(box, width, height, self.crop_margin, self.min_crop_side)
            crop_mask = mask[y0:y1, x0:x1].astype(np.uint8) * 255
            output = self._refiner.refine(image[y0:y1, x0:x1], crop_mask, fast=self.fast, L=self.max_side)
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = output > 127  # the package returns 0..255; >127 as it binarises inputs
            refined.append(encode_mask(full))
        return refined


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
) -> MaskRefiner:
    """Creates the refiner named by ``backend`` ("cascadepsp" or "none")."""
    if backend == "none":
        return IdentityRefiner()
    if backend == "cascadepsp":
        return CascadePSPRefiner(weights_folder=weights_folder, device=device, max_side=max_side, fast=fast)
    raise ValueError(f"backend: must be one of cascadepsp, none, got {backend!r}")


def _crop_window(
    box: np.ndarray, width: int, height: int, margin: float, min_side: int
) -> tuple[int, int, int, int]:
    """Box XYWH grown by ``margin`` x its size per side (at least ``min_side``), clipped: x0,y0,x1,y1."""
    x, y, w, h = (float(v) for v in box)
    grow_x = max(margin * w, (min_side - w) / 2.0, 0.0)
    grow_y = max(margin * h, (min_side - h) / 2.0, 0.0)
    x0 = max(0, int(np.floor(x - grow_x)))
    y0 = max(0, int(np.floor(y - grow_y)))
    x1 = min(width, int(np.ceil(x + w + grow_x)))
    y1 = min(height, int(np.ceil(y + h + grow_y)))
    return x0, y0, x1, y1


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
