"""Tests for the candidate region pool: upsampling, exact and near duplicate removal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from scipy import ndimage

from sohes_hf.masks import decode_masks, encode_masks, encode_rle_counts, mask_nms, pairwise_iou
from sohes_hf.pseudo_labeling.merge import agglomerative_merge
from sohes_hf.pseudo_labeling.region_pool import (
    RegionPool,
    build_region_pool,
    deduplicate_regions,
    regions_from_label_maps,
)


def _quadrant_maps() -> list[np.ndarray]:
    fine = np.zeros((4, 4), dtype=np.int32)
    fine[:2, 2:], fine[2:, :2], fine[2:, 2:] = 1, 2, 3
    coarse = fine.copy()
    coarse[coarse == 1] = 0  # top half merged
    relabelled = (fine + 5) * 2  # same partition as ``fine``, other label numbers
    whole = np.zeros((4, 4), dtype=np.int64)
    return [coarse, fine, relabelled, whole]


def test_exact_duplicates_are_pooled_once_with_level_and_persistence() -> None:
    pool = regions_from_label_maps(_quadrant_maps(), (32, 32))
    assert isinstance(pool, RegionPool)
    masks = decode_masks(pool.rles)
    # Distinct patch sets: 4 quadrants, the top half, the whole image.
    assert len(pool) == 6
    fine = _quadrant_maps()[1]
    expected = [np.kron(fine == label, np.ones((8, 8), dtype=bool)) for label in range(4)]
    for index in range(4):
        np.testing.assert_array_equal(masks[index], expected[index])
    np.testing.assert_array_equal(pool.level_indices, [1, 1, 1, 1, 0, 3])
    # Bottom quadrants occur in coarse, fine and relabelled; top ones in fine and relabelled.
    np.testing.assert_array_equal(pool.num_levels, [2, 2, 3, 3, 1, 1])
    np.testing.assert_array_equal(pool.areas, masks.reshape(len(pool), -1).sum(axis=1))
    assert masks[5].all(), "the whole-image region is kept"
    assert pool.image_size == (32, 32)
    assert all(isinstance(rle["counts"], str) for rle in pool.rles)


@pytest.mark.parametrize("image_size", [(37, 50), (13, 9), (96, 64), (12, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_upsampling_matches_torch_nearest(image_size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    label_map = rng.integers(0, 5, (12, 8)).astype(np.int32)
    label_map[:, :2] = 5  # a region touching the first columns, and one spanning the grid
    label_map[seed + 3] = 6
    pool = regions_from_label_maps([label_map], image_size)
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(label_map)[None, None].float(), size=image_size, mode="nearest"
    )[0, 0].numpy()
    masks = decode_masks(pool.rles)
    present = [label for label in range(7) if (label_map == label).any()]
    assert len(pool) == len(present)
    # The RLEs are in canonical form: identical to encoding the decoded masks.
    assert [rle["counts"] for rle in pool.rles] == [rle["counts"] for rle in encode_masks(masks)]
    for mask in masks:
        labels_under = np.unique(upsampled[mask])
        assert labels_under.size == 1
        np.testing.assert_array_equal(mask, upsampled == labels_under[0])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _near_duplicate_maps(grown_levels: int) -> list[np.ndarray]:
    """Region R = 20 patches; R plus one patch (IoU 20/21 > 0.9) appears on ``grown_levels`` maps."""
    base = np.arange(100, dtype=np.int32).reshape(10, 10) + 100
    base[:2, :] = 0  # R: 20 patches
    grown = base.copy()
    grown[2, 0] = 0  # R plus one patch
    return [base] * (3 - grown_levels) + [grown] * grown_levels


@pytest.mark.parametrize(("grown_levels", "survivor_rows"), [(1, 2), (2, 3)])
def test_nms_keeps_the_more_persistent_near_duplicate(grown_levels: int, survivor_rows: int) -> None:
    maps = _near_duplicate_maps(grown_levels)
    pool = regions_from_label_maps(maps, (40, 40))
    kept = deduplicate_regions(pool, 0.9)
    masks = decode_masks(kept.rles)
    big = [mask for mask in masks if mask.sum() >= 20 * 16]
    assert len(big) == 1
    expected = np.zeros((40, 40), dtype=bool)
    expected[:8, :] = True
    if survivor_rows == 3:  # the grown region was more persistent (2 levels against 1)
        expected[8:12, :4] = True
    np.testing.assert_array_equal(big[0], expected)
    # Nothing else is suppressed: the single patches have IoU <= 1/21 with everything.
    assert len(kept) == len(pool) - 1


def test_equal_persistence_prefers_the_finer_level() -> None:
    base, grown = _near_duplicate_maps(1)[0], _near_duplicate_maps(1)[-1]
    pool = build_region_pool([grown, base], (10, 10))
    big = [mask for mask in decode_masks(pool.rles) if mask.sum() >= 20]
    assert len(big) == 1
    assert big[0].sum() == 20, "base has one more region than grown: it is the finer level"


def test_pool_from_merging_has_no_pair_above_the_iou_threshold() -> None:
    rng = np.random.default_rng(3)
    features = ndimage.gaussian_filter(rng.standard_normal((16, 16, 16)).astype(np.float32), (1.5, 1.5, 0))
    maps = agglomerative_merge(features + 0.2, [0.9, 0.8, 0.7, 0.6, 0.5])
    full = regions_from_label_maps(maps, (64, 64))
    kept = deduplicate_regions(full, 0.9)
    assert 0 < len(kept) < len(full) <= sum(int(m.max()) + 1 for m in maps)
    full_masks = decode_masks(full.rles)
    kept_masks = decode_masks(kept.rles)
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            assert _iou(kept_masks[i], kept_masks[j]) <= 0.9
    # Every dropped region has a near duplicate among the kept ones.
    kept_keys = {mask.tobytes() for mask in kept_masks}
    for mask in full_masks:
        if mask.tobytes() not in kept_keys:
            assert max(_iou(mask, other) for other in kept_masks) > 0.9
    # All pooled masks are distinct unions of 4x4 pixel blocks.
    assert len({mask.tobytes() for mask in full_masks}) == len(full)
    blocks = full_masks.reshape(len(full), 16, 4, 16, 4)
    assert (blocks.all(axis=(2, 4)) == blocks.any(axis=(2, 4))).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_rle_counts(np.array([3, 1]), np.array([1, 0, 1])), "lengths"),
        (lambda: encode_rle_counts(np.array([3, 1]), np.array([1])), "lengths"),
        (lambda: regions_from_label_maps([], (8, 8)), "label_maps"),
        (lambda: regions_from_label_maps(np.zeros((4, 4), dtype=np.int32), (8, 8)), "label_maps"),
        (
            lambda: regions_from_label_maps([np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32)], (8, 8)),
            "label_maps",
        ),
        (lambda: regions_from_label_maps([np.zeros((4, 4))], (8, 8)), "label_maps"),
        (lambda: regions_from_label_maps([-np.ones((4, 4), np.int32)], (8, 8)), "label_maps"),
        (lambda: regions_from_label_maps([np.zeros((4, 4), np.int32)], (8,)), "image_size"),
        (lambda: regions_from_label_maps([np.zeros((4, 4), np.int32)], (0, 8)), "image_size"),
        (lambda: regions_from_label_maps([np.zeros((4, 4), np.int32)], (8.0, 8)), "image_size"),
        (lambda: regions_from_label_maps([np.zeros((4, 4), np.int32)], (3, 8)), "image_size"),
        (lambda: build_region_pool([np.zeros((4, 4), np.int32)], (8, 8), 1.5), "iou_threshold"),
    ],
)
def test_bad_input_raises_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def _merged_maps(seed: int, size: int = 14) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    features = ndimage.gaussian_filter(rng.standard_normal((size, size, 8)).astype(np.float32), (1.2, 1.2, 0))
    thresholds = sorted(rng.uniform(0.1, 0.95, 6).tolist(), reverse=True)
    return agglomerative_merge(features + 0.3, thresholds)


def _brute_force_containers(masks: np.ndarray) -> np.ndarray:
    """Smallest strictly containing mask of each mask, from the decoded pixels."""
    flat = masks.reshape(len(masks), -1)
    areas = flat.sum(axis=1)
    containers = np.full(len(masks), -1, dtype=np.int64)
    for i in range(len(masks)):
        holders = [j for j in range(len(masks)) if j != i and not (flat[i] & ~flat[j]).any()]
        if holders:
            containers[i] = min(holders, key=lambda j: areas[j])
    return containers


@pytest.mark.parametrize("seed", range(4))
def test_merged_maps_are_detected_as_nested_with_their_containers(seed: int) -> None:
    pool = regions_from_label_maps(_merged_maps(seed), (42, 30))
    assert pool.containers is not None
    masks = decode_masks(pool.rles)
    np.testing.assert_array_equal(pool.containers, _brute_force_containers(masks))
    # Nested: every pair is disjoint or one holds the other, the premise of the fast NMS.
    iou = pairwise_iou(pool.rles, pool.rles)
    areas = pool.areas.astype(np.float64)
    for i, j in zip(*np.nonzero(iou > 0), strict=True):
        assert iou[i, j] == min(areas[i], areas[j]) / max(areas[i], areas[j])


def test_maps_that_are_not_nested_get_no_containers() -> None:
    left_right = np.zeros((4, 4), dtype=np.int32)
    left_right[:, 2:] = 1
    top_bottom = np.zeros((4, 4), dtype=np.int32)
    top_bottom[2:] = 1
    quarters = left_right + 2 * top_bottom
    assert regions_from_label_maps([quarters, left_right], (8, 8)).containers is not None
    assert regions_from_label_maps([left_right, top_bottom], (8, 8)).containers is None
    assert regions_from_label_maps([quarters, left_right, top_bottom], (8, 8)).containers is None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_threshold", [0.0, 0.5, 0.75, 0.9, 1.0])
def test_containment_nms_equals_pairwise_mask_nms(seed: int, iou_threshold: float) -> None:
    maps = _merged_maps(seed, size=10 + seed)
    pool = regions_from_label_maps(maps, (3 * (10 + seed) + seed, 2 * (10 + seed)))
    assert pool.containers is not None
    fast = deduplicate_regions(pool, iou_threshold)
    generic = deduplicate_regions(dataclasses.replace(pool, containers=None), iou_threshold)
    assert [r["counts"] for r in fast.rles] == [r["counts"] for r in generic.rles]
    # And against masks.mask_nms called directly with the preference as scores.
    scores = pool.num_levels * 1000.0 - np.arange(len(pool))
    expected = np.sort(mask_nms(pool.rles, scores, iou_threshold))
    assert [r["counts"] for r in fast.rles] == [pool.rles[i]["counts"] for i in expected]
    np.testing.assert_array_equal(fast.num_levels, pool.num_levels[expected])


@pytest.mark.parametrize("seed", range(3))
def test_subset_keeps_the_nearest_container_inside_the_subset(seed: int) -> None:
    pool = regions_from_label_maps(_merged_maps(seed), (28, 28))
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(pool))[: len(pool) // 2]
    part = pool.subset(chosen)
    assert part.containers is not None
    np.testing.assert_array_equal(part.containers, _brute_force_containers(decode_masks(part.rles)))
    fast = deduplicate_regions(part, 0.6)
    generic = deduplicate_regions(dataclasses.replace(part, containers=None), 0.6)
    assert [r["counts"] for r in fast.rles] == [r["counts"] for r in generic.rles]
    assert pool.subset(np.concatenate([chosen, chosen[:1]])).containers is None


def test_pool_nms_on_maps_that_are_not_nested_matches_mask_nms() -> None:
    rng = np.random.default_rng(7)
    maps = [rng.integers(0, 3, (6, 6)).astype(np.int32) for _ in range(4)]
    pool = regions_from_label_maps(maps, (12, 18))
    assert pool.containers is None
    kept = deduplicate_regions(pool, 0.3)
    scores = pool.num_levels * 1000.0 - np.arange(len(pool))
    expected = np.sort(mask_nms(pool.rles, scores, 0.3))
    assert [r["counts"] for r in kept.rles] == [pool.rles[i]["counts"] for i in expected]


def test_encode_rle_counts_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((9, 7)) < p for p in (0.0, 0.1, 0.5, 0.9, 1.0)]
    masks.append(np.zeros((300, 400), dtype=bool))
    masks[-1][100:250, 30:] = True  # long runs: several 5-bit groups, negative deltas
    masks.append(np.ones((1, 1), dtype=bool))
    counts: list[int] = []
    lengths: list[int] = []
    expected: list[str] = []
    for mask in masks:
        flat = mask.T.ravel()  # COCO runs go down the columns and start with zeros
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate(([0], changes, [flat.size])))
        if flat[0]:
            runs = np.concatenate(([0], runs))
        counts.extend(int(v) for v in runs)
        lengths.append(len(runs))
        expected.append(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode())
    assert encode_rle_counts(np.array(counts), np.array(lengths)) == expected
    assert encode_rle_counts(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) == []
