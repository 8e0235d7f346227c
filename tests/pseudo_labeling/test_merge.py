"""Tests for the global clustering step (paper section 3.1, step 1).

The heap-based numba implementation is checked against a direct quadratic transcription of the
paper's description written here: scan every adjacent pair for the highest cosine similarity,
merge it with the area-weighted mean feature, repeat until the best similarity is below the
threshold. Both use the arithmetic documented in ``sohes_hf.pseudo_labeling.merge`` (float32
features, float64 dot products in a fixed 64-lane order), so their label maps must agree exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sohes_hf.pseudo_labeling.merge import (
    DEFAULT_MERGE_THRESHOLDS,
    agglomerative_merge,
    agglomerative_merge_batch,
)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Float64 products; channel k summed into lane k % 64 in order; lanes halved pairwise."""
    products = x.astype(np.float64) * y.astype(np.float64)
    padded = np.concatenate([products, np.zeros((-len(products)) % 64)]).reshape(-1, 64)
    lanes = np.cumsum(padded, axis=0)[-1]  # cumsum adds strictly in order
    while len(lanes) > 1:
        half = len(lanes) // 2
        lanes = lanes[:half] + lanes[half:]
    return float(lanes[0])


def _cosine(x: np.ndarray, norm_x: float, y: np.ndarray, norm_y: float) -> float:
    if norm_x > 0.0 and norm_y > 0.0:
        return _dot(x, y) / (norm_x * norm_y)
    return 0.0


def reference_merge(features: np.ndarray, thresholds: list[float]) -> list[np.ndarray]:
    """Quadratic agglomerative merging straight from the paper (one full edge scan per merge)."""
    height, width, channels = features.shape
    flat = features.astype(np.float32).reshape(height * width, channels)
    vector = {p: flat[p] for p in range(height * width)}
    norm = {p: math.sqrt(_dot(flat[p], flat[p])) for p in range(height * width)}
    area = dict.fromkeys(range(height * width), 1)
    members = {p: [p] for p in range(height * width)}
    edges: dict[tuple[int, int], tuple[float, int]] = {}  # (a, b) -> (similarity, creation rank)
    rank = 0
    for p in range(height * width):
        right = p + 1 if (p % width) + 1 < width else None
        down = p + width if p + width < height * width else None
        for q in (right, down):  # raster order: right edge before down edge
            if q is None:
                continue
            edges[(p, q)] = (_cosine(vector[p], norm[p], vector[q], norm[q]), rank)
            rank += 1
    next_region = height * width
    recorded: dict[float, np.ndarray] = {}
    for threshold in sorted(set(thresholds), reverse=True):
        while edges:
            (a, b), (best, _) = max(edges.items(), key=lambda item: (item[1][0], -item[1][1]))
            if best < threshold:
                break
            k = next_region
            next_region += 1
            area[k] = area[a] + area[b]
            vector[k] = (
                (area[a] * vector[a].astype(np.float64) + area[b] * vector[b].astype(np.float64)) / area[k]
            ).astype(np.float32)
            norm[k] = math.sqrt(_dot(vector[k], vector[k]))
            members[k] = members.pop(a) + members.pop(b)
            touching = [key for key in edges if a in key or b in key]
            neighbours = sorted({x for key in touching for x in key} - {a, b})
            for key in touching:
                del edges[key]
            for n in neighbours:
                edges[(n, k)] = (_cosine(vector[n], norm[n], vector[k], norm[k]), rank)
                rank += 1
        region_of = np.empty(height * width, dtype=np.int64)
        for region, pixels in members.items():
            region_of[pixels] = region
        _, first = np.unique(region_of, return_index=True)
        order = region_of[np.sort(first)]
        relabel = {region: label for label, region in enumerate(order)}
        recorded[threshold] = np.array([relabel[r] for r in region_of], dtype=np.int32).reshape(height, width)
    return [recorded[t] for t in thresholds]


