"""Tests for the coverage hierarchy (paper section 3.1, step 4) against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from sohes_hf.masks import encode_masks
from sohes_hf.pseudo_labeling.hierarchy import (
    Hierarchy,
    analyze_hierarchy,
    build_hierarchy,
    hierarchy_depths,
    order_parents_first,
)


def brute_force_parents(masks: np.ndarray, coverage: float) -> np.ndarray:
    """Parent by the paper's rule, on decoded pixels, one pair at a time."""
    count = masks.shape[0]
    areas = masks.reshape(count, -1).sum(axis=1)
    parents = np.full(count, -1, dtype=np.int64)
    for i in range(count):
        best = None
        for j in range(count):
            if i == j:
                continue
            inter = np.logical_and(masks[i], masks[j]).sum()
            i_in_j = inter / areas[i] if areas[i] else 0.0
            j_in_i = inter / areas[j] if areas[j] else 0.0
            if i_in_j >= coverage and j_in_i < coverage and (best is None or areas[j] < areas[best]):
                best = j
        if best is not None:
            parents[i] = best
    return parents


def _random_masks(seed: int, count: int = 24, size: int = 48) -> np.ndarray:
    """Nested and overlapping rectangles and blobs, with some exact duplicates and an empty mask."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for index in range(count):
        kind = index % 4
        if kind == 0:  # big rectangle
            y0, x0 = rng.integers(0, size // 2, 2)
            masks[
                index,
                y0 : y0 + rng.integers(size // 3, size // 2),
                x0 : x0 + rng.integers(size // 3, size // 2),
            ] = True
        elif kind == 1:  # a part inside an earlier mask, slightly spilling out
            parent = masks[rng.integers(0, index)]
            ys, xs = np.nonzero(parent) if parent.any() else (np.array([5]), np.array([5]))
            cy, cx = ys[len(ys) // 2], xs[len(xs) // 2]
            masks[index] = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(2, 8) ** 2
        elif kind == 2:  # random blob
            cy, cx, radius = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 15)
            masks[index] = (yy - cy) ** 2 / 1.5 + (xx - cx) ** 2 <= radius**2
        else:  # copy of an earlier mask, possibly eroded by one row
            masks[index] = masks[rng.integers(0, index)]
            masks[index, rng.integers(0, size)] = False
    masks[count // 2] = False
    return masks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("coverage", [0.9, 0.6, 1.0])
def test_parents_match_brute_force_for_arrays_and_rles(seed: int, coverage: float) -> None:
    masks = _random_masks(seed)
    expected = brute_force_parents(masks, coverage)
    assert (expected >= 0).sum() >= 3, "the fixture should produce some hierarchy"
    np.testing.assert_array_equal(build_hierarchy(masks, coverage), expected)
    np.testing.assert_array_equal(build_hierarchy(encode_masks(masks), coverage), expected)


def _exact_coverage_masks() -> np.ndarray:
    masks = np.zeros((5, 10, 20), dtype=bool)
    masks[0, 0, :10] = True  # A: 10 pixels
    masks[1, 0, 1:11] = True  # B: 10 pixels, 9 shared with A: coverage 0.9 both ways
    masks[2, :10, 1:11] = True  # C: 100 pixels holding 9 of A's 10 pixels: coverage 0.9
    masks[3, :10, 1:10] = True  # D: 90 pixels, all inside C: coverage(C in D) = 0.9 exactly
    masks[4, :, 10:20] = True  # E: 100 pixels, area tie with C; holds 1 pixel of B
    return masks


def test_exact_coverage_threshold_uses_greater_equal_and_strictly_less() -> None:
    masks = _exact_coverage_masks()
    parents = build_hierarchy(masks, 0.9)
    # A in C is exactly 0.9 (>=) and C in A is 0.1 (<): C is A's ancestor. D also holds 9 of A's
    # pixels and is smaller (90 < 100), so D is A's parent. A and B cover each other at 0.9: no
    # relation. D lies in C (1.0) but C in D is exactly 0.9, not < 0.9: no relation.
    np.testing.assert_array_equal(parents, [3, 3, -1, -1, -1])
    np.testing.assert_array_equal(parents, brute_force_parents(masks, 0.9))
    np.testing.assert_array_equal(build_hierarchy(masks, 0.95), brute_force_parents(masks, 0.95))


def test_equal_area_ancestors_tie_to_lower_index() -> None:
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, :, :4] = True  # 32 pixels
    masks[1, :4, :] = True  # 32 pixels, overlaps mask 0 on 16
    masks[2, :2, :2] = True  # inside both
    np.testing.assert_array_equal(build_hierarchy(masks), [-1, -1, 0])
    np.testing.assert_array_equal(build_hierarchy(masks[[1, 0, 2]]), [-1, -1, 0])


def test_empty_masks_are_isolated_roots() -> None:
    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[0] = True
    masks[2, :2, :2] = True
    np.testing.assert_array_equal(build_hierarchy(masks), [-1, -1, 0])
    np.testing.assert_array_equal(hierarchy_depths(build_hierarchy(masks)), [0, 0, 1])
    assert build_hierarchy(np.zeros((0, 6, 6), dtype=bool)).shape == (0,)
    assert build_hierarchy([]).shape == (0,)


def test_hierarchy_depths_of_a_forest_with_a_subpart() -> None:
    np.testing.assert_array_equal(hierarchy_depths([-1, 0, 1, 0, -1]), [0, 1, 2, 1, 0])


def _brute_depths(parents: np.ndarray) -> np.ndarray:
    depths = []
    for node in range(len(parents)):
        depth = 0
        while parents[node] >= 0:
            node = parents[node]
            depth += 1
        depths.append(depth)
    return np.asarray(depths)


@pytest.mark.parametrize("seed", range(3))
def test_depths_order_and_ancestor_matrix(seed: int) -> None:
    masks = _random_masks(seed + 10)
    hierarchy = analyze_hierarchy(encode_masks(masks))
    assert isinstance(hierarchy, Hierarchy)
    parents = hierarchy.parents
    np.testing.assert_array_equal(parents, brute_force_parents(masks, 0.9))
    np.testing.assert_array_equal(hierarchy.depths, _brute_depths(parents))
    assert hierarchy.depths.max() >= 2, "the fixture should nest at least three levels"
    order = order_parents_first(parents)
    np.testing.assert_array_equal(order, hierarchy.order)
    assert sorted(order.tolist()) == list(range(len(parents)))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    for child, parent in enumerate(parents):
        if parent >= 0:
            assert position[parent] < position[child]
    matrix = hierarchy.ancestor_matrix()
    for i in range(len(parents)):
        for j in range(len(parents)):
            node, is_ancestor = parents[j], False
            while node >= 0:
                is_ancestor |= node == i
                node = parents[node]
            assert matrix[i, j] == is_ancestor


def test_parent_areas_are_strictly_larger() -> None:
    masks = _random_masks(3)
    parents = build_hierarchy(masks)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    for child, parent in enumerate(parents):
        if parent >= 0:
            assert areas[parent] > areas[child]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_hierarchy(np.zeros((4, 4), dtype=bool)), "masks"),
        (lambda: build_hierarchy({"size": [2, 2], "counts": "04"}), "masks"),
        (lambda: build_hierarchy([{"size": [2, 2], "counts": "zz"}]), "rles"),
        (lambda: build_hierarchy(np.zeros((1, 4, 4), dtype=bool), 0.0), "coverage"),
        (lambda: build_hierarchy(np.zeros((1, 4, 4), dtype=bool), 1.5), "coverage"),
        (lambda: build_hierarchy(np.zeros((1, 4, 4), dtype=bool), "0.9"), "coverage"),
        (lambda: hierarchy_depths([1, 0]), "cycle"),
        (lambda: hierarchy_depths([1, 2, 0, -1]), "cycle"),
        (lambda: hierarchy_depths([0]), "own parent"),
        (lambda: hierarchy_depths([3, -1]), "parents"),
        (lambda: hierarchy_depths([[0]]), "parents"),
        (lambda: order_parents_first([0.5, -1]), "parents"),
    ],
)
def test_bad_input_raises_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
