"""Hierarchy forest from predicted ancestor relations (paper section 3.2).

The ancestor head predicts ``P[i, j]``, the probability that mask i is an ancestor of mask j.
The paper reconstructs the forest "by topological sorting"; a prediction need not be a valid
partial order, so this module states exactly how it is repaired. For K kept instances:

1. **Edges.** ``i -> j`` (i is an ancestor of j) when ``P[i, j] > threshold``. Self loops are
   ignored; a NaN probability counts as "no relation" (0).
2. **Mutual pairs.** When both ``i -> j`` and ``j -> i`` are set, keep the direction with the
   higher probability; on a tie the instance with the higher score is the ancestor, then the
   lower index.
3. **Longer cycles.** Rank instances by (more predicted descendants, fewer predicted
   ancestors, higher score, lower index) and drop every edge that points from a later to an
   earlier rank. The remaining edges all point forward in one total order, so no cycle is left.
   In a valid ancestor matrix (the transitive closure of a forest) an ancestor always has
   strictly more descendants than each of its descendants, so no true edge is ever dropped.
4. **Parents.** A node's parent is its ancestor with the most ancestors of its own (the deepest
   one; for a transitive closure this is exactly the direct parent); ties go to the higher
   ``P[i, j]``, then to the later rank. Nodes without ancestors are roots.
5. **Order.** Depth-first pre-order: roots by descending score, each node's children by
   descending score (ties by index). Parents precede children; depth = parent depth + 1.

Everything is vectorised numpy over (K, K) matrices plus an O(K) walk, so it always terminates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Forest:
    """A forest over K nodes, indexed like the input matrix.

    Attributes:
        parents: (K,) int64, direct parent index or -1 for a root.
        depths: (K,) int64, 0 for roots.
        order: (K,) int64 permutation: the depth-first pre-order (parents before children).
    """

    parents: np.ndarray
    depths: np.ndarray
    order: np.ndarray


def build_forest(
    ancestor_probs: np.ndarray, scores: np.ndarray | None = None, threshold: float = 0.5
) -> Forest:
    """Builds a valid forest from a (possibly contradictory) ancestor probability matrix.

    Args:
        ancestor_probs: (K, K) probabilities in [0, 1]; ``[i, j]`` = P(i is an ancestor of j).
            NaN entries mean "no relation".
        scores: (K,) instance scores used to break ties and order siblings (default: all 0,
            i.e. index order). NaN scores count as -inf.
        threshold: An edge exists when the probability is strictly above this value.

    Returns:
        The :class:`Forest` (rules in the module docstring).

    Raises:
        ValueError: wrong shapes, probabilities outside [0, 1], or a threshold outside [0, 1].
    """
    probs = np.asarray(ancestor_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != probs.shape[1]:
        raise ValueError(f"ancestor_probs: expected a square (K, K) matrix, got shape {probs.shape}")
    num = probs.shape[0]
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: must lie in [0, 1], got {threshold}")
    finite = probs[~np.isnan(probs)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError("ancestor_probs: probabilities must lie in [0, 1] (apply a sigmoid to logits)")
    if scores is None:
        node_scores = np.zeros(num, dtype=np.float64)
    else:
        node_scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if node_scores.shape[0] != num:
            raise ValueError(f"scores: expected {num} values, got {node_scores.shape[0]}")
        node_scores = np.where(np.isnan(node_scores), -np.inf, node_scores)
    if num == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Forest(parents=empty, depths=empty.copy(), order=empty.copy())

    probs = np.where(np.isnan(probs), 0.0, probs)
    np.fill_diagonal(probs, 0.0)
    edges = probs > threshold
    edges = _resolve_mutual_pairs(edges, probs, node_scores)
    edges, rank = _drop_backward_edges(edges, node_scores)
    parents = _choose_parents(edges, probs, rank)
    order, depths = _preorder(parents, node_scores)
    return Forest(parents=parents, depths=depths, order=order)


def _resolve_mutual_pairs(edges: np.ndarray, probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Keeps one direction of each pair predicted both ways (rule 2)."""
    index = np.arange(edges.shape[0])
    ancestor_wins = (probs > probs.T) | (
        (probs == probs.T)
        & (
            (scores[:, None] > scores[None, :])
            | ((scores[:, None] == scores[None, :]) & (index[:, None] < index[None, :]))
        )
    )
    mutual = edges & edges.T
    return edges & (~mutual | ancestor_wins)


def _drop_backward_edges(edges: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks nodes and keeps only forward edges (rule 3); returns (edges, rank of each node)."""
    num = edges.shape[0]
    num_descendants = edges.sum(axis=1)
    num_ancestors = edges.sum(axis=0)
    # np.lexsort sorts by the last key first.
    ordering = np.lexsort((np.arange(num), -scores, num_ancestors, -num_descendants))
    rank = np.empty(num, dtype=np.int64)
    rank[ordering] = np.arange(num)
    return edges & (rank[:, None] < rank[None, :]), rank


def _choose_parents(edges: np.ndarray, probs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Picks each node's deepest ancestor as its parent (rule 4)."""
    num_ancestors = edges.sum(axis=0)
    # Column j holds j's candidate parents; narrow them key by key (vectorised lexicographic max).
    depth_key = np.where(edges, num_ancestors[:, None], -1)
    best = edges & (depth_key == depth_key.max(axis=0, keepdims=True))
    prob_key = np.where(best, probs, -1.0)
    best &= prob_key == prob_key.max(axis=0, keepdims=True)
    rank_key = np.where(best, rank[:, None], -1)
    return np.where(edges.any(axis=0), rank_key.argmax(axis=0), -1).astype(np.int64)


def _preorder(parents: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth-first pre-order and depths (rule 5); ``parents`` must be acyclic."""
    num = parents.shape[0]
    by_score = np.lexsort((np.arange(num), -scores))  # descending score, then index
    children: list[list[int]] = [[] for _ in range(num)]
    roots: list[int] = []
    for node in by_score:
        parent = int(parents[node])
        (roots if parent < 0 else children[parent]).append(int(node))
    order: list[int] = []
    depths = np.zeros(num, dtype=np.int64)
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        order.append(node)
        for child in children[node]:
            depths[child] = depths[node] + 1
        stack.extend(reversed(children[node]))
    if len(order) != num:  # cannot happen with forward-only edges; guard against silent loss
        raise RuntimeError("forest construction left nodes unreachable; parents contain a cycle")
    return np.asarray(order, dtype=np.int64), depths
