"""Global clustering: bottom-up merging of patch features into regions (paper section 3.1, step 1).

SOHES starts self-exploration by agglomerative clustering of the DINO patch features of an
image: every 8x8 patch is a seed region; at each iteration the pair of *adjacent* regions with
the highest cosine feature similarity is merged, the merged feature being the area-weighted
mean of the two raw (unnormalised) features. Whenever the best similarity drops below one of
the merging thresholds ``theta_merge,1 > ... > theta_merge,m`` (appendix A: 0.6, 0.5, ..., 0.1)
the current partition is recorded, giving ``m`` granularity levels in a single pass.

The implementation is a priority-queue algorithm compiled with numba: a binary max-heap of
edges with lazy deletion (an edge is stale once one of its two regions has been merged away;
region ids are never reused, so no version stamps are needed), adjacency lists that are unioned
on each merge, and a union-find forest from regions to the region that absorbed them. A merge
costs O((d_i + d_j) (C + log E)) for neighbour counts ``d``, feature size ``C`` and heap size
``E``, instead of the O(E) scan per merge of a direct transcription (HASSOD's
``hac/hier_cluster.py`` rescans every edge at every merge).

Exact arithmetic (so that results are reproducible and testable bit for bit):
    * Features are cast to float32 (the precision DINO produces; no copy when they already are).
    * ``dot(x, y)`` of two float32 vectors: the products are formed in float64 (exactly);
      channel ``k`` is added to lane ``k % 64`` in increasing ``k``; then the 64 lanes are
      halved pairwise, ``lane[l] = lane[l] + lane[l + w]`` for ``l < w``, ``w = 32, 16, ..., 1``,
      and ``lane[0]`` is the result. The fixed order lets LLVM vectorise without ``fastmath``
      (``fastmath`` would reorder the sums, so two nearly equal similarities could swap).
    * The feature of a merged region is the paper's
      ``f_k = float32((a_i f_i + a_j f_j) / (a_i + a_j))``, evaluated per channel in float64
      with integer areas ``a`` and stored in float32 like the patch features.
    * ``norm(r) = sqrt(dot(f_r, f_r))`` and ``similarity(r, s) = dot(f_r, f_s) / (norm(r) *
      norm(s))``, or 0 when either norm is 0 (a zero feature is similar to nothing).

Tie rule (equal similarities, e.g. repeated features): the edge created first wins. Edges are
numbered when created: the initial edges in raster order of their first patch ``p = y * W + x``,
the edge to the right neighbour ``(p, p + 1)`` before the edge to the lower neighbour
``(p, p + W)``; each merge then numbers the edges of the new region to its neighbours in
increasing order of the neighbour's region id (patches have ids ``0 .. H*W - 1`` in raster
order, the region created by the ``n``-th merge has id ``H*W + n``). This matches HASSOD's
insertion-ordered ``max`` except for the relative order of edges created by the same merge.
Similarities are not clamped: identical features may give 1.0000000000000002, which merges
at threshold 1.

Label maps number the regions ``0 .. K-1`` in order of first appearance in raster order, so
they are deterministic and comparable across runs.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

#: The paper's merging thresholds theta_merge (appendix A), highest (finest) first.
DEFAULT_MERGE_THRESHOLDS: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)

_LANES = 64  # summation lanes of _dot (see the module docstring)
_THREAD_STATE = threading.local()


def agglomerative_merge(
    features: Any, thresholds: Sequence[float] = DEFAULT_MERGE_THRESHOLDS
) -> list[np.ndarray]:
    """Merges adjacent patches into regions and records the partition at every threshold.

    Paper section 3.1, step 1. Merging runs once, from the highest threshold to the lowest: at
    threshold ``t`` it goes on while the best similarity among adjacent region pairs is
    ``>= t`` and the partition is recorded as soon as it drops below ``t`` (or when a single
    region is left). See the module docstring for the arithmetic and the tie rule.

    Args:
        features: patch features (H, W, C), a numpy array or a torch tensor (any device; it is
            detached and copied to CPU). Cast to float32; every value must be finite there.
        thresholds: merging thresholds, numbers in (-1, 1]. Any order; duplicates allowed.

    Returns:
        One int32 label map (H, W) per threshold, in the order the thresholds were given.
        Labels are ``0 .. K-1`` in order of first appearance in raster order; every region is
        4-connected.

    Raises:
        ValueError: ``features`` is not a non-empty finite (H, W, C) array, or ``thresholds``
            is empty or holds a value that is not a number in (-1, 1].
    """
    grid = _features_to_numpy(features)
    threshold_array = _validate_thresholds(thresholds)
    height, width, channels = grid.shape
    order = np.argsort(-threshold_array, kind="stable")
    means = _workspace(height * width // 2 + 1, channels)
    descending_labels = _merge_kernel(
        grid.reshape(height * width, channels), height, width, threshold_array[order], means
    )
    label_maps: list[np.ndarray] = [np.empty(0, dtype=np.int32)] * len(order)
    for rank, index in enumerate(order):
        label_maps[int(index)] = descending_labels[rank].reshape(height, width)
    logger.debug(
        "merged %dx%d patches: %s regions at thresholds %s",
        height,
        width,
        [int(m.max()) + 1 for m in label_maps],
        threshold_array.tolist(),
    )
    return label_maps


def _workspace(rows: int, channels: int) -> np.ndarray:
    """(rows, channels) float32 scratch for merged-region features, reused across calls.

    A fresh 25 MB array (128 x 128 x 768 grid) costs page faults on every call, which were a
    visible share of the run time; each thread keeps its largest buffer instead.
    """
    buffer = getattr(_THREAD_STATE, "means", None)
    if buffer is None or buffer.shape[1] != channels or buffer.shape[0] < rows:
        buffer = np.empty((rows, channels), dtype=np.float32)
        _THREAD_STATE.means = buffer
    return buffer[:rows]


def _features_to_numpy(features: Any) -> np.ndarray:
    """Returns ``features`` as a C-contiguous float32 numpy array (H, W, C), validated."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(features, torch.Tensor):
        features = features.detach().to(device="cpu", dtype=torch.float32).numpy()
    if not isinstance(features, np.ndarray):
        raise ValueError(f"features: expected a numpy array or torch tensor, got {type(features).__name__}")
    if features.ndim != 3:
        raise ValueError(f"features: expected shape (H, W, C), got {features.shape}")
    if min(features.shape) == 0:
        raise ValueError(f"features: every dimension must be non-empty, got {features.shape}")
    if features.dtype.kind not in "iuf":
        raise ValueError(f"features: expected a real numeric dtype, got {features.dtype}")
    with np.errstate(over="ignore"):
        grid = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(grid).all():
        raise ValueError("features: all values must be finite (after casting to float32)")
    return grid


