"""Tests for the lazily evaluated similarity bounds of the merge kernel (paper section 3.1, step 1).

A region with a long boundary (more neighbours than ``merge_kernel._EAGER_DEGREE``) gets upper
bounds instead of exact similarities for its edges, and an edge is evaluated exactly only when its bound
reaches the top of the heap. The label maps must still equal those of the quadratic reference
of ``test_merge`` bit for bit, including the tie order. Flat regions with weak noise are the
case where bounds are used (a large region absorbs patches one by one), so the grids here are
built that way and the test checks that such a region actually occurs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sohes_hf.pseudo_labeling import merge_kernel
from sohes_hf.pseudo_labeling.merge import agglomerative_merge

from .test_merge import reference_merge

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
    # A recorded region with more neighbours than the eager limit had at least that many when
    # it was created (neighbours only coarsen afterwards), so the bound path ran.
    assert max(_max_neighbour_count(m) for m in got) > merge_kernel._EAGER_DEGREE
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


def test_key_polynomial_bounds_cosine_from_above() -> None:
    angles = np.linspace(0.0, np.pi, 20001)
    keys = np.array([merge_kernel._upper_key(float(a)) for a in angles])
    assert np.all(keys >= np.cos(angles))
    assert np.all(keys[angles <= 1.0] - np.cos(angles[angles <= 1.0]) < 3e-7)
