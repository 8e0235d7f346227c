"""Forest reconstruction from ancestor probabilities (paper section 3.2, rules in forest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sohes_hf.modeling.forest import Forest, build_forest


def _random_parents(rng: np.random.Generator, num: int) -> np.ndarray:
    """A random forest over ``num`` nodes, node labels shuffled so parents may come later."""
    ordered = np.full(num, -1, dtype=np.int64)
    for node in range(1, num):
        ordered[node] = rng.integers(-1, node)  # -1 = new root
    permutation = rng.permutation(num)  # new label of each ordered node
    parents = np.full(num, -1, dtype=np.int64)
    for node in range(num):
        if ordered[node] >= 0:
            parents[permutation[node]] = permutation[ordered[node]]
    return parents


def _closure_brute_force(parents: np.ndarray) -> np.ndarray:
    """Transitive closure by repeated boolean matrix products of the direct-parent adjacency."""
    num = parents.shape[0]
    direct = np.zeros((num, num), dtype=np.int64)
    for child, parent in enumerate(parents):
        if parent >= 0:
            direct[parent, child] = 1
    closure = direct.copy()
    while True:
        grown = ((closure + closure @ direct) > 0).astype(np.int64)
        if np.array_equal(grown, closure):
            return closure.astype(bool)
        closure = grown


def _assert_valid_forest(forest: Forest, num: int) -> None:
    assert sorted(forest.order.tolist()) == list(range(num))
    position = np.empty(num, dtype=np.int64)
    position[forest.order] = np.arange(num)
    for node in range(num):
        parent = forest.parents[node]
        if parent < 0:
            assert forest.depths[node] == 0
        else:
            assert parent != node
            assert position[parent] < position[node], "parent must precede child"
            assert forest.depths[node] == forest.depths[parent] + 1
    # Walking up from any node terminates within num steps (no cycles).
    for node in range(num):
        steps, current = 0, node
        while current >= 0:
            current = forest.parents[current]
            steps += 1
            assert steps <= num


@pytest.mark.parametrize("seed", range(8))
def test_recovers_parents_of_random_valid_forests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num = int(rng.integers(1, 40))
    parents = _random_parents(rng, num)
    closure = _closure_brute_force(parents)
    # Confident but noisy probabilities on both sides of the threshold.
    probs = np.where(closure, rng.uniform(0.55, 1.0, closure.shape), rng.uniform(0.0, 0.45, closure.shape))
    forest = build_forest(probs, scores=rng.uniform(size=num), threshold=0.5)
    np.testing.assert_array_equal(forest.parents, parents)
    _assert_valid_forest(forest, num)


def test_mutual_pair_keeps_the_more_probable_direction() -> None:
    probs = np.array([[0.0, 0.9], [0.8, 0.0]])
    np.testing.assert_array_equal(build_forest(probs).parents, [-1, 0])
    np.testing.assert_array_equal(build_forest(probs.T).parents, [1, -1])


def test_mutual_pair_tie_goes_to_higher_score_then_lower_index() -> None:
    probs = np.array([[0.0, 0.9], [0.9, 0.0]])
    np.testing.assert_array_equal(build_forest(probs, scores=np.array([0.2, 0.7])).parents, [1, -1])
    np.testing.assert_array_equal(build_forest(probs).parents, [-1, 0])


def test_three_cycle_is_cut_by_rank() -> None:
    # 0 -> 1 -> 2 -> 0: every node has one descendant and one ancestor, so ranks follow scores.
    probs = np.zeros((3, 3))
    probs[0, 1] = probs[1, 2] = probs[2, 0] = 0.9
    forest = build_forest(probs, scores=np.array([0.1, 0.3, 0.2]))
    # rank: 1, 2, 0 -> edge 0 -> 1 points backwards and is dropped.
    np.testing.assert_array_equal(forest.parents, [2, -1, 1])
    np.testing.assert_array_equal(forest.order, [1, 2, 0])
    np.testing.assert_array_equal(forest.depths, [2, 0, 1])


@pytest.mark.parametrize(
    "name",
    ["all_ones", "self_loops", "long_cycle", "random", "nan", "ties", "mutual_everywhere"],
)
def test_adversarial_matrices_give_valid_deterministic_forests(name: str) -> None:
    rng = np.random.default_rng(7)
    num = 30
    if name == "all_ones":
        probs = np.ones((num, num))
    elif name == "self_loops":
        probs = np.eye(num)
    elif name == "long_cycle":
        probs = np.zeros((num, num))
        probs[np.arange(num), (np.arange(num) + 1) % num] = 1.0
    elif name == "random":
        probs = rng.uniform(size=(num, num))
    elif name == "nan":
        probs = rng.uniform(size=(num, num))
        probs[rng.uniform(size=(num, num)) < 0.3] = np.nan
    elif name == "ties":
        probs = np.full((num, num), 0.75)
    else:
        upper = rng.uniform(0.6, 1.0, size=(num, num))
        probs = np.maximum(upper, upper.T)
    scores = rng.uniform(size=num)
    first = build_forest(probs, scores=scores)
    second = build_forest(probs.copy(), scores=scores.copy())
    _assert_valid_forest(first, num)
    for attribute in ("parents", "depths", "order"):
        np.testing.assert_array_equal(getattr(first, attribute), getattr(second, attribute))


def test_all_ones_becomes_a_chain_in_score_order() -> None:
    scores = np.array([0.2, 0.9, 0.5])
    forest = build_forest(np.ones((3, 3)), scores=scores)
    np.testing.assert_array_equal(forest.order, [1, 2, 0])
    np.testing.assert_array_equal(forest.parents, [2, -1, 1])


def test_nan_means_no_relation_and_nan_scores_sort_last() -> None:
    probs = np.full((3, 3), np.nan)
    forest = build_forest(probs, scores=np.array([np.nan, 0.1, 0.5]))
    np.testing.assert_array_equal(forest.parents, [-1, -1, -1])
    np.testing.assert_array_equal(forest.order, [2, 1, 0])


def test_children_are_visited_depth_first_by_score() -> None:
    # Two trees: 0 -> {1, 2}, 3 -> {4}; scores order roots 3 before 0 and child 2 before 1.
    parents = np.array([-1, 0, 0, -1, 3])
    probs = _closure_brute_force(parents).astype(float)
    forest = build_forest(probs, scores=np.array([0.5, 0.1, 0.4, 0.9, 0.2]))
    np.testing.assert_array_equal(forest.order, [3, 4, 0, 2, 1])


def test_empty_and_invalid_inputs() -> None:
    empty = build_forest(np.zeros((0, 0)))
    assert empty.parents.shape == empty.order.shape == empty.depths.shape == (0,)
    with pytest.raises(ValueError, match="ancestor_probs"):
        build_forest(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ancestor_probs"):
        build_forest(np.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="scores"):
        build_forest(np.zeros((2, 2)), scores=np.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        build_forest(np.zeros((2, 2)), threshold=1.5)


def test_parent_ties_go_to_probability_then_later_rank() -> None:
    # Node 2 has two unrelated candidate ancestors (0 and 1), each with no ancestors of its own.
    probs = np.zeros((3, 3))
    probs[0, 2], probs[1, 2] = 0.7, 0.9
    assert build_forest(probs).parents.tolist() == [-1, -1, 1]
    probs[0, 2] = probs[1, 2] = 0.8
    # Equal degrees, so ranks follow scores: node 0 (0.9) ranks before node 1 (0.1); later wins.
    assert build_forest(probs, scores=np.array([0.9, 0.1, 0.5])).parents.tolist() == [-1, -1, 1]
    assert build_forest(probs, scores=np.array([0.1, 0.9, 0.5])).parents.tolist() == [-1, -1, 0]
