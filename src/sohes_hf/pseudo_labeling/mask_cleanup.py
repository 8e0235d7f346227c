"""Clean-up of refined pseudo-label masks before the hierarchy (HASSOD's steps, section 3.1).

SOHES's self-exploration extends HASSOD (Cao et al., NeurIPS 2023; same first author), whose
pseudo-labeling script (``hac/hac.py``, main loop, after the CRF refinement and the resize to the
original image size) cleans every mask before its hierarchy is analysed (``hac/post_process.py``).
The paper does not list these steps; this module applies them between refinement (step 3) and
the hierarchy (step 4), in HASSOD's order, at the original resolution:

1. **Too small**: masks of fewer than ``min_area`` pixels (HASSOD: 100) are dropped. Below a
   10 x 10 entity the clustering of 8 x 8 patches says little about where a mask ends, and
   Mask2Former predicts masks at 1/4 resolution, where such a mask is a few cells.
2. **Three corners**: masks containing more than ``max_corners`` of the four image-corner pixels
   (HASSOD: masks with 3 or 4 are dropped) are dropped. The merge at the lowest threshold
   typically unites the whole frame into one region, and the regions just below it are the
   background of the scene; kept, they become the single root of every hierarchy, so every real
   entity would be reported as a part (paper: roots are "whole entities"). With them gone, their
   children are the roots.
3. **Holes** (off by default, ``use_hole_filling``): every hole of a mask (a background
   component that is not 4-connected to the image border, as ``scipy.ndimage.binary_fill_holes``
   with its default structure) is filled. Clustering can leave islands of a few patches inside
   an entity, but the holes of a background region (sky, floor, wall) are the entities in front
   of it: filled, the region covers them and becomes their ancestor, so those whole entities are
   reported as its parts, against the paper's "roots are whole entities". SOHES refines with
   CascadePSP, which redraws a mask's boundaries, its holes' included, from the image.

The area test comes before the filling (a small ring is dropped even if its filled disk would
not be), as in HASSOD. Filling can make two masks equal (a ring and its disk); they are both kept,
as in HASSOD, and the hierarchy treats them as siblings.

Corners are read from the decoded mask only when its box (from the RLE, without decoding) reaches
more than ``max_corners`` image corners, which few masks do; hole filling decodes every mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import decode_mask, encode_mask, mask_areas, mask_boxes_xywh

logger = get_logger(__name__)

#: HASSOD's thresholds (``hac/hac.py``): masks under 100 px, and with 3 or 4 corners, are dropped.
DEFAULT_MIN_MASK_AREA = 100
DEFAULT_MAX_MASK_CORNERS = 2


@dataclass(frozen=True)
class CleanupResult:
    """Masks kept by :func:`clean_masks`.

    Attributes:
        masks: the kept masks in input order, as given, or re-encoded (``str`` counts) where a
            hole was filled.
        kept_indices: (M,) int64 index of each kept mask in the input.
        num_too_small: masks dropped for their area.
        num_corner: masks dropped for the corners they contain.
        num_filled: kept masks that had at least one hole.
    """

    masks: list[dict[str, Any]]
    kept_indices: np.ndarray
    num_too_small: int
    num_corner: int
    num_filled: int


def count_corners(mask: np.ndarray) -> int:
    """How many of the four corner pixels of a bool (H, W) mask are set (0 to 4)."""
    height, width = mask.shape
    return (
        int(mask[0, 0])
        + int(mask[0, width - 1])
        + int(mask[height - 1, 0])
        + int(mask[height - 1, width - 1])
    )


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The bool (H, W) mask with its holes filled (4-connected background, see the module doc).

    Returns:
        A new bool array; equal to ``mask`` when it has no hole.
    """
    filled = np.array(mask, dtype=bool)
    holes = _box_holes(filled)
    if holes is not None:
        y0, x0, inside = holes
        filled[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] |= inside
    return filled


def _box_holes(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """Holes of a bool (H, W) mask within its box: (y0, x0, bool crop), or None without holes.

    Only the mask's box is scanned: a background pixel outside it, or on the box's edge next to
    the outside, reaches the image border, so a 1-pixel background frame around the box stands
    for the rest of the image. The frame is flood-filled (OpenCV, 4-connectivity) and the
    background the flood does not reach is the holes.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    framed = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=np.uint8)
    framed[1:-1, 1:-1] = mask[y0:y1, x0:x1]
    flood = np.zeros((framed.shape[0] + 2, framed.shape[1] + 2), dtype=np.uint8)  # OpenCV's border
    cv2.floodFill(framed, flood, (0, 0), 2, flags=4)
    inside = framed[1:-1, 1:-1] == 0
    return (y0, x0, inside) if inside.any() else None


def clean_masks(
    masks: Sequence[Mapping[str, Any]],
    min_area: int = DEFAULT_MIN_MASK_AREA,
    max_corners: int = DEFAULT_MAX_MASK_CORNERS,
    use_hole_filling: bool = False,
) -> CleanupResult:
    """HASSOD's mask clean-up (module docstring): area, corners, then holes.

    Args:
        masks: N COCO RLEs of one image at its original resolution.
        min_area: masks with fewer pixels are dropped (0 keeps all).
        max_corners: masks containing more of the four image-corner pixels are dropped (4 keeps
            all).
        use_hole_filling: fill the holes of the kept masks.

    Returns:
        The kept masks in input order; a mask without holes is passed through unchanged.
    """
    if len(masks) == 0:
        return CleanupResult([], np.zeros(0, dtype=np.int64), 0, 0, 0)
    areas = mask_areas(masks)
    height, width = (int(side) for side in masks[0]["size"])
    boxes = mask_boxes_xywh(masks)
    left, top = boxes[:, 0] == 0, boxes[:, 1] == 0
    right, bottom = boxes[:, 0] + boxes[:, 2] == width, boxes[:, 1] + boxes[:, 3] == height
    reachable = (left & top).astype(int) + (right & top) + (left & bottom) + (right & bottom)
    kept: list[int] = []
    cleaned: list[dict[str, Any]] = []
    num_corner = num_filled = 0
    for index in np.flatnonzero(areas >= min_area).tolist():
        rle = dict(masks[index])
        check_corners = reachable[index] > max_corners
        if check_corners or use_hole_filling:
            pixels = decode_mask(rle)
            if check_corners and count_corners(pixels) > max_corners:
                num_corner += 1
                continue
            holes = _box_holes(pixels) if use_hole_filling else None
            if holes is not None:
                y0, x0, inside = holes
                pixels[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] |= inside
                rle = encode_mask(pixels)
                num_filled += 1
        kept.append(index)
        cleaned.append(rle)
    result = CleanupResult(
        masks=cleaned,
        kept_indices=np.asarray(kept, dtype=np.int64),
        num_too_small=int((areas < min_area).sum()),
        num_corner=num_corner,
        num_filled=num_filled,
    )
    logger.debug(
        "clean-up kept %d of %d masks (%d under %d px, %d with more than %d corners; %d filled)",
        len(cleaned),
        len(masks),
        result.num_too_small,
        min_area,
        num_corner,
        max_corners,
        num_filled,
    )
    return result