def _validate_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (Sequence, np.ndarray)):
        raise ValueError(f"thresholds: expected a sequence of numbers, got {type(thresholds).__name__}")
    if len(thresholds) == 0:
        raise ValueError("thresholds: at least one merging threshold is required")
    values = []
    for threshold in thresholds:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)):
            raise ValueError(f"thresholds: {threshold!r} is not a number")
        value = float(threshold)
        if not -1.0 < value <= 1.0:
            raise ValueError(f"thresholds: {value} is outside (-1, 1]")
        values.append(value)
    return np.asarray(values, dtype=np.float64)


# --- numba kernels -----------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _dot(x: np.ndarray, y: np.ndarray, lanes: np.ndarray) -> float:  # pragma: no cover - compiled
    """Dot product of two float32 vectors in float64 with a fixed summation order.

    Channel ``k`` goes to lane ``k % 64`` (lanes summed in increasing ``k``); the 64 lanes are
    then halved pairwise: ``lane[l] += lane[l + w]`` for ``w = 32, 16, ..., 1``. Every step is
    element-wise, so LLVM vectorises it without ``fastmath`` (about 3x faster than a scalar
    loop here), and the result is reproducible bit for bit. ``lanes`` is (64,) scratch.
    """
    for lane in range(_LANES):
        lanes[lane] = 0.0
    size = x.shape[0]
    body = size - size % _LANES
    for start in range(0, body, _LANES):
        for lane in range(_LANES):
            lanes[lane] += np.float64(x[start + lane]) * np.float64(y[start + lane])
    for k in range(body, size):
        lanes[k - body] += np.float64(x[k]) * np.float64(y[k])
    width = _LANES // 2
    while width >= 1:
        for lane in range(width):
            lanes[lane] = lanes[lane] + lanes[lane + width]
        width //= 2
    return lanes[0]


