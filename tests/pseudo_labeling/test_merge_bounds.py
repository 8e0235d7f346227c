"""Tests for the lazily evaluated similarity bounds of the merge kernel (paper section 3.1, step 1).

A merged region's edges start with upper bounds of their similarities (from the linearity of the
area-weighted mean, and the triangle inequality for a neighbour that touched only one part), and an
edge is evaluated exactly only when its bound reaches the top of the heap. The label maps must
still equal those of the quadratic reference of ``test_merge`` bit for bit, including the tie
order. Flat regions with weak noise are the hardest case (a large region absorbs patches one by
one, most neighbours touch only the large part), so the grids here are built that way and the test
checks that such long boundaries actually occur. The bound itself is checked against brute force.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from sohes_hf.pseudo_labeling import merge_kernel
from sohes_hf.pseudo_labeling.merge import agglomerative_merge

from .test_merge import _cosine, _dot, reference_merge

THRESHOLDS = [0.99, 0.97, 0.9, 0.6, 0.3, 0.1]


def _flat_regions(seed: int, height: int, width: int, channels: int, noise: float) -> np.ndarray:
    """A few flat pieces (one random feature each, split by straight lines) plus weak noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    piece = (yy * 3 > height + xx).astype(np.int64) + 2 * (xx * 2 > width).astype(np.int64)
    palette = rng.standard_normal((4, channels)).astype(np.float32)
    return palette[piece] + noise * rng.standard_normal((height, width, channels)).astype(np.float32)


def _max_neighbour_count(label_map: np.ndarray) -> int:
    """Largest number of distinct 4-connected neighbouring regions of one region."""
    pairs = set()
    for a, b in ((label_map[:, :-1], label_map[:, 1:]), (label_map[:-1, :], label_map[1:, :])):
        different = a != b
        pairs.update(zip(a[different].tolist(), b[different].tolist(), strict=True))
        pairs.update(zip(b[different].tolist(), a[different].tolist(), strict=True))
    counts: dict[int, int] = {}
    for region, _ in pairs:
        counts[region] = counts.get(region, 0) + 1
    return max(counts.values(), default=0)


@pytest.mark.parametrize(
    ("seed", "height", "width", "channels", "noise"),
    [(0, 20, 20, 32, 0.3), (1, 18, 22, 64, 0.5), (2, 20, 18, 8, 0.2)],
)
def test_bounded_edges_match_quadratic_reference(
    seed: int, height: int, width: int, channels: int, noise: float
) -> None:
    features = _flat_regions(seed, height, width, channels, noise)
    thresholds = [*_mid_growth_thresholds(features), *THRESHOLDS]
    got = agglomerative_merge(features, thresholds)
    expected = reference_merge(features, thresholds)
    # A recorded region with many neighbours had at least that many when it was created
    # (neighbours only coarsen afterwards): long boundaries, mostly one-sided bounds, occurred.
    assert max(_max_neighbour_count(m) for m in got) > 16
    for threshold, label_map, reference in zip(thresholds, got, expected, strict=True):
        np.testing.assert_array_equal(label_map, reference, err_msg=f"threshold {threshold}")


def _mid_growth_thresholds(features: np.ndarray) -> list[float]:
    """Upper quantiles of the cosine between raster-consecutive patches.

    Recording partitions there catches large regions that have absorbed part of their flat
    piece and are surrounded by many single patches (long neighbour lists).
    """
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    similarity = np.sum(unit[:-1] * unit[1:], axis=1)
    return [float(q) for q in np.quantile(similarity, [0.9, 0.95, 0.97, 0.99])]


def test_bounded_edges_with_zero_features_and_exact_ties() -> None:
    features = _flat_regions(3, 13, 13, 16, 0.3)
    features[4:6, 5:8] = 0.0  # similarity 0 with everything
    features[10:, :4] = features[10, 0]  # a block of identical features: exact ties
    got = agglomerative_merge(features, THRESHOLDS)
    expected = reference_merge(features, THRESHOLDS)
    for label_map, reference in zip(got, expected, strict=True):
        np.testing.assert_array_equal(label_map, reference)


def test_single_column_merges_like_single_row() -> None:
    # A (H, 1) grid has only vertical edges; its creation order equals that of the (1, H) row.
    rng = np.random.default_rng(4)
    values = ndimage.gaussian_filter1d(rng.standard_normal((9, 8)), 1.0, axis=0).astype(np.float32) + 0.2
    thresholds = [0.9, 0.5, 0.0]
    columns = agglomerative_merge(values[:, None, :], thresholds)
    rows = agglomerative_merge(values[None, :, :], thresholds)
    assert int(rows[-1].max()) + 1 < 9, "the row should merge"
    for column, row in zip(columns, rows, strict=True):
        np.testing.assert_array_equal(column, row.T)


