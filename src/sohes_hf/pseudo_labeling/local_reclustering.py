"""Step 2 of self-exploration: local re-clustering of small regions (paper section 3.1, appendix D).

Regions smaller than theta_small of the image area (1/1,024: 32 x 32 px at S = 1,024) are noisy at
the global scale. For each one SOHES crops a local image around it, resizes the crop to S' x S'
(256), clusters it with the same merging procedure as step 1, and keeps the subregions that do not
touch the crop's boundary (they are complete within the crop); the small region itself is replaced
by those subregions.

Choices the paper leaves open, made here:

* Crop window: a square centred on the region's box, of side ``local_crop_context`` (2.0) times
  the box's larger side and at least ``min_local_crop_side`` (32) pixels of the S x S image,
  shifted (not shrunk) to stay inside the image, so every crop is square and its aspect ratio is
  kept when resized to S' x S'.
* Crop pixels come from the *original* image (the crop window mapped back to its coordinates), so
  a large photo is zoomed into at its native resolution rather than re-upsampled from S x S.
* Boundary test: a subregion is discarded when it touches a side of the crop that lies inside the
  image. A crop side on the image border does not cut anything off, so a subregion touching it is
  complete and is kept (otherwise entities at the image edge could never be re-discovered).
* The same subregion found at several merging thresholds is kept once.
* Bounds the paper does not give, so that no image can take unbounded time or memory: at most
  ``max_local_crops`` small regions are re-clustered (the largest first), and subregions smaller
  than ``min_subregion_area`` pixels are dropped (see :class:`~.config.SelfExplorationConfig`).

Subregion masks are returned at S x S as COCO RLEs, encoded straight from the crop grid
(:func:`window_run_lengths`) and compressed together in one vectorised pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import encode_rle_counts, mask_areas, mask_boxes_xywh, normalize_rle
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.merge import agglomerative_merge_batch

logger = get_logger(__name__)


class FeatureExtractor(Protocol):
    """What self-exploration needs from a backbone (see :class:`~.features.DinoFeatureExtractor`)."""

    patch_size: int

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        """(B, size/p, size/p, C) float32 patch features of RGB uint8 images resized to size x size."""
        ...


@dataclass(frozen=True)
class CropWindow:
    """A square local crop in the S x S working image: ``[y0, y0 + side) x [x0, x0 + side)``."""

    x0: int
    y0: int
    side: int


@dataclass(frozen=True)
class LocalReclusteringResult:
    """Outcome of step 2.

    Attributes:
        masks: subregion RLEs at S x S (deduplicated within each crop).
        num_crops: number of small regions re-clustered.
        num_discarded: subregions dropped because they touch an inner crop boundary.
        num_uncropped: small regions not re-clustered (beyond ``max_local_crops``).
        num_too_small: subregions dropped as smaller than ``min_subregion_area``.
        network_seconds: time spent in the backbone on the crops.
        seconds: total wall time of the step.
    """

    masks: list[dict[str, Any]]
    num_crops: int
    num_discarded: int
    network_seconds: float
    seconds: float
    num_uncropped: int = 0
    num_too_small: int = 0


def crop_window(box_xywh: Sequence[float], image_size: int, context: float, min_side: int) -> CropWindow:
    """Square window around a box (XYWH, pixels of the S x S image), shifted to lie inside it."""
    x, y, w, h = (float(v) for v in box_xywh)
    side = int(np.ceil(max(context * max(w, h), float(min_side))))
    side = max(1, min(side, image_size))
    center_x, center_y = x + w / 2.0, y + h / 2.0
    x0 = int(np.clip(round(center_x - side / 2.0), 0, image_size - side))
    y0 = int(np.clip(round(center_y - side / 2.0), 0, image_size - side))
    return CropWindow(x0=x0, y0=y0, side=side)


def crop_original(image: np.ndarray, window: CropWindow, image_size: int) -> np.ndarray:
    """Pixels of ``image`` (H, W, 3) under a window given in S x S coordinates (at least 1 px)."""
    height, width = image.shape[:2]
    scale_y, scale_x = height / image_size, width / image_size
    top = min(int(np.floor(window.y0 * scale_y)), height - 1)
    left = min(int(np.floor(window.x0 * scale_x)), width - 1)
    bottom = max(int(np.ceil((window.y0 + window.side) * scale_y)), top + 1)
    right = max(int(np.ceil((window.x0 + window.side) * scale_x)), left + 1)
    return image[top:bottom, left:right]


class CompleteSubregions(NamedTuple):
    """Outcome of :func:`complete_subregions`.

    Attributes:
        masks: (g, g) bool grid masks of the kept subregions, each distinct subregion once.
        num_discarded: subregions touching an inner crop side (counted once per label map).
        num_too_small: distinct complete subregions below ``min_area`` pixels (dropped).
    """

    masks: list[np.ndarray]
    num_discarded: int
    num_too_small: int


def complete_subregions(
    label_maps: Sequence[np.ndarray], window: CropWindow, image_size: int, min_area: int = 0
) -> CompleteSubregions:
    """Grid masks of the subregions that do not touch an inner crop side, each kept once.

    Args:
        label_maps: int label maps (g, g) of the crop, one per merging threshold.
        window: the crop, to tell inner sides (inside the image) from sides on the image border.
        image_size: S.
        min_area: subregions whose mask pasted at S x S (:func:`paste_grid_mask`) has fewer pixels
            are dropped. Their areas are counted from the grid, so a crop of noise with a
            subregion per cell costs no mask at all.
    """
    inner_left, inner_top = window.x0 > 0, window.y0 > 0
    inner_right = window.x0 + window.side < image_size
    inner_bottom = window.y0 + window.side < image_size
    if len(label_maps) == 0:
        return CompleteSubregions([], 0, 0)
    # All maps at once: map m's label l becomes offsets[m] + l, so one stable sort gives every
    # label's patch indices (in increasing order, offset by m * num_patches).
    stacked = np.stack([np.asarray(label_map, dtype=np.int64) for label_map in label_maps])
    shape = stacked.shape[1:]
    num_patches = shape[0] * shape[1]
    offsets = np.concatenate(([0], np.cumsum(stacked.reshape(len(stacked), -1).max(axis=1) + 1)))
    stacked += offsets[:-1, None, None]
    touching = np.zeros(int(offsets[-1]), dtype=bool)
    for inner, edge in (
        (inner_top, stacked[:, 0, :]),
        (inner_bottom, stacked[:, -1, :]),
        (inner_left, stacked[:, :, 0]),
        (inner_right, stacked[:, :, -1]),
    ):
        if inner:
            touching[edge] = True
    combined = stacked.ravel()
    # Pixels of each label once pasted: a grid cell covers (times its row is sampled) x (times
    # its column is sampled) pixels of the window, as paste_grid_mask samples.
    row_pixels, column_pixels = (
        np.bincount((np.arange(window.side, dtype=np.int64) * cells) // window.side, minlength=cells)
        for cells in shape
    )
    cell_pixels = np.outer(row_pixels, column_pixels).ravel()
    areas = np.bincount(combined, weights=np.tile(cell_pixels, len(stacked)), minlength=int(offsets[-1]))
    order = np.argsort(combined, kind="stable")
    bounds = np.searchsorted(combined[order], np.arange(offsets[-1] + 1)).tolist()
    seen: set[bytes] = set()
    too_small: set[bytes] = set()
    kept: list[np.ndarray] = []
    # Maps in order, labels in increasing order within a map; a label absent from its map
    # gives the empty set (kept once, as an empty mask, unless min_area > 0).
    for label in np.flatnonzero(~touching).tolist():
        members = order[bounds[label] : bounds[label + 1]]
        patches = members - (int(members[0]) // num_patches) * num_patches if members.size else members
        signature = patches.tobytes()
        if areas[label] < min_area:
            if members.size:
                too_small.add(signature)
        elif signature not in seen:
            seen.add(signature)
            mask = np.zeros(shape, dtype=bool)
            mask.flat[patches] = True
            kept.append(mask)
    return CompleteSubregions(kept, int(touching.sum()), len(too_small))


def paste_grid_mask(grid_mask: np.ndarray, window: CropWindow, image_size: int) -> np.ndarray:
    """Nearest-neighbour upsamples a (g, g) crop mask to the window and pastes it in S x S."""
    grid = grid_mask.shape[0]
    index = (np.arange(window.side, dtype=np.int64) * grid) // window.side  # as region_pool upsamples
    full = np.zeros((image_size, image_size), dtype=bool)
    full[window.y0 : window.y0 + window.side, window.x0 : window.x0 + window.side] = grid_mask[
        np.ix_(index, index)
    ]
    return full


def window_rle(grid_mask: np.ndarray, window: CropWindow, image_size: int) -> dict[str, Any] | None:
    """COCO RLE of :func:`paste_grid_mask` computed from the (g, g) grid, or None if empty.

    See :func:`window_run_lengths`; the runs are compressed by pycocotools.
    """
    counts = window_run_lengths(grid_mask, window, image_size)
    if counts is None:
        return None
    return normalize_rle({"size": [image_size, image_size], "counts": counts.tolist()})


def window_run_lengths(grid_mask: np.ndarray, window: CropWindow, image_size: int) -> np.ndarray | None:
    """Uncompressed COCO run lengths (int64) of :func:`paste_grid_mask`, or None if empty.

    COCO RLE runs down the columns of the S x S image. A column inside the window is ``y0``
    zeros, the grid column it samples (grid row ``r`` repeated as often as the window samples
    it), then zeros to the bottom; columns outside the window are all zeros. So the run lengths
    follow from the (window columns x (g + 2)) sequence, weighted by those repeats: O(side * g)
    work instead of encoding an S x S array (identical output, tested against pycocotools).
    """
    grid = grid_mask.shape[0]
    side = window.side
    index = (np.arange(side, dtype=np.int64) * grid) // side  # as paste_grid_mask samples
    row_repeats = np.bincount(index, minlength=grid)
    values = np.zeros((side, grid + 2), dtype=bool)
    values[:, 1 : grid + 1] = grid_mask[:, index].T
    column_weights = np.concatenate(([window.y0], row_repeats, [image_size - window.y0 - side]))
    values_flat = np.concatenate(([False], values.ravel(), [False]))
    weights = np.concatenate(
        (
            [window.x0 * image_size],
            np.tile(column_weights, side),
            [(image_size - window.x0 - side) * image_size],
        )
    )
    keep = weights > 0  # grid rows the window never samples, borders of width 0
    values_flat, weights = values_flat[keep], weights[keep]
    if not values_flat.any():
        return None
    starts = np.concatenate(([0], np.flatnonzero(values_flat[1:] != values_flat[:-1]) + 1))
    counts = np.add.reduceat(weights, starts).astype(np.int64)
    if values_flat[0]:
        counts = np.concatenate(([0], counts))  # COCO RLE starts with a run of zeros
    return counts


def local_recluster(
    image: np.ndarray,
    small_regions: Sequence[Mapping[str, Any]],
    extractor: FeatureExtractor,
    config: SelfExplorationConfig,
) -> LocalReclusteringResult:
    """Re-clusters small regions in local crops (section 3.1 step 2).

    Args:
        image: the original RGB image (H, W, 3) uint8.
        small_regions: RLEs at S x S (``config.image_size``) of the regions to re-examine.
        extractor: backbone giving patch features; crops go through it in batches.
        config: thresholds (the same ``merge_thresholds`` as step 1), S, S' and crop settings.

    Returns:
        The complete subregions as RLEs at S x S, with counts and timings.
    """
    start = time.perf_counter()
    size = config.image_size
    if config.local_crop_size % extractor.patch_size != 0:
        raise ValueError(
            f"local_crop_size: must be a multiple of the patch size {extractor.patch_size}, "
            f"got {config.local_crop_size}"
        )
    if len(small_regions) == 0:
        return LocalReclusteringResult([], 0, 0, 0.0, time.perf_counter() - start)
    num_uncropped = max(0, len(small_regions) - config.max_local_crops)
    if num_uncropped:
        largest_first = np.argsort(-mask_areas(small_regions), kind="stable")[: config.max_local_crops]
        logger.info(
            "local re-clustering: %d small regions, only the %d largest are re-clustered (max_local_crops)",
            len(small_regions),
            config.max_local_crops,
        )
        small_regions = [small_regions[int(index)] for index in largest_first]
        if not small_regions:
            return LocalReclusteringResult([], 0, 0, 0.0, time.perf_counter() - start, num_uncropped)
    boxes = mask_boxes_xywh(small_regions)
    windows = [
        crop_window(box, size, config.local_crop_context, config.min_local_crop_side)
        for box in boxes
        if box[2] > 0 and box[3] > 0
    ]
    crops = [crop_original(image, window, size) for window in windows]
    network_start = time.perf_counter()
    features = extractor.extract(crops, config.local_crop_size)
    network_seconds = time.perf_counter() - network_start
    runs: list[np.ndarray] = []
    num_discarded = 0
    num_too_small = 0
    crop_label_maps = agglomerative_merge_batch(features, config.merge_thresholds) if windows else []
    for window, label_maps in zip(windows, crop_label_maps, strict=True):
        subregions = complete_subregions(label_maps, window, size, config.min_subregion_area)
        num_discarded += subregions.num_discarded
        num_too_small += subregions.num_too_small
        for grid_mask in subregions.masks:
            counts = window_run_lengths(grid_mask, window, size)
            if counts is not None:
                runs.append(counts)
    # One vectorised compression for all subregions (as window_rle, without per-mask calls).
    strings = encode_rle_counts(np.concatenate(runs), np.asarray([r.size for r in runs])) if runs else []
    masks = [{"size": [size, size], "counts": string} for string in strings]
    seconds = time.perf_counter() - start
    logger.debug(
        "local re-clustering: %d crops -> %d subregions (%d touched the crop boundary, %d were smaller "
        "than %d px)",
        len(windows),
        len(masks),
        num_discarded,
        num_too_small,
        config.min_subregion_area,
    )
    return LocalReclusteringResult(
        masks, len(windows), num_discarded, network_seconds, seconds, num_uncropped, num_too_small
    )