def _smooth_grid(seed: int, height: int, width: int, channels: int, sigma: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((height, width, channels)).astype(np.float32)
    return ndimage.gaussian_filter(noise, sigma=(sigma, sigma, 0)).astype(np.float32) + 0.3


THRESHOLDS = [0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0]


@pytest.mark.parametrize(
    ("seed", "height", "width", "channels"),
    [
        (0, 6, 6, 8),
        (1, 8, 11, 16),
        (2, 12, 9, 13),
        (3, 16, 16, 32),
        (4, 10, 14, 24),
        (5, 1, 12, 8),
        (6, 9, 10, 130),
        (7, 12, 1, 8),
    ],
)
def test_matches_quadratic_reference_on_smooth_grids(
    seed: int, height: int, width: int, channels: int
) -> None:
    features = _smooth_grid(seed, height, width, channels)
    got = agglomerative_merge(features, THRESHOLDS)
    expected = reference_merge(features, THRESHOLDS)
    counts = [int(m.max()) + 1 for m in got]
    assert counts[0] > counts[-1], "the grid should merge across the thresholds"
    for threshold, label_map, reference in zip(THRESHOLDS, got, expected, strict=True):
        np.testing.assert_array_equal(label_map, reference, err_msg=f"threshold {threshold}")


def _tie_grids() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    palette = rng.standard_normal((4, 8)).astype(np.float32)
    constant = np.broadcast_to(palette[0], (7, 9, 8)).copy()
    quadrants = np.empty((8, 8, 8), dtype=np.float32)
    quadrants[:4, :4], quadrants[:4, 4:], quadrants[4:, :4], quadrants[4:, 4:] = palette
    checker = palette[(np.indices((6, 7)).sum(axis=0) % 2)]
    stripes = palette[np.arange(10)[:, None] // 3 % 3 + 0 * np.arange(5)[None, :]]
    # Mirror-symmetric smooth grids: every edge has an exact twin, and which twin merges first
    # decides what the regions crossing the middle column look like.
    half = _smooth_grid(8, 9, 5, 8, sigma=1.0)
    mirrored_even = np.concatenate([half, half[:, ::-1]], axis=1)
    mirrored_odd = np.concatenate([half, half[:, -2::-1]], axis=1)
    # Patches drawn from three vectors with cos(A, B) == cos(B, C) exactly: the merge order of
    # tied edges changes the partitions (a reversed tie rule gives different maps here).
    triple = np.zeros((3, 8), dtype=np.float32)
    triple[:, :2] = [[1, 1], [1, 0], [1, -1]]
    tied = [triple[np.random.default_rng(seed).integers(0, 3, (7, 8))] for seed in (1, 2, 3)]
    return [constant, quadrants, checker, stripes, mirrored_even, mirrored_odd, *tied]


def test_tie_goes_to_the_edge_created_first() -> None:
    # cos(A, B) == cos(B, C) == 1/sqrt(2) exactly; merging either pair drops the other below 0.5.
    features = np.array(
        [[[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [1, -1, 0, 0, 0, 0, 0, 0]]], np.float32
    )
    (labels,) = agglomerative_merge(features, [0.5])
    np.testing.assert_array_equal(labels, [[0, 0, 1]])  # edge (0, 1) was created before (1, 2)
    np.testing.assert_array_equal(agglomerative_merge(features[:, ::-1].copy(), [0.5])[0], [[0, 0, 1]])


@pytest.mark.parametrize("grid_index", range(9))
def test_exact_ties_follow_creation_order(grid_index: int) -> None:
    features = _tie_grids()[grid_index]
    thresholds = [0.99, 0.9, 0.7, 0.5, -0.5, -0.99]
    got = agglomerative_merge(features, thresholds)
    expected = reference_merge(features, thresholds)
    for label_map, reference in zip(got, expected, strict=True):
        np.testing.assert_array_equal(label_map, reference)


def test_default_thresholds_and_given_order() -> None:
    features = _smooth_grid(11, 12, 12, 16, sigma=1.0) - 0.3
    default = agglomerative_merge(features)
    assert len(default) == len(DEFAULT_MERGE_THRESHOLDS)
    reversed_maps = agglomerative_merge(features, list(reversed(DEFAULT_MERGE_THRESHOLDS)))
    for label_map, other in zip(default, reversed(reversed_maps), strict=True):
        np.testing.assert_array_equal(label_map, other)
    low_high = agglomerative_merge(features, [0.1, 0.6])
    np.testing.assert_array_equal(low_high[0], default[-1])
    np.testing.assert_array_equal(low_high[1], default[0])


def test_label_maps_are_nested_connected_and_numbered_in_raster_order() -> None:
    features = _smooth_grid(5, 16, 12, 16, sigma=1.0)
    maps = agglomerative_merge(features, [0.9, 0.7, 0.5, 0.3])
    for fine, coarse in itertools.pairwise(maps):
        # Every fine region lies inside exactly one coarse region (merging only coarsens).
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    for label_map in maps:
        assert label_map.dtype == np.int32
        assert label_map.shape == (16, 12)
        _, first = np.unique(label_map.ravel(), return_index=True)
        np.testing.assert_array_equal(label_map.ravel()[np.sort(first)], np.arange(label_map.max() + 1))
        for label in range(int(label_map.max()) + 1):
            _, num_components = ndimage.label(label_map == label)
            assert num_components == 1


def test_threshold_one_keeps_patches_and_minus_one_side_merges_everything() -> None:
    features = _smooth_grid(3, 5, 6, 8)
    keep, merged = agglomerative_merge(features, [1.0, -0.999])
    np.testing.assert_array_equal(keep, np.arange(30, dtype=np.int32).reshape(5, 6))
    np.testing.assert_array_equal(merged, np.zeros((5, 6), dtype=np.int32))


def test_single_patch_and_single_row_grids() -> None:
    (single,) = agglomerative_merge(np.ones((1, 1, 3), dtype=np.float32), [0.5])
    np.testing.assert_array_equal(single, [[0]])
    row = _smooth_grid(2, 1, 7, 8)
    for label_map, reference in zip(
        agglomerative_merge(row, THRESHOLDS), reference_merge(row, THRESHOLDS), strict=True
    ):
        np.testing.assert_array_equal(label_map, reference)


def test_zero_features_have_similarity_zero() -> None:
    features = np.zeros((3, 4, 8), dtype=np.float32)
    above, at_zero = agglomerative_merge(features, [0.1, 0.0])
    assert int(above.max()) + 1 == 12
    assert int(at_zero.max()) + 1 == 1


def test_torch_input_and_float64_input_match_numpy() -> None:
    features = _smooth_grid(9, 9, 9, 16)
    expected = agglomerative_merge(features, [0.8, 0.4])
    bfloat16 = torch.from_numpy(features).to(torch.bfloat16)
    from_bfloat16 = agglomerative_merge(bfloat16, [0.8, 0.4])
    widened = agglomerative_merge(bfloat16.float().numpy(), [0.8, 0.4])
    for a, b in zip(from_bfloat16, widened, strict=True):
        np.testing.assert_array_equal(a, b)
    from_tensor = agglomerative_merge(torch.from_numpy(features), [0.8, 0.4])
    from_float64 = agglomerative_merge(features.astype(np.float64), [0.8, 0.4])
    for a, b, c in zip(expected, from_tensor, from_float64, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    ("features", "thresholds", "message"),
    [
        (np.zeros((4, 4)), [0.5], "features"),
        (np.zeros((0, 4, 8)), [0.5], "features"),
        (np.full((2, 2, 8), np.nan), [0.5], "features"),
        (np.full((2, 2, 8), 1e300), [0.5], "features"),
        (np.zeros((2, 2, 8), dtype=bool), [0.5], "features"),
        ([[[0.0]]], [0.5], "features"),
        (np.zeros((2, 2, 8)), [], "thresholds"),
        (np.zeros((2, 2, 8)), [1.5], "thresholds"),
        (np.zeros((2, 2, 8)), [-1.0], "thresholds"),
        (np.zeros((2, 2, 8)), [float("nan")], "thresholds"),
        (np.zeros((2, 2, 8)), [True], "thresholds"),
        (np.zeros((2, 2, 8)), "0.5", "thresholds"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(
    features: object, thresholds: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        agglomerative_merge(features, thresholds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("patch", "channel"), [(0, 0), (11, 64), (19, 69)])
def test_one_non_finite_value_anywhere_is_refused(value: float, patch: int, channel: int) -> None:
    # The kernel finds non-finite values in its norm pass: one value is enough, wherever it is
    # (first and last patch, a channel of the full 64-lane blocks and one of the C % 64 tail).
    features = _smooth_grid(5, 4, 5, 70)
    features.reshape(20, 70)[patch, channel] = value
    with pytest.raises(ValueError, match="features: all values must be finite"):
        agglomerative_merge(features, [0.8, 0.4])
    grids = np.stack([_smooth_grid(6, 4, 5, 70), features])
    with pytest.raises(ValueError, match="features: all values must be finite"):
        agglomerative_merge_batch(grids, [0.8, 0.4])


def test_largest_float32_values_are_finite_and_merge() -> None:
    # Squares of float32 values cannot overflow the float64 norm, so the largest finite values
    # are accepted and merged like any other scale (cosine similarity ignores the scale).
    features = _smooth_grid(7, 4, 5, 70)
    scaled = features / np.abs(features).max() * np.finfo(np.float32).max
    assert np.isfinite(scaled).all()
    for got, expected in zip(
        agglomerative_merge(scaled, THRESHOLDS), reference_merge(scaled, THRESHOLDS), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_batch_equals_one_merge_per_grid() -> None:
    grids = np.stack([_smooth_grid(seed, 9, 7, 12) for seed in range(4)])
    grids[2, 3:6, 2:5] = grids[2, 3, 2]  # exact ties in one grid
    batch = agglomerative_merge_batch(grids, THRESHOLDS)
    assert len(batch) == 4
    for grid, label_maps in zip(grids, batch, strict=True):
        for got, expected in zip(label_maps, reference_merge(grid, THRESHOLDS), strict=True):
            np.testing.assert_array_equal(got, expected)
    torch_batch = agglomerative_merge_batch(torch.from_numpy(grids), THRESHOLDS)
    for from_torch, from_numpy in zip(torch_batch, batch, strict=True):
        for a, b in zip(from_torch, from_numpy, strict=True):
            np.testing.assert_array_equal(a, b)
    assert agglomerative_merge_batch(np.zeros((0, 4, 4, 3), dtype=np.float32), THRESHOLDS) == []


def test_batch_rejects_bad_input_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="features"):
        agglomerative_merge_batch(np.zeros((4, 4, 3), dtype=np.float32))
    bad = np.ones((2, 4, 4, 3), dtype=np.float32)
    bad[1, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="features"):
        agglomerative_merge_batch(bad)
    with pytest.raises(ValueError, match="thresholds"):
        agglomerative_merge_batch(np.ones((1, 4, 4, 3), dtype=np.float32), [])
