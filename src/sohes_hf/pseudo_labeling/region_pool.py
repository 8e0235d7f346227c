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
      column is a patch column with each patch row repeated, so a mask switches on or off only
      where its patch column changes region; these toggles are found for all regions at once
      on the grid, and all counts strings are compressed in one vectorised pass
      (:func:`encode_rle_counts`, byte-identical to pycocotools). No H x W mask is built.
    * **Exact duplicates** are frequent: a region that no merge touches between two thresholds
      is recorded again, identically, at the next one. They are found on the patch grid by
      hashing each region's sorted patch indices, before any RLE work. A region kept this way
      remembers the finest level it came from (the label map with the most regions; equal
      counts: the earlier map) and on how many levels it occurs (its persistence).
    * **Near duplicates** go through mask NMS with IoU threshold 0.9 by default, equal to the
      hierarchy's coverage threshold theta_cover (two exact implementations, see below). For
      nested masks ``a ⊂ b`` the IoU is ``|a| / |b|``, which is also the coverage of ``b`` in
      ``a``; the hierarchy test can only order ``a`` below ``b`` when that coverage is below
      theta_cover. So with both at 0.9 the nested pairs that survive NMS (IoU <= 0.9) are,
      except for IoU exactly 0.9, pairs the hierarchy can order, while the pairs it would
      leave as unrelated twins are merged here.
    * **Which duplicate survives**: the more persistent region (it appeared unchanged on more
      levels, a stability criterion in the spirit of MSER), then the one from the finer level,
      then the earlier in pool order. A region grown by a few patches at the next level usually
      lives for one level only, while the entity it slightly extends is stable.
    * Regions covering the whole image (typical at the lowest thresholds) stay in the pool: the
      pool is the paper's, and dropping them is a clean-up after refinement
      (:mod:`~sohes_hf.pseudo_labeling.mask_cleanup`, HASSOD's three-corner rule).

Two exact NMS paths (same kept set, same preference order; the tests compare them):
    * **Nested label maps** (what ``agglomerative_merge`` returns: merging only coarsens, so
      each map refines the next coarser one). Then any two pooled regions are disjoint or one
      contains the other, and for ``a ⊂ b`` the mask IoU is ``|a| / |b|``, exactly the
      float64 ratio of the two integer pixel counts that pycocotools computes. Every patch
      covers at least one pixel, so containment on the grid is containment in the image.
      :func:`regions_from_label_maps` detects nestedness on the grid (each region of a level
      lies in one region of the next coarser level; O(levels x patches)) and records for each
      region the smallest pooled region that strictly contains it
      (:attr:`RegionPool.containers`). NMS then only visits, for each region, its chain of
      containers while the IoU stays above the threshold (it decreases up the chain): O(regions
      x levels) pairs instead of all regions x regions RLE overlaps.
    * **Any other label maps** (the function accepts arbitrary ones): ``containers`` is None
      and NMS runs the generic pairwise mask IoU of :func:`sohes_hf.masks.mask_nms`.
"""

from __future__ import annotations

import itertools
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
        containers: (K,) int64 index of the smallest region of the pool that strictly contains
            each region, -1 for none, when all regions come from nested partitions (see the
            module docstring); None when they do not (NMS then uses pairwise mask IoU).
    """

    rles: list[dict[str, Any]]
    areas: np.ndarray
    level_indices: np.ndarray
    num_levels: np.ndarray
    image_size: tuple[int, int]
    containers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rles)

    def subset(self, indices: np.ndarray | Sequence[int]) -> RegionPool:
        """The pool restricted to ``indices`` (in that order).

        ``containers`` become the nearest container that is also in the subset (containment
        restricted to a subset is still a forest); repeated indices make it None.
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        containers = None
        if self.containers is not None and np.unique(index).size == index.size:
            position = np.full(len(self), -1, dtype=np.int64)
            position[index] = np.arange(index.size)
            current = self.containers[index]
            outside = np.flatnonzero((current >= 0) & (position[np.maximum(current, 0)] < 0))
            while outside.size:  # climb to the nearest container inside the subset
                current[outside] = self.containers[current[outside]]
                still = (current[outside] >= 0) & (position[np.maximum(current[outside], 0)] < 0)
                outside = outside[still]
            containers = np.where(current >= 0, position[np.maximum(current, 0)], -1)
        return RegionPool(
            rles=[self.rles[i] for i in index.tolist()],
            areas=self.areas[index],
            level_indices=self.level_indices[index],
            num_levels=self.num_levels[index],
            image_size=self.image_size,
            containers=containers,
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
    # region_of[k, p]: pool index of the region holding patch p on the k-th finest level.
    region_of = np.empty((len(maps), grid_height * grid_width), dtype=np.int64)
    for rank, level in enumerate(level_order):
        flat = maps[level].ravel()
        order = np.argsort(flat, kind="stable")
        boundaries = np.flatnonzero(np.diff(flat[order])) + 1
        groups = np.split(order, boundaries)
        groups.sort(key=lambda group: int(group[0]))  # first raster appearance
        for group in groups:
            key = group.tobytes()
            region = keys.get(key)
            if region is None:
                region = keys[key] = len(members)
                members.append(group)
                level_indices.append(level)
                num_levels.append(1)
            else:
                num_levels[region] += 1
            region_of[rank, group] = region

    first_rank = np.empty(len(members), dtype=np.int64)  # finest level holding each region
    for rank in range(len(maps) - 1, -1, -1):
        first_rank[region_of[rank]] = rank
    rows = (np.arange(height, dtype=np.int64) * grid_height) // height
    cols = (np.arange(width, dtype=np.int64) * grid_width) // width
    row_repeats = np.bincount(rows, minlength=grid_height)
    col_repeats = np.bincount(cols, minlength=grid_width)
    # Image pixels per patch; areas from them avoid decoding (or re-validating) every RLE.
    patch_pixels = np.outer(row_repeats, col_repeats).ravel().astype(np.float64)
    areas = np.zeros(len(members), dtype=np.int64)
    for rank in range(len(maps)):
        is_new = np.flatnonzero(first_rank == rank)
        per_region = np.bincount(region_of[rank], weights=patch_pixels, minlength=len(members))
        areas[is_new] = np.rint(per_region[is_new]).astype(np.int64)
    rles = _upsampled_rles(region_of, first_rank, (grid_height, grid_width), row_repeats, col_repeats)
    containers = _nested_containers(region_of, len(members))
    logger.debug(
        "pooled %d distinct regions from %d label maps (%s regions each, %s)",
        len(members),
        len(maps),
        num_regions_per_map,
        "nested" if containers is not None else "not nested",
    )
    return RegionPool(
        rles=rles,
        areas=areas,
        level_indices=np.asarray(level_indices, dtype=np.int64),
        num_levels=np.asarray(num_levels, dtype=np.int64),
        image_size=(height, width),
        containers=containers,
    )


def _nested_containers(region_of: np.ndarray, num_regions: int) -> np.ndarray | None:
    """Smallest strictly containing region of every region, or None if the levels are not nested.

    Args:
        region_of: (L, P) pool index of each patch's region, levels from finest to coarsest.
        num_regions: K, the pool size.

    Returns:
        (K,) int64 containers (-1 for none), or None when some region of a level is split
        between several regions of the next coarser level.

    The levels are nested exactly when each consecutive pair is (refinement is transitive).
    A region changes only at its coarsest occurrence, so each region gets at most one
    container, and the container is strictly larger (it holds the region and more patches).
    """
    containers = np.full(num_regions, -1, dtype=np.int64)
    for finer, coarser in itertools.pairwise(region_of):
        moved = np.flatnonzero(finer != coarser)
        child, parent = finer[moved], coarser[moved]
        containers[child] = parent
        if not np.array_equal(containers[child], parent):
            return None  # one region of ``finer`` meets two regions of ``coarser``
    return containers


def _upsampled_rles(
    region_of: np.ndarray,
    first_rank: np.ndarray,
    grid_shape: tuple[int, int],
    row_repeats: np.ndarray,
    col_repeats: np.ndarray,
) -> list[dict[str, Any]]:
    """COCO RLEs of all pooled regions upsampled by nearest neighbour, built from the grid.

    COCO RLE runs down the image columns (column-major pixel index ``x * H + y``). Image column
    ``x`` repeats grid column ``cols[x]``, and grid row ``r`` covers image rows
    ``[row_start[r], row_start[r + 1])``, so a region's mask switches on or off exactly at
    positions ``x * H + row_start[r]`` where its membership changes between grid rows ``r - 1``
    and ``r`` of column ``cols[x]`` (row -1 and row h count as outside). These toggles are
    found for all regions at once on the grid (each region on the finest level where it
    occurs), repeated for the image columns, and a toggle at the bottom of one column that
    meets a toggle at the top of the next (same position) cancels. The run lengths are the
    gaps between toggles, compressed by :func:`encode_rle_counts`. No H x W mask is built and
    no per-region Python work is done beyond slicing the final strings.

    Args:
        region_of: (L, h * w) pool index of each patch's region per level, finest first.
        first_rank: (K,) level (row of ``region_of``) where each region is taken from.
        grid_shape: (h, w).
        row_repeats, col_repeats: (h,), (w,) image rows / columns per grid row / column.
    """
    grid_height, grid_width = grid_shape
    height, width = int(row_repeats.sum()), int(col_repeats.sum())
    num_regions = first_rank.shape[0]
    row_start = np.concatenate(([0], np.cumsum(row_repeats)))  # (h + 1,), row_start[h] = H
    col_first = np.concatenate(([0], np.cumsum(col_repeats)[:-1]))
    keys: list[np.ndarray] = []
    stride = grid_width * (grid_height + 1)  # key = region * stride + column * (h + 1) + row
    for rank in range(region_of.shape[0]):
        padded = np.full((grid_height + 2, grid_width), -1, dtype=np.int64)
        padded[1:-1] = region_of[rank].reshape(grid_height, grid_width)
        boundary_rows, boundary_cols = np.nonzero(padded[1:] != padded[:-1])  # between r-1 and r
        for side in (padded[boundary_rows, boundary_cols], padded[boundary_rows + 1, boundary_cols]):
            valid = side >= 0
            valid[valid] = first_rank[side[valid]] == rank
            keys.append(
                side[valid] * stride + boundary_cols[valid] * (grid_height + 1) + boundary_rows[valid]
            )
    key = np.sort(np.concatenate(keys))
    region, rest = np.divmod(key, stride)
    column, row = np.divmod(rest, grid_height + 1)
    # Expand every (region, grid column) group of toggles over the group's image columns,
    # image column major: toggle i of the group at repeat j lands at index j * n + i.
    group_starts = np.flatnonzero(np.concatenate(([True], np.diff(key // (grid_height + 1)) != 0)))
    group_sizes = np.diff(np.append(group_starts, key.size))
    group_repeats = col_repeats[column[group_starts]]
    out_sizes = group_sizes * group_repeats
    out_offsets = np.concatenate(([0], np.cumsum(out_sizes)[:-1]))
    group_of = np.repeat(np.arange(group_starts.size), out_sizes)
    local = np.arange(int(out_sizes.sum())) - out_offsets[group_of]
    repeat_index, toggle_index = np.divmod(local, group_sizes[group_of])
    event = group_starts[group_of] + toggle_index
    positions = (col_first[column[event]] + repeat_index) * height + row_start[row[event]]
    owner = region[event]
    # Cancel equal toggles of one region (bottom of column x meets top of column x + 1).
    same = (positions[1:] == positions[:-1]) & (owner[1:] == owner[:-1])
    if same.any():
        drop = np.zeros(positions.size, dtype=bool)
        drop[1:] |= same
        drop[:-1] |= same
        positions, owner = positions[~drop], owner[~drop]
    # Runs: gaps between toggles, the first from pixel 0 (zeros, maybe an empty run) and a
    # final run of zeros to H * W unless the mask reaches the last pixel.
    first_of = np.searchsorted(owner, np.arange(num_regions))
    last_of = np.append(first_of[1:], owner.size) - 1
    gaps = np.diff(positions, prepend=0)
    gaps[first_of] = positions[first_of]
    tails = height * width - positions[last_of]
    counts = np.insert(gaps, last_of + 1, tails)
    lengths = last_of - first_of + 2
    keep = np.ones(counts.size, dtype=bool)
    tail_index = np.cumsum(lengths) - 1
    keep[tail_index[tails == 0]] = False
    lengths = lengths - (tails == 0)
    strings = mask_ops.encode_rle_counts(counts[keep], lengths)
    return [{"size": [height, width], "counts": string} for string in strings]


def deduplicate_regions(pool: RegionPool, iou_threshold: float = DEFAULT_POOL_IOU_THRESHOLD) -> RegionPool:
    """Removes near-duplicate regions with mask NMS (a region is dropped when its IoU with a
    better kept region exceeds ``iou_threshold``).

    "Better" is: more levels (persistence), then a finer level (the pool's order), then the
    earlier pool index; see the module docstring for why. Pools of nested partitions
    (``pool.containers`` set) take the exact containment-chain path, others pairwise mask IoU;
    both keep the same regions (module docstring).

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
    if pool.containers is not None:
        kept = _nested_nms(pool.areas, pool.containers, preference, float(iou_threshold))
    else:
        scores = np.empty(len(pool), dtype=np.float64)
        scores[preference] = -np.arange(len(pool), dtype=np.float64)
        kept = mask_ops.mask_nms(pool.rles, scores, float(iou_threshold))
    logger.debug(
        "NMS at IoU %.2f kept %d of %d regions (%s)",
        iou_threshold,
        kept.size,
        len(pool),
        "containment chains" if pool.containers is not None else "pairwise mask IoU",
    )
    return pool.subset(np.sort(kept))


def _nested_nms(
    areas: np.ndarray, containers: np.ndarray, preference: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy NMS of nested regions, identical to :func:`sohes_hf.masks.mask_nms`.

    Two regions overlap only when one contains the other, and then their IoU is
    ``area(inner) / area(outer)`` (float64, as pycocotools divides its integer counts). Up a
    region's chain of containers the areas grow strictly, so the IoU only decreases and the
    walk stops at the first container with IoU <= ``iou_threshold``. The pairs found (each at
    most once, from its inner region) are the only ones that can suppress; the greedy pass over
    ``preference`` then matches mask NMS visiting the same order.

    Args:
        areas: (K,) int64 pixel areas, all positive.
        containers: (K,) int64 smallest strictly containing region, -1 for none.
        preference: (K,) permutation, best region first.
        iou_threshold: suppression when IoU > this.

    Returns:
        (M,) int64 kept indices, best first.
    """
    num_regions = areas.shape[0]
    inner_parts: list[np.ndarray] = []
    outer_parts: list[np.ndarray] = []
    inner = np.arange(num_regions, dtype=np.int64)
    outer = containers.copy()
    area_values = areas.astype(np.float64)
    while True:
        alive = outer >= 0
        inner, outer = inner[alive], outer[alive]
        above = area_values[inner] / area_values[outer] > iou_threshold
        inner, outer = inner[above], outer[above]
        if inner.size == 0:
            break
        inner_parts.append(inner)
        outer_parts.append(outer)
        outer = containers[outer]
    if not inner_parts:
        return np.asarray(preference, dtype=np.int64).copy()
    first = np.concatenate(inner_parts + outer_parts)
    second = np.concatenate(outer_parts + inner_parts)
    order = np.argsort(first, kind="stable")
    neighbours = second[order].tolist()
    ends = np.searchsorted(first[order], np.arange(num_regions + 1), side="left").tolist()
    suppressed = np.zeros(num_regions, dtype=bool)
    kept: list[int] = []
    for region in np.asarray(preference, dtype=np.int64).tolist():
        if suppressed[region]:
            continue
        kept.append(region)
        for other in neighbours[ends[region] : ends[region + 1]]:
            suppressed[other] = True
    return np.asarray(kept, dtype=np.int64)


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
