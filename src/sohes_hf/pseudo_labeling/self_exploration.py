"""Phase 1 of SOHES, self-exploration: initial hierarchical pseudo-labels of one image (section 3.1).

:func:`explore_image` follows the paper's four steps (figure 3):

1. *Global clustering*: resize the image to S x S, extract DINO patch features, merge adjacent
   patches bottom-up and record a partition at every merging threshold; mix the partitions into
   one pool and remove duplicates with NMS.
2. *Local re-clustering*: replace each region smaller than theta_small of the image by the
   complete subregions found when re-clustering a zoomed-in crop around it.
3. *Refinement*: refine every mask (CascadePSP) at the original resolution and drop the masks
   whose IoU before/after refinement is poor. Then HASSOD's clean-up, which the paper does not
   list (:mod:`~sohes_hf.pseudo_labeling.mask_cleanup`): drop masks under ``min_mask_area``
   pixels and masks containing 3 or 4 image corners (the whole-frame and background regions of
   the lowest thresholds, which would otherwise be the one root of every hierarchy) and, if
   asked, fill holes.
4. *Hierarchy*: mask A is an ancestor of mask B when at least theta_cover of B lies inside A; each
   mask's parent is its smallest ancestor. Masks are ordered so parents precede children.

Steps 1-2 work at S x S; the masks are resized to the original image size (nearest neighbour)
before refinement, so the output is at the original resolution.

Scores: pseudo-labels are training targets, not predictions, so every mask gets score 1.0 (COCO
tools that expect a ``score`` treat them as equally confident).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import decode_mask, encode_rle_counts, mask_areas, mask_boxes_xywh, mask_nms
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.hierarchy import build_hierarchy, hierarchy_depths, order_parents_first
from sohes_hf.pseudo_labeling.local_reclustering import FeatureExtractor, local_recluster
from sohes_hf.pseudo_labeling.mask_cleanup import clean_masks
from sohes_hf.pseudo_labeling.merge import agglomerative_merge
from sohes_hf.pseudo_labeling.refinement import MaskRefiner, check_rgb_image, refine_and_filter
from sohes_hf.pseudo_labeling.region_pool import (
    deduplicate_regions,
    regions_from_label_maps,
)

logger = get_logger(__name__)

PSEUDO_LABEL_SCORE = 1.0


@dataclass(frozen=True)
class ExplorationTimings:
    """Wall time (seconds) of each step of :func:`explore_image`.

    ``global_features`` and ``local_features`` are backbone time, ``refinement`` the refiner's;
    :attr:`non_network` is everything else (clustering, NMS, masks, clean-up, hierarchy).
    """

    global_features: float
    global_clustering: float
    local_reclustering: float
    local_features: float
    resize: float
    refinement: float
    cleanup: float
    hierarchy: float
    total: float

    @property
    def network(self) -> float:
        """Seconds spent in neural networks (backbone on image and crops, refiner)."""
        return self.global_features + self.local_features + self.refinement

    @property
    def non_network(self) -> float:
        """Seconds spent outside neural networks."""
        return self.total - self.network


@dataclass(frozen=True)
class ExplorationCounts:
    """Number of masks after each step (compare with paper table 2).

    Attributes:
        global_regions: distinct regions of all merging thresholds (exact repeats of a region at
            several thresholds counted once), before NMS.
        after_nms: regions of the mixed pool after duplicate removal (table 2 "Mix w/ NMS").
        small_regions: regions below theta_small that were re-clustered.
        local_subregions: complete subregions found in the crops.
        after_local: masks after step 2 (table 2 "w/ local re-clustering").
        after_refinement: masks after refinement and IoU filtering (table 2 "CascadePSP").
        after_cleanup: masks after HASSOD's clean-up (area, corners; the final masks).
    """

    global_regions: int
    after_nms: int
    small_regions: int
    local_subregions: int
    after_local: int
    after_refinement: int
    after_cleanup: int


@dataclass(frozen=True)
class ImagePseudoLabels:
    """Hierarchical pseudo-labels of one image, parents before children.

    Attributes:
        height, width: original image size in pixels.
        masks: N COCO RLEs (str counts) of size (height, width).
        areas: (N,) int64 pixel areas.
        boxes: (N, 4) float64 XYWH boxes in pixels.
        parents: (N,) int64 index of each mask's parent in ``masks``, -1 for roots; always
            smaller than the mask's own index.
        depths: (N,) int64 depth in the hierarchy forest, 0 for roots (whole entities).
        scores: (N,) float64, all 1.0 (see module docstring).
        counts: masks after each step.
        timings: seconds per step.
    """

    height: int
    width: int
    masks: list[dict[str, Any]]
    areas: np.ndarray
    boxes: np.ndarray
    parents: np.ndarray
    depths: np.ndarray
    scores: np.ndarray
    counts: ExplorationCounts
    timings: ExplorationTimings

    def __len__(self) -> int:
        return len(self.masks)


def explore_image(
    image: np.ndarray,
    extractor: FeatureExtractor,
    refiner: MaskRefiner,
    config: SelfExplorationConfig,
    global_features: np.ndarray | None = None,
) -> ImagePseudoLabels:
    """Runs self-exploration (section 3.1) on one image.

    Args:
        image: RGB (H, W, 3) uint8 at its original resolution.
        extractor: backbone giving patch features (DINO ViT-B/8 in the paper).
        refiner: mask refiner (CascadePSP in the paper, or the identity).
        config: thresholds and sizes.
        global_features: optional precomputed (S/p, S/p, C) features of ``image`` resized to S x S
            (lets a job batch the backbone over several images).

    Returns:
        The pseudo-labels at the original resolution, parents first.
    """
    total_start = time.perf_counter()
    height, width = check_rgb_image(image)
    size = config.image_size
    if size % extractor.patch_size != 0:
        raise ValueError(
            f"image_size: must be a multiple of the patch size {extractor.patch_size}, got {size}"
        )

    # Step 1: global clustering, mixing of the thresholds' partitions, NMS.
    start = time.perf_counter()
    if global_features is None:
        global_features = extractor.extract([image], size)[0]
    global_features_seconds = time.perf_counter() - start
    grid = size // extractor.patch_size
    if global_features.shape[:2] != (grid, grid):
        raise ValueError(f"global_features: expected a ({grid}, {grid}, C) grid, got {global_features.shape}")
    start = time.perf_counter()
    label_maps = agglomerative_merge(global_features, config.merge_thresholds)
    pool = regions_from_label_maps(label_maps, (size, size))
    regions = deduplicate_regions(pool, config.nms_iou_threshold)
    global_clustering_seconds = time.perf_counter() - start

    # Step 2: local re-clustering of the small regions.
    is_small = regions.areas < config.small_region_area_ratio * size * size
    large = [r for r, small in zip(regions.rles, is_small, strict=True) if not small]
    small = [r for r, small in zip(regions.rles, is_small, strict=True) if small]
    local = local_recluster(image, small, extractor, config)
    start = time.perf_counter()
    masks_s = _remove_duplicates(large + local.masks, config.nms_iou_threshold)
    dedupe_seconds = time.perf_counter() - start

    # Step 3: back to the original resolution, refinement, removal of poorly-agreeing masks.
    start = time.perf_counter()
    masks = _resize_masks(masks_s, height, width)
    resize_seconds = time.perf_counter() - start
    refined = refine_and_filter(image, masks, refiner, config.refinement_iou_threshold)
    start = time.perf_counter()
    cleaned = clean_masks(
        refined.masks,
        min_area=config.min_mask_area,
        max_corners=config.max_mask_corners,
        use_hole_filling=config.use_hole_filling,
    )
    cleanup_seconds = time.perf_counter() - start

    # Step 4: hierarchy by coverage, parents first (masks removed above leave their children
    # to the next ancestor, or make them roots).
    start = time.perf_counter()
    final_masks, parents, depths = _hierarchy(cleaned.masks, config.coverage_threshold)
    num_masks = len(final_masks)
    result_areas = mask_areas(final_masks) if num_masks else np.zeros(0, dtype=np.int64)
    boxes = mask_boxes_xywh(final_masks) if num_masks else np.zeros((0, 4), dtype=np.float64)
    hierarchy_seconds = time.perf_counter() - start

    timings = ExplorationTimings(
        global_features=global_features_seconds,
        global_clustering=global_clustering_seconds,
        local_reclustering=local.seconds - local.network_seconds + dedupe_seconds,
        local_features=local.network_seconds,
        resize=resize_seconds,
        refinement=refined.seconds,
        cleanup=cleanup_seconds,
        hierarchy=hierarchy_seconds,
        total=time.perf_counter() - total_start,
    )
    counts = ExplorationCounts(
        global_regions=len(pool),
        after_nms=len(regions),
        small_regions=len(small),
        local_subregions=len(local.masks),
        after_local=len(masks_s),
        after_refinement=len(refined.masks),
        after_cleanup=num_masks,
    )
    logger.debug("self-exploration counts %s, timings %s", counts, timings)
    return ImagePseudoLabels(
        height=height,
        width=width,
        masks=final_masks,
        areas=np.asarray(result_areas, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64),
        parents=parents,
        depths=depths,
        scores=np.full(num_masks, PSEUDO_LABEL_SCORE, dtype=np.float64),
        counts=counts,
        timings=timings,
    )


def _remove_duplicates(masks: Sequence[dict[str, Any]], iou_threshold: float) -> list[dict[str, Any]]:
    """NMS over the kept global regions followed by the local subregions (earlier ones win)."""
    if len(masks) == 0:
        return []
    priority = np.arange(len(masks), 0, -1, dtype=np.float64)
    keep = np.sort(mask_nms(masks, priority, iou_threshold))
    return [masks[i] for i in keep]


def _resize_masks(masks: Sequence[Mapping[str, Any]], height: int, width: int) -> list[dict[str, Any]]:
    """Nearest-neighbour resize of RLE masks to (height, width); empty results are dropped."""
    resized = [
        dict(rle) if tuple(rle["size"]) == (height, width) else resize_rle_nearest(rle, height, width)
        for rle in masks
    ]
    areas = mask_areas(resized)  # one validated batch instead of one call per mask
    return [rle for rle, area in zip(resized, areas, strict=True) if area > 0]


def resize_rle_nearest(rle: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """Nearest-neighbour resize of one RLE mask, computed on its runs (no full-size array).

    Output pixel (y, x) takes source pixel (floor(y h / height), floor(x w / width)) for an
    (h, w) source, the convention of :mod:`~sohes_hf.pseudo_labeling.region_pool`. COCO RLE
    runs go down the columns; a source run boundary at row b moves to output row
    ceil(b height / h), and each source column is repeated for the output columns mapping to
    it, so the output runs follow from the source's row transitions alone. About 10x faster
    than decoding, resizing and re-encoding an SA-1B-sized (1500 x 2250) mask.

    Returns:
        The resized mask as a compressed RLE with ``str`` counts.
    """
    source = decode_mask(rle)
    src_height, src_width = source.shape
    # Row boundaries b in [0, h] where each source column toggles (0 above row 0 and below h-1).
    by_column = source.T  # (w, h), C-contiguous: pycocotools decodes in Fortran order
    inner = np.flatnonzero(by_column[:, 1:] != by_column[:, :-1])
    top = np.flatnonzero(by_column[:, 0])
    bottom = np.flatnonzero(by_column[:, -1])
    columns = np.concatenate((inner // (src_height - 1), top, bottom))
    boundaries = np.concatenate(
        (inner % (src_height - 1) + 1, np.zeros_like(top), np.full_like(bottom, src_height))
    )
    order = np.argsort(columns * (src_height + 1) + boundaries, kind="stable")
    columns, boundaries = columns[order], boundaries[order]
    out_rows = -((-boundaries * height) // src_height)  # ceil(b * height / h)
    per_column = np.bincount(columns, minlength=src_width)
    first = np.concatenate(([0], np.cumsum(per_column)[:-1]))
    source_of = (np.arange(width, dtype=np.int64) * src_width) // width
    lengths = per_column[source_of]
    total = int(lengths.sum())
    starts = np.repeat(first[source_of] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    positions = (
        np.repeat(np.arange(width, dtype=np.int64) * height, lengths) + out_rows[starts + np.arange(total)]
    )
    # Two toggles at one position (a run ending at a column's bottom where the next column's
    # run starts, or a run shrunk to nothing) cancel out.
    unique, counts = np.unique(positions, return_counts=True)
    toggles = unique[counts % 2 == 1]
    run_lengths = np.diff(np.concatenate(([0], toggles, [height * width])))
    strings = encode_rle_counts(run_lengths.astype(np.int64), np.asarray([run_lengths.size]))
    return {"size": [height, width], "counts": strings[0]}


def _hierarchy(
    masks: Sequence[dict[str, Any]], coverage_threshold: float
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Parents by coverage, masks reordered parents-first; returns (masks, parents, depths)."""
    if len(masks) == 0:
        return [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    parents = np.asarray(build_hierarchy(masks, coverage=coverage_threshold), dtype=np.int64)
    order = np.asarray(order_parents_first(parents), dtype=np.int64)
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    old_parents = parents[order]
    ordered_parents = np.where(old_parents >= 0, new_index[np.maximum(old_parents, 0)], -1).astype(np.int64)
    depths = np.asarray(hierarchy_depths(ordered_parents), dtype=np.int64)
    return [masks[i] for i in order], ordered_parents, depths
