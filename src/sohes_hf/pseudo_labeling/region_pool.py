"""Candidate region pool from multi-threshold merging (paper section 3.1, step 1, last paragraph).

The merging of :func:`sohes_hf.pseudo_labeling.merge.agglomerative_merge` records one partition
of the patch grid per threshold. SOHES mixes the regions of all partitions into one pool, which
overlaps itself (a coarse region contains finer ones), and removes duplicates with NMS.

Choices made here (the paper does not fix them):
    * **Upsampling** is nearest-neighbour: image pixel (y, x) takes the label of patch
      (floor(y h / H), floor(x w / W)) for a (h, w) grid and an (H, W) image, which is exactly
      "each patch is an 8x8 block" when H = 8h and W = 8w (the paper's S x S image with S/8
      patches), and torch's ``nearest`` mode otherwise.
    * **RLE straight from the grid**: COCO RLE runs down image columns, and an upsampled
      column is a patch column with each patch row repeated, so run lengths are computed on
      the (columns x patch rows) sequence of the region's bounding box; no H x W mask is built.
    * **Exact duplicates** are frequent: a region that no merge touches between two thresholds
      is recorded again, identically, at the next one. They are found on the patch grid by
      hashing each region's sorted patch indices, before any RLE work. A region kept this way
      remembers the finest level it came from (the label map with the most regions; equal
      counts: the earlier map) and on how many levels it occurs (its persistence).
    * **Near duplicates** go through mask NMS with IoU threshold 0.9 by default, equal to the
      hierarchy's coverage threshold theta_cover. For nested masks ``a ⊂ b`` the IoU is
      ``|a| / |b|``, which is also the coverage of ``b`` in ``a``; the hierarchy test can only
      order ``a`` below ``b`` when that coverage is below theta_cover. So with both at 0.9 the
      nested pairs that survive NMS (IoU <= 0.9) are, except for IoU exactly 0.9, pairs the
      hierarchy can order, while the pairs it would leave as unrelated twins are merged here.
    * **Which duplicate survives**: the more persistent region (it appeared unchanged on more
      levels, a stability criterion in the spirit of MSER), then the one from the finer level,
      then the earlier in pool order. A region grown by a few patches at the next level usually
      lives for one level only, while the entity it slightly extends is stable.
    * Regions covering the whole image (typical at the lowest thresholds) are legitimate "whole
      scene" entities and are kept; filtering them, if wanted, is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sohes_hf import masks as mask_ops
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

#: Default NMS IoU threshold; equals theta_cover (see the module docstring).
DEFAULT_POOL_IOU_THRESHOLD = 0.9


@dataclass(frozen=True)
class RegionPool:
    """Candidate regions of one image.

    Attributes:
        rles: COCO RLE dicts (``str`` counts) at image resolution, one per region.
        areas: (K,) int64 pixel areas at image resolution.
        level_indices: (K,) int64 index of the label map (i.e. of the merging threshold, in the
            order the maps were given) of the finest level where the region occurs.
        num_levels: (K,) int64 number of label maps where the region occurs unchanged.
        image_size: (height, width) of the masks in pixels.
    """

    rles: list[dict[str, Any]]
    areas: np.ndarray
    level_indices: np.ndarray
    num_levels: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rles)

    def subset(self, indices: np.ndarray | Sequence[int]) -> RegionPool:
        """The pool restricted to ``indices`` (in that order)."""
        index = np.asarray(indices, dtype=np.int64)
        return RegionPool(
            rles=[self.rles[i] for i in index.tolist()],
            areas=self.areas[index],
            level_indices=self.level_indices[index],
            num_levels=self.num_levels[index],
            image_size=self.image_size,
        )


def regions_from_label_maps(label_maps: Sequence[np.ndarray], image_size: Sequence[int]) -> RegionPool:
    """Pools the regions of all label maps, without exact duplicates, as image-size RLE masks.

    Args:
        label_maps: int label maps (h, w) of one patch grid, e.g. from ``agglomerative_merge``;
            any non-negative labels (they need not be consecutive).
        image_size: (height, width) of the image the grid covers, in pixels.

    Returns:
        A :class:`RegionPool` ordered by finest level (most regions first), then by the first
        raster appearance of the region in that level's map.

    Raises:
        ValueError: ``label_maps`` is empty, not 2-D integer maps of one shape, or has negative
            labels; ``image_size`` is not two positive integers or is smaller than the grid.
    """
    maps = _validate_label_maps(label_maps)
    height, width = _validate_image_size(image_size)
    grid_height, grid_width = maps[0].shape
    if height < grid_height or width < grid_width:
        raise ValueError(
            f"image_size: ({height}, {width}) is smaller than the label grid ({grid_height}, {grid_width})"
        )
    num_regions_per_map = [int(np.unique(m).size) for m in maps]
    # Finest level first: most regions, then given order.
    level_order = sorted(range(len(maps)), key=lambda index: (-num_regions_per_map[index], index))

    keys: dict[bytes, int] = {}
    members: list[np.ndarray] = []
    level_indices: list[int] = []
    num_levels: list[int] = []
    for level in level_order:
        flat = maps[level].ravel()
        order = np.argsort(flat, kind="stable")
        boundaries = np.flatnonzero(np.diff(flat[order])) + 1
        groups = np.split(order, boundaries)
        groups.sort(key=lambda group: int(group[0]))  # first raster appearance
        for group in groups:
            key = group.tobytes()
            region = keys.get(key)
            if region is None:
                keys[key] = len(members)
                members.append(group)
                level_indices.append(level)
                num_levels.append(1)
            else:
                num_levels[region] += 1

    rows = (np.arange(height, dtype=np.int64) * grid_height) // height
    cols = (np.arange(width, dtype=np.int64) * grid_width) // width
    row_repeats = np.bincount(rows, minlength=grid_height)
    col_repeats = np.bincount(cols, minlength=grid_width)
    # Image pixels per patch; areas from them avoid decoding (or re-validating) every RLE.
    patch_pixels = np.outer(row_repeats, col_repeats).ravel()
    areas = np.asarray([int(patch_pixels[group].sum()) for group in members], dtype=np.int64)
    rles = [
        _upsampled_rle(group, grid_height, grid_width, row_repeats, cols, height, width) for group in members
    ]
    logger.debug(
        "pooled %d distinct regions from %d label maps (%s regions each)",
        len(members),
        len(maps),
        num_regions_per_map,
    )
    return RegionPool(
        rles=rles,
        areas=areas,
        level_indices=np.asarray(level_indices, dtype=np.int64),
        num_levels=np.asarray(num_levels, dtype=np.int64),
        image_size=(height, width),
    )


def _upsampled_rle(
    patches: np.ndarray,
    grid_height: int,
    grid_width: int,
    row_repeats: np.ndarray,
    cols: np.ndarray,
    height: int,
    width: int,
) -> dict[str, Any]:
    """COCO RLE of a region upsampled by nearest neighbour, built from the patch grid.

    COCO RLE runs down the image columns. Image column ``x`` repeats patch column ``cols[x]``
    with patch row ``r`` repeated ``row_repeats[r]`` times, so the run lengths come from the
    (columns x patch rows) sequence weighted by ``row_repeats``: O(w_box * h) work per region
    instead of decoding an H x W mask, and only over the columns of its bounding box.
    """
    flat = np.zeros(grid_height * grid_width, dtype=bool)
    flat[patches] = True
    grid = flat.reshape(grid_height, grid_width)
    occupied = np.flatnonzero(grid.any(axis=0))
    first_col = int(np.searchsorted(cols, occupied[0], side="left"))
    end_col = int(np.searchsorted(cols, occupied[-1], side="right"))
    sequence = grid[:, cols[first_col:end_col]].T.ravel()  # column-major over the box columns
    weights = np.tile(row_repeats, end_col - first_col)
    starts = np.concatenate([[0], np.flatnonzero(sequence[1:] != sequence[:-1]) + 1])
    offsets = np.concatenate([[0], np.cumsum(weights)])
    lengths = np.diff(np.append(offsets[starts], offsets[-1]))
    leading, trailing = first_col * height, (width - end_col) * height
    counts = lengths.tolist()
    if sequence[0]:
        counts.insert(0, leading)
    else:
        counts[0] += leading
    if not sequence[-1]:
        counts[-1] += trailing
    elif trailing:
        counts.append(trailing)
    return mask_ops.normalize_rle({"size": [height, width], "counts": counts})


def deduplicate_regions(pool: RegionPool, iou_threshold: float = DEFAULT_POOL_IOU_THRESHOLD) -> RegionPool:
    """Removes near-duplicate regions with mask NMS (a region is dropped when its IoU with a
    better kept region exceeds ``iou_threshold``).

    "Better" is: more levels (persistence), then a finer level (the pool's order), then the
    earlier pool index; see the module docstring for why.

    Returns:
        The surviving regions, in their pool order.

    Raises:
        ValueError: ``iou_threshold`` is not a number in [0, 1].
    """
    if isinstance(iou_threshold, (bool, np.bool_)) or not isinstance(iou_threshold, (int, float, np.number)):
        raise ValueError(f"iou_threshold: expected a number in [0, 1], got {iou_threshold!r}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold: expected a number in [0, 1], got {iou_threshold}")
    if len(pool) == 0:
        return pool
    # Rank = position in the preference order; scores decrease with rank, so NMS's own tie
    # rule never decides.
    preference = np.lexsort((np.arange(len(pool)), -pool.num_levels))
    scores = np.empty(len(pool), dtype=np.float64)
    scores[preference] = -np.arange(len(pool), dtype=np.float64)
    kept = mask_ops.mask_nms(pool.rles, scores, float(iou_threshold))
    logger.debug("NMS at IoU %.2f kept %d of %d regions", iou_threshold, kept.size, len(pool))
    return pool.subset(np.sort(kept))


def build_region_pool(
    label_maps: Sequence[np.ndarray],
    image_size: Sequence[int],
    iou_threshold: float = DEFAULT_POOL_IOU_THRESHOLD,
) -> RegionPool:
    """:func:`regions_from_label_maps` followed by :func:`deduplicate_regions`."""
    return deduplicate_regions(regions_from_label_maps(label_maps, image_size), iou_threshold)


def _validate_label_maps(label_maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(label_maps, np.ndarray) and label_maps.ndim == 2:
        raise ValueError("label_maps: expected a sequence of (h, w) maps, got one 2-D array")
    if not isinstance(label_maps, (Sequence, np.ndarray)) or len(label_maps) == 0:
        raise ValueError("label_maps: expected a non-empty sequence of (h, w) integer label maps")
    maps = [np.asarray(m) for m in label_maps]
    shape = maps[0].shape
    for index, label_map in enumerate(maps):
        if label_map.ndim != 2 or label_map.size == 0:
            raise ValueError(
                f"label_maps[{index}]: expected a non-empty 2-D map, got shape {label_map.shape}"
            )
        if label_map.shape != shape:
            raise ValueError(f"label_maps[{index}]: shape {label_map.shape} differs from {shape}")
        if label_map.dtype.kind not in "iu":
            raise ValueError(f"label_maps[{index}]: expected integer labels, got dtype {label_map.dtype}")
        if label_map.min() < 0:
            raise ValueError(f"label_maps[{index}]: labels must be non-negative")
    return maps


def _validate_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if (
        isinstance(image_size, (str, bytes))
        or not isinstance(image_size, (Sequence, np.ndarray))
        or len(image_size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size: expected (height, width) positive integers, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])