@numba.njit(cache=True, inline="always")
def _similarity(
    x: np.ndarray, norm_x: float, y: np.ndarray, norm_y: float, lanes: np.ndarray
) -> float:  # pragma: no cover - compiled
    if norm_x > 0.0 and norm_y > 0.0:
        return _dot(x, y, lanes) / (norm_x * norm_y)
    return 0.0


@numba.njit(cache=True, inline="always")
def _before(key_x: float, edge_x: int, key_y: float, edge_y: int) -> bool:  # pragma: no cover - compiled
    """Heap order: higher similarity first, then the edge created first."""
    return key_x > key_y or (key_x == key_y and edge_x < edge_y)


@numba.njit(cache=True)
def _sift_down(
    keys: np.ndarray, ranks: np.ndarray, ends: np.ndarray, size: int, pos: int
) -> None:  # pragma: no cover - compiled
    """Restores the heap below ``pos``.

    Each entry is (similarity, creation rank, packed region pair) in three parallel arrays, so
    popping never touches memory outside the heap.
    """
    key = keys[pos]
    rank = ranks[pos]
    pair = ends[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _before(keys[child + 1], ranks[child + 1], keys[child], ranks[child]):
            child += 1
        if not _before(keys[child], ranks[child], key, rank):
            break
        keys[pos] = keys[child]
        ranks[pos] = ranks[child]
        ends[pos] = ends[child]
        pos = child
    keys[pos] = key
    ranks[pos] = rank
    ends[pos] = pair


@numba.njit(cache=True)
def _sift_up(keys: np.ndarray, ranks: np.ndarray, ends: np.ndarray, pos: int) -> None:  # pragma: no cover
    key = keys[pos]
    rank = ranks[pos]
    pair = ends[pos]
    while pos > 0:
        parent = (pos - 1) // 2
        if not _before(key, rank, keys[parent], ranks[parent]):
            break
        keys[pos] = keys[parent]
        ranks[pos] = ranks[parent]
        ends[pos] = ends[parent]
        pos = parent
    keys[pos] = key
    ranks[pos] = rank
    ends[pos] = pair


@numba.njit(cache=True)
def _grow(array: np.ndarray, needed: int) -> np.ndarray:  # pragma: no cover - compiled
    """Returns ``array`` or a copy at least ``needed`` long (capacity doubling)."""
    if needed <= array.shape[0]:
        return array
    bigger = np.empty(max(needed, 2 * array.shape[0]), dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


@numba.njit(cache=True)
def _insertion_sort(values: np.ndarray, count: int) -> None:  # pragma: no cover - compiled
    """Sorts ``values[:count]`` in place: insertion sort for the usual short neighbour lists."""
    if count > 32:
        values[:count] = np.sort(values[:count])
        return
    for i in range(1, count):
        value = values[i]
        j = i - 1
        while j >= 0 and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


@numba.njit(cache=True)
def _find(owner: np.ndarray, region: int) -> int:  # pragma: no cover - compiled
    """Alive region that absorbed ``region`` (union-find root), with path halving."""
    while owner[region] != region:
        owner[region] = owner[owner[region]]
        region = owner[region]
    return region


@numba.njit(cache=True)
def _record(
    owner: np.ndarray, num_patches: int, remap: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover
    """Writes the current partition as labels numbered by first raster appearance."""
    remap[:] = -1
    next_label = 0
    for p in range(num_patches):
        region = _find(owner, p)
        if remap[region] < 0:
            remap[region] = next_label
            next_label += 1
        out[p] = remap[region]


@numba.njit(cache=True)
def _initial_graph(
    features: np.ndarray, height: int, width: int, norms: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:  # pragma: no cover
    """Patch norms, 4-connected adjacency lists and the initial edges (in tie-rank order)."""
    num_patches = height * width
    lanes = np.empty(_LANES, dtype=np.float64)
    for p in range(num_patches):
        norms[p] = math.sqrt(_dot(features[p], features[p], lanes))
    adj_start = np.zeros(2 * num_patches, dtype=np.int64)
    adj_len = np.zeros(2 * num_patches, dtype=np.int64)
    pool = np.empty(8 * num_patches + 16, dtype=np.int32)
    pool_size = 0
    for p in range(num_patches):
        y = p // width
        x = p - y * width
        adj_start[p] = pool_size
        if y > 0:
            pool[pool_size] = p - width
            pool_size += 1
        if x > 0:
            pool[pool_size] = p - 1
            pool_size += 1
        if x + 1 < width:
            pool[pool_size] = p + 1
            pool_size += 1
        if y + 1 < height:
            pool[pool_size] = p + width
            pool_size += 1
        adj_len[p] = pool_size - adj_start[p]
    capacity = 4 * num_patches + 16
    keys = np.empty(capacity, dtype=np.float64)
    ends = np.empty(capacity, dtype=np.int64)
    num_edges = 0
    for p in range(num_patches):
        for q in (p + 1, p + width):
            if (q == p + 1 and q % width == 0) or q >= num_patches:
                continue
            similarity = _similarity(features[p], norms[p], features[q], norms[q], lanes)
            if similarity < floor:
                continue  # can never be merged (see _merge_kernel)
            keys[num_edges] = similarity
            ends[num_edges] = (p << 32) | q
            num_edges += 1
    return adj_start, adj_len, pool, keys, ends, num_edges


@numba.njit(cache=True)
def _merge_kernel(
    features: np.ndarray, height: int, width: int, thresholds: np.ndarray, means: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Runs the merging on (H*W, C) float32 ``features``; ``thresholds`` sorted high to low.

    Returns:
        (m, H*W) int32 labels, one row per threshold.
    """
    num_patches = height * width
    max_regions = 2 * num_patches - 1
    channels = features.shape[1]
    # Mean features of merged regions live in slots; alive merged regions hold >= 2 patches
    # each, so num_patches // 2 slots suffice, recycled last-in first-out.
    num_slots = num_patches // 2 + 1  # = means.shape[0]
    slot_of = np.full(max_regions, -1, dtype=np.int64)
    free_slots = np.arange(num_slots - 1, -1, -1).astype(np.int64)
    num_free = num_slots
    areas = np.ones(max_regions, dtype=np.int64)
    norms = np.zeros(max_regions, dtype=np.float64)
    owner = np.arange(max_regions).astype(np.int64)
    alive = np.zeros(max_regions, dtype=np.bool_)
    alive[:num_patches] = True

    adj_start, adj_len, pool, heap_keys, heap_ends, num_edges = _initial_graph(
        features, height, width, norms, thresholds[-1]
    )
    pool_size = adj_start[num_patches - 1] + adj_len[num_patches - 1]
    # Binary max-heap of (similarity, edge id); an entry goes stale (and is skipped when popped)
    # once one of its regions has been merged away. Region ids are never reused. Edges below
    # the lowest threshold are never stored: they cannot be merged, and an empty heap stops a
    # level exactly as a top edge below its threshold does. Dropping them keeps the creation
    # order of the others, so ties are unaffected.
    heap_ranks = np.arange(heap_keys.shape[0]).astype(np.int64)  # creation rank = tie order
    heap_size = num_edges
    for pos in range(heap_size // 2 - 1, -1, -1):
        _sift_down(heap_keys, heap_ranks, heap_ends, heap_size, pos)

    labels = np.empty((thresholds.shape[0], num_patches), dtype=np.int32)
    remap = np.empty(max_regions, dtype=np.int64)
    mark = np.full(max_regions, -1, dtype=np.int64)
    scratch = np.empty(64, dtype=np.int64)
    lanes = np.empty(_LANES, dtype=np.float64)
    next_region = num_patches

    for level in range(thresholds.shape[0]):
        threshold = thresholds[level]
        while heap_size > 0:
            a = heap_ends[0] >> 32
            b = heap_ends[0] & 0xFFFFFFFF
            if alive[a] and alive[b] and heap_keys[0] < threshold:
                break
            heap_size -= 1
            heap_keys[0] = heap_keys[heap_size]
            heap_ranks[0] = heap_ranks[heap_size]
            heap_ends[0] = heap_ends[heap_size]
            if heap_size > 0:
                _sift_down(heap_keys, heap_ranks, heap_ends, heap_size, 0)
            if not (alive[a] and alive[b]):
                continue  # stale: one end was merged away after this edge was pushed

            # --- merge a and b into the new region k ---
            k = next_region
            next_region += 1
            alive[a] = False
            alive[b] = False
            alive[k] = True
            owner[a] = k
            owner[b] = k
            areas[k] = areas[a] + areas[b]
            row_a = features[a] if a < num_patches else means[slot_of[a]]
            row_b = features[b] if b < num_patches else means[slot_of[b]]
            for old in (a, b):
                if slot_of[old] >= 0:
                    free_slots[num_free] = slot_of[old]
                    num_free += 1
            num_free -= 1
            slot = free_slots[num_free]
            slot_of[k] = slot
            mean_k = means[slot]
            weight_a = np.float64(areas[a])
            weight_b = np.float64(areas[b])
            total = np.float64(areas[k])
            # The paper's f_k = (a_i f_i + a_j f_j) / (a_i + a_j), in float64, stored as float32.
            # mean_k may share memory with row_a or row_b; each channel is read before written.
            for c in range(channels):
                mean_k[c] = np.float32(
                    (weight_a * np.float64(row_a[c]) + weight_b * np.float64(row_b[c])) / total
                )
            norms[k] = math.sqrt(_dot(mean_k, mean_k, lanes))

            # Union of the two neighbour lists, resolved to alive regions, sorted by region id.
            scratch = _grow(scratch, adj_len[a] + adj_len[b])
            count = 0
            for source in (a, b):
                for q in range(adj_start[source], adj_start[source] + adj_len[source]):
                    neighbour = _find(owner, pool[q])
                    if neighbour != k and mark[neighbour] != k:
                        mark[neighbour] = k
                        scratch[count] = neighbour
                        count += 1
            _insertion_sort(scratch, count)
            pool = _grow(pool, pool_size + count)
            adj_start[k] = pool_size
            adj_len[k] = count
            pool[pool_size : pool_size + count] = scratch[:count]
            pool_size += count

            heap_keys = _grow(heap_keys, heap_size + count)
            heap_ranks = _grow(heap_ranks, heap_size + count)
            heap_ends = _grow(heap_ends, heap_size + count)
            for n in range(count):
                neighbour = scratch[n]
                row_n = features[neighbour] if neighbour < num_patches else means[slot_of[neighbour]]
                similarity = _similarity(row_n, norms[neighbour], mean_k, norms[k], lanes)
                if similarity < thresholds[-1]:
                    continue  # below the lowest threshold: never merged, never needed
                heap_keys[heap_size] = similarity
                heap_ranks[heap_size] = num_edges
                heap_ends[heap_size] = (neighbour << 32) | k
                _sift_up(heap_keys, heap_ranks, heap_ends, heap_size)
                heap_size += 1
                num_edges += 1
        _record(owner, num_patches, remap, labels[level])
    return labels