def _merged_feature(f_a: np.ndarray, area_a: int, f_b: np.ndarray, area_b: int) -> np.ndarray:
    """The paper's area-weighted mean, in float64 and stored in float32, as the kernel does."""
    total = area_a + area_b
    return ((area_a * f_a.astype(np.float64) + area_b * f_b.astype(np.float64)) / total).astype(np.float32)


def _bound_cases(seed: int) -> list[tuple[np.ndarray, int, np.ndarray, int, np.ndarray]]:
    """(f_a, area_a, f_b, area_b, f_n): nearby, far apart, nearly opposite, a large part and a patch."""
    rng = np.random.default_rng(seed)
    cases = []
    for channels in (3, 8, 64, 768):
        base = rng.standard_normal(channels).astype(np.float32)
        for spread in (1e-4, 0.05, 0.5, 3.0):
            f_a = (base + spread * rng.standard_normal(channels)).astype(np.float32)
            f_b = (base + spread * rng.standard_normal(channels)).astype(np.float32)
            f_n = (base + spread * rng.standard_normal(channels)).astype(np.float32)
            for area_a, area_b in ((1, 1), (3, 5), (500, 1), (1, 4000)):
                cases.append((f_a, area_a, f_b, area_b, f_n))
        opposite = (-base + 1e-3 * rng.standard_normal(channels)).astype(np.float32)
        cases.append((base, 7, opposite, 6, rng.standard_normal(channels).astype(np.float32)))
    return cases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_edge_bound_is_above_the_computed_similarity(seed: int) -> None:
    """``_upper_similarity`` >= the similarity the kernel would compute, for every way it is called."""
    for f_a, area_a, f_b, area_b, f_n in _bound_cases(seed):
        f_k = _merged_feature(f_a, area_a, f_b, area_b)
        norm_a, norm_b, norm_k, norm_n = (math.sqrt(_dot(v, v)) for v in (f_a, f_b, f_k, f_n))
        computed = _cosine(f_k, norm_k, f_n, norm_n)
        cos_an, cos_bn = _cosine(f_a, norm_a, f_n, norm_n), _cosine(f_b, norm_b, f_n, norm_n)
        cos_ab = max(-1.0, min(1.0, _cosine(f_a, norm_a, f_b, norm_b) - merge_kernel._COS_SLACK))
        sin_ab = math.sqrt(max(0.0, (1.0 - cos_ab) * (1.0 + cos_ab)))
        weights = (area_a * norm_a, area_b * norm_b, (area_a + area_b) * norm_k)
        both = merge_kernel._upper_similarity(cos_an, cos_bn, *weights, cos_ab, sin_ab)
        only_a = merge_kernel._upper_similarity(cos_an, math.nan, *weights, cos_ab, sin_ab)
        only_b = merge_kernel._upper_similarity(math.nan, cos_bn, *weights, cos_ab, sin_ab)
        assert both >= computed and only_a >= computed and only_b >= computed
        # Both parts' similarities known: the bound is tight (float32 rounding of f_k only).
        assert both - computed < 2e-7
        # A looser input key (an upper bound rather than the exact value) keeps it valid.
        assert merge_kernel._upper_similarity(cos_an + 0.01, cos_bn, *weights, cos_ab, sin_ab) >= both


def test_shifted_bound_follows_the_triangle_inequality() -> None:
    rng = np.random.default_rng(5)
    for _ in range(2000):
        a, b, n = rng.standard_normal((3, 16))
        b = a + rng.uniform(0.01, 2.0) * b  # from nearly equal to unrelated directions
        unit = [v / np.linalg.norm(v) for v in (a, b, n)]
        cos_an, cos_ab, cos_bn = unit[0] @ unit[2], unit[0] @ unit[1], unit[1] @ unit[2]
        lower_ab = max(-1.0, cos_ab - 1e-12)
        sin_ab = math.sqrt(max(0.0, (1.0 - lower_ab) * (1.0 + lower_ab)))
        bound = merge_kernel._shifted_upper(float(cos_an), lower_ab, sin_ab)
        assert bound >= cos_bn - 1e-12
        expected = (
            1.0
            if math.acos(min(1.0, cos_an)) <= math.acos(cos_ab)
            else math.cos(math.acos(min(1.0, cos_an)) - math.acos(cos_ab))
        )
        assert bound == pytest.approx(expected, abs=1e-9)
