"""Hierarchy analysis of pseudo-labels by pixel coverage (paper section 3.1, step 4; appendix D).

The pseudo-labels of an image form a forest: roots are whole entities, descendants are parts
and subparts. Mask ``j`` is an *ancestor* of mask ``i`` when

    coverage(i in j) = |i ∩ j| / |i| >= theta_cover   and   coverage(j in i) = |i ∩ j| / |j| < theta_cover,

(the ``>=`` / ``<`` convention of HASSOD's ``hac/post_process.py``), with ``theta_cover = 0.9``
(appendix A; appendix D finds the relations stable for 0.6-0.95). The direct parent of ``i`` is
its smallest-area ancestor.

Properties that the code relies on:
    * An ancestor is strictly larger: ``theta |i| <= |i ∩ j| < theta |j|`` gives ``|i| < |j|``,
      so parent links cannot form cycles and sorting by depth puts parents first.
    * Coverages are float64 divisions of integer pixel counts, compared with the threshold as
      given, exactly as the brute-force definition above (so 9 of 10 pixels is coverage 0.9).
    * Empty masks (area 0) have coverage 0 everywhere: they get no parent and are nobody's
      parent, i.e. isolated roots of depth 0.
    * Among ancestors of equal smallest area the lower index is the parent.

Coverage is computed on COCO RLE through :mod:`sohes_hf.masks` (pycocotools), without decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sohes_hf import masks as mask_ops

#: theta_cover of the paper (appendix A).
DEFAULT_COVERAGE_THRESHOLD = 0.9


@dataclass(frozen=True)
class Hierarchy:
    """The hierarchy forest of one image's masks.

    Attributes:
        parents: (N,) int64 index of each mask's direct parent, -1 for roots.
        depths: (N,) int64 depth, 0 for roots (whole entities), parent's depth + 1 otherwise.
        order: (N,) int64 permutation listing parents before their children (by depth, then by
            index), as the pseudo-label file requires.
    """

    parents: np.ndarray
    depths: np.ndarray
    order: np.ndarray

    @property
    def num_masks(self) -> int:
        return int(self.parents.shape[0])

    def ancestor_matrix(self) -> np.ndarray:
        """(N, N) bool matrix ``P`` with ``P[i, j]`` True when mask i is an ancestor of mask j.

        This is the target of the ancestor prediction head (paper section 3.2, figure 4).
        """
        matrix = np.zeros((self.num_masks, self.num_masks), dtype=bool)
        for child in range(self.num_masks):
            node = int(self.parents[child])
            while node >= 0:
                matrix[node, child] = True
                node = int(self.parents[node])
        return matrix


def build_hierarchy(
    masks: np.ndarray | Sequence[Mapping[str, Any]], coverage: float = DEFAULT_COVERAGE_THRESHOLD
) -> np.ndarray:
    """Direct parent of every mask by the coverage test (paper section 3.1, step 4).

    Args:
        masks: bool (or 0/1) array (N, H, W), or a sequence of COCO RLE dicts of one size.
        coverage: theta_cover in (0, 1].

    Returns:
        (N,) int64 parent indices, -1 for roots. See the module docstring for the rule, the tie
        rule and empty masks.

    Raises:
        ValueError: ``masks`` is malformed or ``coverage`` is not a number in (0, 1].
    """
    threshold = _validate_coverage(coverage)
    rles = _as_rles(masks)
    if not rles:
        return np.zeros(0, dtype=np.int64)
    intersections = mask_ops.intersection_areas(rles, rles)
    areas = np.diagonal(intersections).copy()
    # covered[i, j] = |i ∩ j| / |i| (0 for an empty i), so covered.T[i, j] = |i ∩ j| / |j|.
    with np.errstate(divide="ignore", invalid="ignore"):
        covered = np.where(areas[:, None] > 0, intersections / areas[:, None], 0.0)
    covers = covered >= threshold  # covers[i, j]: i lies in j at least theta_cover
    is_ancestor = covers & ~covers.T
    np.fill_diagonal(is_ancestor, False)
    # Smallest ancestor area, lowest index on ties: argmin over areas masked to ancestors.
    candidate_areas = np.where(is_ancestor, areas[None, :], np.iinfo(np.int64).max)
    parents = np.argmin(candidate_areas, axis=1).astype(np.int64)
    parents[~is_ancestor.any(axis=1)] = -1
    return parents


def hierarchy_depths(parents: np.ndarray | Sequence[int]) -> np.ndarray:
    """Depth of every node of a parent forest: 0 for roots (whole entities).

    Args:
        parents: (N,) parent indices in [-1, N), -1 for roots.

    Returns:
        (N,) int64 depths.

    Raises:
        ValueError: ``parents`` is not a 1-D integer array in [-1, N) or contains a cycle.
    """
    links = _validate_parents(parents)
    depths = np.full(links.shape[0], -1, dtype=np.int64)
    for start in range(links.shape[0]):
        path = []
        node = start
        while node >= 0 and depths[node] < 0:
            path.append(node)
            if len(path) > links.shape[0]:
                raise ValueError(f"parents: the links starting at index {start} form a cycle")
            node = int(links[node])
        depth = -1 if node < 0 else int(depths[node])
        for visited in reversed(path):
            depth += 1
            depths[visited] = depth
    return depths


def order_parents_first(parents: np.ndarray | Sequence[int]) -> np.ndarray:
    """Permutation of mask indices in which every parent precedes its children.

    Masks are ordered by depth, then by index (a stable, deterministic topological order).

    Returns:
        (N,) int64 permutation; ``masks[order]`` is the order to write them in.

    Raises:
        ValueError: as :func:`hierarchy_depths`.
    """
    return np.argsort(hierarchy_depths(parents), kind="stable").astype(np.int64)


def analyze_hierarchy(
    masks: np.ndarray | Sequence[Mapping[str, Any]], coverage: float = DEFAULT_COVERAGE_THRESHOLD
) -> Hierarchy:
    """:func:`build_hierarchy` plus depths and a parents-first order, as one :class:`Hierarchy`."""
    parents = build_hierarchy(masks, coverage)
    depths = hierarchy_depths(parents)
    return Hierarchy(parents=parents, depths=depths, order=np.argsort(depths, kind="stable").astype(np.int64))


def _validate_coverage(coverage: float) -> float:
    if isinstance(coverage, (bool, np.bool_)) or not isinstance(coverage, (int, float, np.number)):
        raise ValueError(f"coverage: expected a number in (0, 1], got {coverage!r}")
    value = float(coverage)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"coverage: expected a number in (0, 1], got {value}")
    return value


def _as_rles(masks: np.ndarray | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(
                f"masks: expected a (N, H, W) array or a list of RLE dicts, got shape {masks.shape}"
            )
        if masks.shape[0] == 0:
            return []
        return mask_ops.encode_masks(masks)
    if isinstance(masks, (str, bytes, Mapping)) or not isinstance(masks, Sequence):
        raise ValueError(
            f"masks: expected a (N, H, W) array or a list of RLE dicts, got {type(masks).__name__}"
        )
    return masks  # validated by sohes_hf.masks


def _validate_parents(parents: np.ndarray | Sequence[int]) -> np.ndarray:
    links = np.asarray(parents)
    if links.ndim != 1:
        raise ValueError(f"parents: expected a 1-D array, got shape {links.shape}")
    if links.size == 0:
        return links.astype(np.int64)
    if links.dtype.kind not in "iu":
        raise ValueError(f"parents: expected integer indices, got dtype {links.dtype}")
    links = links.astype(np.int64)
    if links.min() < -1 or links.max() >= links.shape[0]:
        raise ValueError(
            f"parents: indices must lie in [-1, {links.shape[0]}), got {links.min()}..{links.max()}"
        )
    if (links == np.arange(links.shape[0])).any():
        raise ValueError("parents: a mask cannot be its own parent")
    return links
