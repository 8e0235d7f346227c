"""Compiled kernel of :func:`sohes_hf.pseudo_labeling.merge.agglomerative_merge` (paper section 3.1).

The merging semantics, the arithmetic contract (float32 features, float64 dot products in a
fixed 64-lane order), the tie rule and the lazily evaluated similarity bounds are documented in
the module docstring of :mod:`sohes_hf.pseudo_labeling.merge`; this module holds the numba
functions that implement them, split off to keep each module to one job.

Pool layout (one segment of edge slots per region, created with it): ``nbr`` the neighbour's
region id at creation, ``keys`` the exact similarity or an upper bound of it, ``ranks`` the
creation rank (tie rule), ``exact`` whether the key is exact, ``order`` the heap of the slots
the region owns (offsets into its segment).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_LANES = 64  # summation lanes of _lane_dot (see the module docstring)
# Children per node of the region heaps and the global heap. Any priority queue gives the same
# merges (the top is the maximum of a strict order); 4 children: fewer levels, one cache line.
_ARITY = 4
_VECTOR = 8  # float64 lanes per LLVM vector in _lane_dot (one AVX-512 register, two AVX2 ones)
# Safety margins of the similarity bounds (see ``_upper_similarity``). A computed cosine is
# within 1e-12 of the true cosine of the stored float32 vectors (float64 sums of exact products:
# the error of a 768-term sum is below 1e-13 relative), and so are computed norms.
_COS_SLACK = 1e-12
# Storing a merged feature in float32 moves it by at most 2^-24 of its norm (round to nearest,
# after a float64 evaluation good to 1e-15), which changes its cosine with any vector by at
# most 2^-24 / (1 - 2^-24) < 5.97e-8.
_ROUNDING_SLACK = 5.97e-8
# Below this norm a merged feature could be subnormal in float32, where rounding is absolute,
# not relative: its edges get the trivial bound instead.
_TINY_NORM = 1e-30


def _is_row_operand(operand: Any) -> bool:
    """A C-contiguous (N, C) float32 array (a row is picked) or a (C,) float64 row (already widened)."""
    if not isinstance(operand, types.Array) or operand.layout != "C":
        return False
    return (operand.ndim == 2 and operand.dtype == types.float32) or (
        operand.ndim == 1 and operand.dtype == types.float64
    )


def _row_pointer(context: Any, builder: Any, array_type: Any, array: Any, row: Any) -> tuple[Any, Any]:
    """Pointer to the first element of the row, and the row length (codegen of ``_lane_dot``)."""
    array_struct = context.make_array(array_type)(context, builder, array)
    shape = cgutils.unpack_tuple(builder, array_struct.shape)
    if array_type.ndim == 1:
        return array_struct.data, shape[0]
    strides = cgutils.unpack_tuple(builder, array_struct.strides)
    zero = context.get_constant(types.intp, 0)
    pointer = cgutils.get_item_pointer2(context, builder, array_struct.data, shape, strides, "C", [row, zero])
    return pointer, shape[1]


def _load_float64(builder: Any, pointer: Any, offset: Any, count: int) -> Any:
    """``count`` consecutive elements from ``pointer + offset`` widened to float64 (a vector if count > 1)."""
    element_type = pointer.type.pointee
    address = builder.gep(pointer, [offset])
    double = ir.DoubleType()
    if count == 1:
        value = builder.load(address)
        return value if element_type == double else builder.fpext(value, double)
    vector_type = ir.VectorType(element_type, count)
    alignment = 8 if element_type == double else 4
    value = builder.load(builder.bitcast(address, vector_type.as_pointer()), align=alignment)
    return value if element_type == double else builder.fpext(value, ir.VectorType(double, count))


def _halve(builder: Any, vectors: list[Any]) -> Any:
    """``lane[l] += lane[l + w]`` for ``w = 32, 16, ..., 1`` on the 64 lanes held as 8 vectors; lane 0."""
    while len(vectors) > 1:  # w = 32, 16, 8: whole vectors
        half = len(vectors) // 2
        vectors = [builder.fadd(vectors[v], vectors[v + half]) for v in range(half)]
    value, width = vectors[0], _VECTOR
    while width > 1:  # w = 4, 2, 1: halves of the last vector
        half = width // 2
        low = ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half)))
        high = ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, width)))
        value = builder.fadd(
            builder.shuffle_vector(value, value, low), builder.shuffle_vector(value, value, high)
        )
        width = half
    return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))


@intrinsic
def _lane_dot_intrinsic(typingctx: Any, x: Any, i: Any, y: Any, j: Any) -> Any:  # pragma: no cover - compiled
    """Dot product of two rows in float64 with the fixed summation order of :mod:`.merge`.

    ``x``/``y`` is either a C-contiguous float32 (N, C) array, of which row ``i``/``j`` is used,
    or a float64 (C,) row already widened (its index is ignored); other layouts do not compile
    (``merge.py`` makes the features contiguous). The products of float32 values are exact in
    float64 (48 significant bits), so ``fma(x, y, lane)`` rounds ``x * y + lane`` exactly as a
    multiplication followed by an addition. Channel ``k`` goes to lane ``k % 64`` in increasing
    ``k``: the 64 lanes are 8 LLVM vectors of 8 float64 kept in registers across the row (the
    order within each lane is the documented one, only independent lanes run side by side),
    the ``C % 64`` last channels go to lanes ``0 .. C % 64 - 1`` one by one, and the lanes are
    halved pairwise. Written in LLVM IR because numba keeps a lane array in memory, where every
    step stores and reloads it (about 1.4x slower on cached rows); ``fastmath`` would keep
    registers but reorder the sums, so two nearly equal similarities could swap.
    """
    if not (_is_row_operand(x) and _is_row_operand(y)):
        return None
    if not (isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        x_type, i_type, y_type, j_type = signature.args
        i_value = context.cast(builder, args[1], i_type, types.intp)
        j_value = context.cast(builder, args[3], j_type, types.intp)
        x_pointer, size = _row_pointer(context, builder, x_type, args[0], i_value)
        y_pointer, _ = _row_pointer(context, builder, y_type, args[2], j_value)
        double = ir.DoubleType()
        vector_type = ir.VectorType(double, _VECTOR)
        vector_fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3), f"llvm.fma.v{_VECTOR}f64"
        )
        scalar_fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(double, [double] * 3), "llvm.fma.f64"
        )
        intp = size.type
        block = ir.Constant(intp, _LANES)
        num_blocks = builder.sdiv(size, block)
        body = builder.mul(num_blocks, block)
        zero = ir.Constant(vector_type, [0.0] * _VECTOR)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(_LANES // _VECTOR)]
        with cgutils.for_range(builder, num_blocks) as loop:
            start = builder.mul(loop.index, block)
            for v, total in enumerate(sums):
                offset = builder.add(start, ir.Constant(intp, v * _VECTOR))
                x_part = _load_float64(builder, x_pointer, offset, _VECTOR)
                y_part = _load_float64(builder, y_pointer, offset, _VECTOR)
                builder.store(builder.call(vector_fma, [x_part, y_part, builder.load(total)]), total)
        lanes = cgutils.alloca_once(builder, double, size=_LANES)
        lane_vectors = [
            builder.bitcast(builder.gep(lanes, [ir.Constant(intp, v * _VECTOR)]), vector_type.as_pointer())
            for v in range(len(sums))
        ]
        for total, lane_vector in zip(sums, lane_vectors, strict=True):
            builder.store(builder.load(total), lane_vector, align=8)
        with cgutils.for_range(builder, builder.sub(size, body)) as loop:
            channel = builder.add(body, loop.index)
            lane = builder.gep(lanes, [loop.index])
            x_part = _load_float64(builder, x_pointer, channel, 1)
            y_part = _load_float64(builder, y_pointer, channel, 1)
            builder.store(builder.call(scalar_fma, [x_part, y_part, builder.load(lane)]), lane)
        return _halve(builder, [builder.load(lane_vector, align=8) for lane_vector in lane_vectors])

    return types.float64(x, i, y, j), codegen


# The intrinsic under a callable type for mypy (numba resolves the same object).
_lane_dot = cast(Callable[[np.ndarray, int, np.ndarray, int], float], _lane_dot_intrinsic)


@numba.njit(cache=True, inline="always")
def _cosine(dot: float, norm_x: float, norm_y: float) -> float:  # pragma: no cover - compiled
    """The similarity rule: ``dot / (norm_x * norm_y)``, or 0 when either norm is 0 (a zero
    feature is similar to nothing)."""
    if norm_x > 0.0 and norm_y > 0.0:
        return dot / (norm_x * norm_y)
    return 0.0


@numba.njit(cache=True, inline="always")
def _widen(x: np.ndarray, i: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[:] = float64(x[i])`` (exact).

    One row takes part in many products (a patch in its norm and two edges; the region being
    worked on in every edge it evaluates), and a widened row saves the float32 -> float64
    conversions of each.
    """
    for c in range(out.shape[0]):
        out[c] = np.float64(x[i, c])


@numba.njit(cache=True, inline="always")
def _region_similarity(
    r: int,
    s: int,
    features: np.ndarray,
    means: np.ndarray,
    slot_of: np.ndarray,
    norms: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """Similarity of regions ``r`` and ``s`` (patches: rows of ``features``; merged: rows of ``means``)."""
    norm_r, norm_s = norms[r], norms[s]
    num_patches = features.shape[0]
    if r < num_patches:
        if s < num_patches:
            return _cosine(_lane_dot(features, r, features, s), norm_r, norm_s)
        return _cosine(_lane_dot(features, r, means, slot_of[s]), norm_r, norm_s)
    if s < num_patches:
        return _cosine(_lane_dot(means, slot_of[r], features, s), norm_r, norm_s)
    return _cosine(_lane_dot(means, slot_of[r], means, slot_of[s]), norm_r, norm_s)


@numba.njit(cache=True, inline="always")
def _similarity_to_wide(
    wide: np.ndarray,
    norm_wide: float,
    n: int,
    features: np.ndarray,
    means: np.ndarray,
    slot_of: np.ndarray,
    norms: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """Similarity of region ``n`` (a patch: row of ``features``; merged: row of ``means``) and a
    region whose feature row is ``wide`` (widened to float64, norm ``norm_wide``)."""
    norm_n = norms[n]
    if n < features.shape[0]:
        return _cosine(_lane_dot(wide, 0, features, n), norm_n, norm_wide)
    return _cosine(_lane_dot(wide, 0, means, slot_of[n]), norm_n, norm_wide)


@numba.njit(cache=True, inline="always")
def _before(key_x: float, edge_x: int, key_y: float, edge_y: int) -> bool:  # pragma: no cover - compiled
    """Heap order: higher similarity first, then the edge created first."""
    return key_x > key_y or (key_x == key_y and edge_x < edge_y)


@numba.njit(cache=True, inline="always")
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
        first = _ARITY * pos + 1
        if first >= size:
            break
        child = first
        for other in range(first + 1, min(first + _ARITY, size)):
            if _before(keys[other], ranks[other], keys[child], ranks[child]):
                child = other
        if not _before(keys[child], ranks[child], key, rank):
            break
        keys[pos] = keys[child]
        ranks[pos] = ranks[child]
        ends[pos] = ends[child]
        pos = child
    keys[pos] = key
    ranks[pos] = rank
    ends[pos] = pair


@numba.njit(cache=True, inline="always")
def _sift_up(keys: np.ndarray, ranks: np.ndarray, ends: np.ndarray, pos: int) -> None:  # pragma: no cover
    key = keys[pos]
    rank = ranks[pos]
    pair = ends[pos]
    while pos > 0:
        parent = (pos - 1) // _ARITY
        if not _before(key, rank, keys[parent], ranks[parent]):
            break
        keys[pos] = keys[parent]
        ranks[pos] = ranks[parent]
        ends[pos] = ends[parent]
        pos = parent
    keys[pos] = key
    ranks[pos] = rank
    ends[pos] = pair


@numba.njit(cache=True, inline="always")
def _find(owner: np.ndarray, region: int) -> int:  # pragma: no cover - compiled
    """Alive region that absorbed ``region`` (union-find root, with path halving)."""
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


@numba.njit(cache=True, inline="always")
def _sine(cosine: float) -> float:  # pragma: no cover - compiled
    """sqrt(1 - c^2) for c in [-1, 1], as sqrt((1 - c)(1 + c)) to keep its relative precision near |c| = 1."""
    return math.sqrt(max(0.0, (1.0 - cosine) * (1.0 + cosine)))


@numba.njit(cache=True, inline="always")
def _shifted_upper(upper: float, cos_ab: float, sin_ab: float) -> float:  # pragma: no cover - compiled
    """Upper bound of cos(b, n) from an upper bound of cos(a, n) and a lower bound of cos(a, b).

    The triangle inequality on the sphere gives angle(b, n) >= angle(a, n) - angle(a, b), so
    with ``x = acos(upper)`` and ``y = acos(cos_ab)``: cos(b, n) <= 1 when x <= y, otherwise
    cos(x - y) = cos x cos y + sin x sin y (no inverse trigonometric function needed).
    ``sin_ab`` is ``_sine(cos_ab)``. Free of branches (both cases are computed), so that the
    loop bounding a new region's edges is vectorised.
    """
    cos_an = min(1.0, upper + _COS_SLACK)
    shifted = min(1.0, cos_an * cos_ab + _sine(cos_an) * sin_ab + _COS_SLACK)
    return 1.0 if cos_an >= cos_ab else shifted


@numba.njit(cache=True, inline="always")
def _upper_similarity(
    upper_a: float,
    upper_b: float,
    weighted_norm_a: float,
    weighted_norm_b: float,
    weighted_norm_k: float,
    cos_ab: float,
    sin_ab: float,
) -> float:  # pragma: no cover - compiled
    """Upper bound of the computed similarity of the merged region ``k`` and a neighbour ``n``.

    ``f_k = (a_a f_a + a_b f_b) / (a_a + a_b)`` is linear, so before rounding to float32
    ``cos(k, n) = (a_a |f_a| cos(a, n) + a_b |f_b| cos(b, n)) / ((a_a + a_b) |f_k|)``. Given
    upper bounds of the two cosines (NaN when ``n`` does not touch that part: then the
    triangle inequality through ``angle(a, b)`` supplies one) this bounds ``cos(k, n)`` without
    touching the features. When both cosines are exact the bound is within ~6e-8 of the truth,
    so the edge is evaluated only if it reaches the top of the heap.

    Args:
        upper_a, upper_b: keys (exact similarities or upper bounds) of the edges (a, n) and
            (b, n), or NaN when unknown. At least one is known.
        weighted_norm_a, weighted_norm_b: ``a_a |f_a|`` and ``a_b |f_b|`` (areas times norms).
        weighted_norm_k: ``(a_a + a_b) |f_k|``, positive and not tiny.
        cos_ab, sin_ab: a lower bound of cos(a, b) (-1 when unknown) and ``_sine`` of it.
    """
    # The unknown side (if any) is shifted from the known one; computed in every case and
    # selected, without branches (see _shifted_upper).
    known_a = not math.isnan(upper_a)
    known_b = not math.isnan(upper_b)
    shifted = _shifted_upper(upper_a if known_a else upper_b, cos_ab, sin_ab)
    upper_a = upper_a if known_a else (shifted if weighted_norm_a > 0.0 else 0.0)
    upper_b = upper_b if known_b else (shifted if weighted_norm_b > 0.0 else 0.0)
    term_a = weighted_norm_a * (upper_a + _COS_SLACK)
    term_b = weighted_norm_b * (upper_b + _COS_SLACK)
    # The computed norms are within 1e-13 of the true ones: allow that on each term (they may
    # cancel, so on their absolute values), then add the float32 rounding of f_k and the error
    # of the similarity that would be computed.
    bound = (term_a + term_b + (abs(term_a) + abs(term_b)) * _COS_SLACK) / weighted_norm_k
    bound += _ROUNDING_SLACK + _COS_SLACK
    return min(bound, 1.0 + _COS_SLACK)


@numba.njit(cache=True, inline="always")
def _local_before(keys: np.ndarray, ranks: np.ndarray, x: int, y: int) -> bool:  # pragma: no cover
    return keys[x] > keys[y] or (keys[x] == keys[y] and ranks[x] < ranks[y])


@numba.njit(cache=True, inline="always")
def _local_sift_down(
    order: np.ndarray, keys: np.ndarray, ranks: np.ndarray, start: int, size: int, pos: int
) -> None:  # pragma: no cover - compiled
    """Restores the region heap ``order[start : start + size]`` (offsets into the segment) below ``pos``."""
    item = order[start + pos]
    while True:
        first = _ARITY * pos + 1
        if first >= size:
            break
        child = first
        for other in range(first + 1, min(first + _ARITY, size)):
            if _local_before(keys, ranks, start + order[start + other], start + order[start + child]):
                child = other
        if not _local_before(keys, ranks, start + order[start + child], start + item):
            break
        order[start + pos] = order[start + child]
        pos = child
    order[start + pos] = item


@numba.njit(cache=True, inline="always")
def _push_region(
    region: int,
    adj_start: np.ndarray,
    heap_len: np.ndarray,
    order: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    floor: float,
    g_keys: np.ndarray,
    g_ranks: np.ndarray,
    g_regions: np.ndarray,
    g_size: int,
) -> int:  # pragma: no cover - compiled
    """Pushes the top edge of ``region``'s heap onto the global heap (if it may ever merge)."""
    if heap_len[region] == 0:
        return g_size
    top = adj_start[region] + order[adj_start[region]]
    if keys[top] < floor:
        return g_size
    g_keys[g_size] = keys[top]
    g_ranks[g_size] = ranks[top]
    g_regions[g_size] = region
    _sift_up(g_keys, g_ranks, g_regions, g_size)
    return g_size + 1


@numba.njit(cache=True, inline="always")
def _patch_products(
    features: np.ndarray,
    width: int,
    wide: np.ndarray,
    norms: np.ndarray,
    right_dot: np.ndarray,
    down_dot: np.ndarray,
) -> bool:  # pragma: no cover - compiled
    """Patch norms, and dot products with the right and lower neighbours; whether all are finite.

    Each patch row is widened to float64 once and serves its norm and its two edges. The norm
    pass doubles as the finiteness check of the features: squares are non-negative and a float32
    square cannot overflow float64, so a norm is finite exactly when every value of its row is
    (a separate ``np.isfinite`` over a 128 x 128 x 768 grid cost ~5 ms, 5-9% of the merge).
    """
    num_patches = features.shape[0]
    finite = True
    for p in range(num_patches):
        _widen(features, p, wide)
        norms[p] = math.sqrt(_lane_dot(wide, 0, wide, 0))
        finite &= math.isfinite(norms[p])
        if p % width + 1 < width:
            right_dot[p] = _lane_dot(wide, 0, features, p + 1)
        if p + width < num_patches:
            down_dot[p] = _lane_dot(wide, 0, features, p + width)
    return finite


@numba.njit(cache=True)
def _initial_edges(
    features: np.ndarray,
    height: int,
    width: int,
    wide: np.ndarray,
    norms: np.ndarray,
    floor: float,
    nbr: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    exact: np.ndarray,
    order: np.ndarray,
    adj_start: np.ndarray,
    adj_len: np.ndarray,
    heap_len: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Patch norms (into ``norms``) and segments: exact similarities, ranks in raster order.

    Every patch lists all four neighbours (the similarity is stored on both sides, so a merge
    finds it from either end) but owns, in its heap, only the edges to its right and lower
    neighbours. Returns the pool size used.

    Raises:
        ValueError: a feature value is NaN or infinite (see ``_patch_products``).
    """
    num_patches = height * width
    right_sim = np.zeros(num_patches, dtype=np.float64)
    down_sim = np.zeros(num_patches, dtype=np.float64)
    right_rank = np.zeros(num_patches, dtype=np.int64)
    down_rank = np.zeros(num_patches, dtype=np.int64)
    if not _patch_products(features, width, wide, norms, right_sim, down_sim):
        raise ValueError("features: all values must be finite (after casting to float32)")
    num_edges = 0
    for p in range(num_patches):
        if p % width + 1 < width:
            right_sim[p] = _cosine(right_sim[p], norms[p], norms[p + 1])
            right_rank[p] = num_edges
            num_edges += 1
        if p + width < num_patches:
            down_sim[p] = _cosine(down_sim[p], norms[p], norms[p + width])
            down_rank[p] = num_edges
            num_edges += 1
    pool_size = 0
    for p in range(num_patches):
        y = p // width
        x = p - y * width
        adj_start[p] = pool_size
        # Neighbour slots in increasing id: up, left (owned by them), right, down (owned here).
        for direction in range(4):
            if (
                (direction == 0 and y == 0)
                or (direction == 1 and x == 0)
                or (direction == 2 and x + 1 >= width)
                or (direction == 3 and y + 1 >= height)
            ):
                continue
            if direction == 0:
                q, s, r = p - width, down_sim[p - width], down_rank[p - width]
            elif direction == 1:
                q, s, r = p - 1, right_sim[p - 1], right_rank[p - 1]
            elif direction == 2:
                q, s, r = p + 1, right_sim[p], right_rank[p]
            else:
                q, s, r = p + width, down_sim[p], down_rank[p]
            nbr[pool_size] = q
            keys[pool_size] = s
            ranks[pool_size] = r
            exact[pool_size] = True
            if direction >= 2 and s >= floor:
                order[adj_start[p] + heap_len[p]] = pool_size - adj_start[p]
                heap_len[p] += 1
            pool_size += 1
        adj_len[p] = pool_size - adj_start[p]
        for pos in range((heap_len[p] - 2) // _ARITY, -1, -1):
            _local_sift_down(order, keys, ranks, adj_start[p], heap_len[p], pos)
    return pool_size


@numba.njit(cache=True, inline="always")
def _pop_global(
    g_keys: np.ndarray, g_ranks: np.ndarray, g_regions: np.ndarray, g_size: int
) -> int:  # pragma: no cover
    """Removes the top of the global heap; returns the new size."""
    g_size -= 1
    g_keys[0] = g_keys[g_size]
    g_ranks[0] = g_ranks[g_size]
    g_regions[0] = g_regions[g_size]
    if g_size > 0:
        _sift_down(g_keys, g_ranks, g_regions, g_size, 0)
    return g_size


@numba.njit(cache=True, inline="always")
def _slot_of_neighbour(
    region: int, neighbour: int, nbr: np.ndarray, adj_start: np.ndarray, adj_len: np.ndarray
) -> int:  # pragma: no cover
    """Slot in ``region``'s segment whose neighbour id is ``neighbour``; -1 if none."""
    for q in range(adj_start[region], adj_start[region] + adj_len[region]):
        if nbr[q] == neighbour:
            return q
    return -1


@numba.njit(cache=True, inline="always")
def _union_neighbours(
    a: int,
    b: int,
    k: int,
    nbr: np.ndarray,
    keys: np.ndarray,
    adj_start: np.ndarray,
    adj_len: np.ndarray,
    owner: np.ndarray,
    mark: np.ndarray,
    position: np.ndarray,
    scratch: np.ndarray,
    upper_a: np.ndarray,
    upper_b: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Alive neighbours of ``k`` (the union of ``a`` and ``b``) with the keys of their edges to a and b.

    Regions never change after creation, so an alive neighbour ``n`` touching ``a`` touched it
    when the younger of the two was created, and that one's segment holds the edge under the
    other's id: ``a``'s own segment when ``n`` is older (listed as ``n``), otherwise ``n``'s
    segment (found by scanning it, when ``a``'s slot names a region ``n`` absorbed since). The
    key stored there is the freshest knowledge of ``cos(a, n)``. Unknown sides are NaN.
    Returns the number of neighbours (in ``scratch``).
    """
    count = 0
    for side in range(2):
        source = a if side == 0 else b
        upper = upper_a if side == 0 else upper_b
        for q in range(adj_start[source], adj_start[source] + adj_len[source]):
            n = _find(owner, nbr[q])
            if n == k:
                continue
            if mark[n] != k:
                mark[n] = k
                position[n] = count
                scratch[count] = n
                upper_a[count] = np.nan
                upper_b[count] = np.nan
                count += 1
            slot = position[n]
            if not math.isnan(upper[slot]):
                continue
            if nbr[q] == n:
                upper[slot] = keys[q]
            else:
                held = _slot_of_neighbour(n, source, nbr, adj_start, adj_len)
                if held < 0:
                    raise RuntimeError("merge kernel: an edge of a younger neighbour is missing")
                upper[slot] = keys[held]
    return count


@numba.njit(cache=True)
def _compact(
    next_region: int,
    alive: np.ndarray,
    adj_start: np.ndarray,
    adj_len: np.ndarray,
    nbr: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    exact: np.ndarray,
    order: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Moves the segments of alive regions to the front of the pool (only they are read again).

    Segments lie in region-id order, so moving each one down in that order is safe. Returns the
    pool size used.
    """
    write = 0
    for r in range(next_region):
        if not alive[r]:
            continue
        read = adj_start[r]
        if read != write:
            for i in range(adj_len[r]):
                nbr[write + i] = nbr[read + i]
                keys[write + i] = keys[read + i]
                ranks[write + i] = ranks[read + i]
                exact[write + i] = exact[read + i]
                order[write + i] = order[read + i]
            adj_start[r] = write
        write += adj_len[r]
    return write


@numba.njit(cache=True, inline="always")
def _fill_segment(
    k: int,
    start: int,
    count: int,
    scratch: np.ndarray,
    upper_a: np.ndarray,
    upper_b: np.ndarray,
    weighted_norm_a: float,
    weighted_norm_b: float,
    cos_ab: float,
    areas: np.ndarray,
    norms: np.ndarray,
    floor: float,
    nbr: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    exact: np.ndarray,
    order: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Writes the edges of new region ``k`` at ``pool[start:]`` with bounded keys and heapifies them.

    Creation ranks are ``k * max_regions + n``: after every earlier edge, then by neighbour id
    (the tie rule). Returns the size of ``k``'s heap (edges that may ever merge).
    """
    max_regions = areas.shape[0]
    weighted_norm_k = np.float64(areas[k]) * norms[k]
    zero_k = not norms[k] > 0.0
    tiny_k = norms[k] < _TINY_NORM
    sin_ab = _sine(cos_ab)
    if not tiny_k:  # (zero_k implies tiny_k)
        # A loop of its own, without branches: vectorised (the bounds are most of the work
        # of a merge when a large region absorbs patches one by one).
        for i in range(count):
            keys[start + i] = _upper_similarity(
                upper_a[i], upper_b[i], weighted_norm_a, weighted_norm_b, weighted_norm_k, cos_ab, sin_ab
            )
    size = 0
    for i in range(count):
        n = scratch[i]
        slot = start + i
        nbr[slot] = n
        ranks[slot] = k * max_regions + n
        if zero_k or not norms[n] > 0.0:
            keys[slot] = 0.0  # similarity to a zero feature is 0 by definition
            exact[slot] = True
        else:
            if tiny_k:
                keys[slot] = 1.0 + _COS_SLACK
            exact[slot] = False
        if keys[slot] >= floor:
            order[start + size] = i
            size += 1
    for pos in range((size - 2) // _ARITY, -1, -1):
        _local_sift_down(order, keys, ranks, start, size, pos)
    return size


@numba.njit(cache=True, inline="always")
def _is_current(
    region: int,
    g_key: float,
    g_rank: int,
    alive: np.ndarray,
    adj_start: np.ndarray,
    heap_len: np.ndarray,
    order: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
) -> bool:  # pragma: no cover - compiled
    """Whether a global entry still describes the top edge of an alive region."""
    if not alive[region] or heap_len[region] == 0:
        return False
    top = adj_start[region] + order[adj_start[region]]
    return keys[top] == g_key and ranks[top] == g_rank


@numba.njit(cache=True, inline="always")
def _region_top(
    region: int,
    alive: np.ndarray,
    adj_start: np.ndarray,
    heap_len: np.ndarray,
    order: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    nbr: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Slot of the region's top edge after dropping edges whose other end was merged away; -1 if none."""
    start = adj_start[region]
    while heap_len[region] > 0:
        top = start + order[start]
        if alive[nbr[top]]:
            return top
        heap_len[region] -= 1
        order[start] = order[start + heap_len[region]]
        _local_sift_down(order, keys, ranks, start, heap_len[region], 0)
    return -1


@numba.njit(cache=True, inline="always")
def _weighted_mean(
    x: np.ndarray,
    i: int,
    weight_x: float,
    y: np.ndarray,
    j: int,
    weight_y: float,
    out: np.ndarray,
    row: int,
    wide: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """``out[row] = float32((w_x x[i] + w_y y[j]) / (w_x + w_y))`` per channel, in float64.

    The result also goes to ``wide`` (widened to float64) first: ``out[row]`` may be ``x[i]`` or
    ``y[j]`` itself, which keeps LLVM from vectorising a loop that writes ``out`` directly.
    """
    total = weight_x + weight_y
    for c in range(wide.shape[0]):
        wide[c] = np.float64(
            np.float32((weight_x * np.float64(x[i, c]) + weight_y * np.float64(y[j, c])) / total)
        )
    for c in range(wide.shape[0]):
        out[row, c] = np.float32(wide[c])


@numba.njit(cache=True, inline="always")
def _merge_features(
    a: int,
    b: int,
    k: int,
    features: np.ndarray,
    areas: np.ndarray,
    norms: np.ndarray,
    means: np.ndarray,
    slot_of: np.ndarray,
    free_slots: np.ndarray,
    num_free: int,
    wide: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Feature (the paper's ``f_k = (a_i f_i + a_j f_j) / (a_i + a_j)``), norm and slot of ``k``.

    Slots are recycled last-in first-out, so ``k`` usually takes the slot of ``a`` or ``b`` and
    is computed in place. ``k``'s feature is also left in ``wide`` (widened to float64). Returns
    the new number of free slots.
    """
    areas[k] = areas[a] + areas[b]
    slot_a, slot_b = slot_of[a], slot_of[b]
    for old_slot in (slot_a, slot_b):
        if old_slot >= 0:
            free_slots[num_free] = old_slot
            num_free += 1
    num_free -= 1
    slot = free_slots[num_free]
    slot_of[k] = slot
    weight_a = np.float64(areas[a])
    weight_b = np.float64(areas[b])
    num_patches = features.shape[0]
    if a < num_patches:
        if b < num_patches:
            _weighted_mean(features, a, weight_a, features, b, weight_b, means, slot, wide)
        else:
            _weighted_mean(features, a, weight_a, means, slot_b, weight_b, means, slot, wide)
    elif b < num_patches:
        _weighted_mean(means, slot_a, weight_a, features, b, weight_b, means, slot, wide)
    else:
        _weighted_mean(means, slot_a, weight_a, means, slot_b, weight_b, means, slot, wide)
    norms[k] = math.sqrt(_lane_dot(wide, 0, wide, 0))
    return num_free


@numba.njit(cache=True, nogil=True, _nrt=False)  # type: ignore[call-overload]  # numba's (private) option, tested
def _merge_levels(
    features: np.ndarray,
    thresholds: np.ndarray,
    means: np.ndarray,
    labels: np.ndarray,
    remap: np.ndarray,
    mark: np.ndarray,
    position: np.ndarray,
    scratch: np.ndarray,
    upper_a: np.ndarray,
    upper_b: np.ndarray,
    slot_of: np.ndarray,
    free_slots: np.ndarray,
    num_free: int,
    areas: np.ndarray,
    norms: np.ndarray,
    owner: np.ndarray,
    alive: np.ndarray,
    wide: np.ndarray,
    nbr: np.ndarray,
    keys: np.ndarray,
    ranks: np.ndarray,
    exact: np.ndarray,
    order: np.ndarray,
    adj_start: np.ndarray,
    adj_len: np.ndarray,
    heap_len: np.ndarray,
    pool_size: int,
    capacity: int,
    g_keys: np.ndarray,
    g_ranks: np.ndarray,
    g_regions: np.ndarray,
    g_size: int,
) -> None:  # pragma: no cover - compiled
    """The merging loop of :func:`_merge_kernel` over its preallocated state; writes ``labels``.

    Compiled without numba's reference counting (``_nrt=False``): it allocates nothing, and
    the arrays it receives outlive it. Reference counting of the arrays passed to the inlined
    helpers otherwise took about a third of the run time on flat grids.
    """
    num_patches = features.shape[0]
    floor = thresholds[-1]
    next_region = num_patches
    # The region whose feature row is in `wide` (widened to float64): the region being worked
    # on evaluates its edges one after another, each against that row.
    wide_region = -1
    last_evaluated = -1

    for level in range(thresholds.shape[0]):
        threshold = thresholds[level]
        # `region` is the region being worked on, taken off the global heap (or just created):
        # it is examined while its top edge beats the global top, so evaluating a bound or
        # dropping a dead edge does not cost a global push and pop. It is pushed back when
        # another region's entry comes first.
        region = -1
        while True:
            if region < 0:
                if g_size == 0:
                    break
                region, g_key, g_rank = g_regions[0], g_keys[0], g_ranks[0]
                g_size = _pop_global(g_keys, g_ranks, g_regions, g_size)
                if not _is_current(region, g_key, g_rank, alive, adj_start, heap_len, order, keys, ranks):
                    region = -1  # stale: merged away, or its top edge changed since the push
                    continue
            top = _region_top(region, alive, adj_start, heap_len, order, keys, ranks, nbr)
            if top < 0 or keys[top] < floor:
                region = -1  # nothing left that can ever merge
                continue
            start = adj_start[region]
            neighbour = nbr[top]
            behind = g_size > 0 and not _before(keys[top], ranks[top], g_keys[0], g_ranks[0])
            if behind or keys[top] < threshold:
                # Another region's entry comes first, or this is the best edge and it is below
                # the threshold (the level is done): put this region back.
                g_size = _push_region(
                    region, adj_start, heap_len, order, keys, ranks, floor, g_keys, g_ranks, g_regions, g_size
                )
                region = -1
                if behind:
                    continue
                break
            if not exact[top]:
                if wide_region != region and last_evaluated == region:
                    # A second evaluation in a row for this region: more are likely, widen its row.
                    if region < num_patches:
                        _widen(features, region, wide)
                    else:
                        _widen(means, slot_of[region], wide)
                    wide_region = region
                if wide_region == region:
                    keys[top] = _similarity_to_wide(
                        wide, norms[region], neighbour, features, means, slot_of, norms
                    )
                else:
                    keys[top] = _region_similarity(neighbour, region, features, means, slot_of, norms)
                last_evaluated = region
                exact[top] = True
                _local_sift_down(order, keys, ranks, start, heap_len[region], 0)
                continue

            # --- merge a and b into the new region k ---
            a, b, k = neighbour, region, next_region
            similarity_ab = keys[top]
            next_region += 1
            alive[a] = False
            alive[b] = False
            alive[k] = True
            owner[a] = k
            owner[b] = k
            num_free = _merge_features(
                a, b, k, features, areas, norms, means, slot_of, free_slots, num_free, wide
            )
            wide_region = k
            # A lower bound of the true cos(a, b) (-1: no direction when a feature is zero).
            cos_ab = -1.0
            if norms[a] > 0.0 and norms[b] > 0.0:
                cos_ab = max(-1.0, min(1.0, similarity_ab - _COS_SLACK))

            count = _union_neighbours(
                a, b, k, nbr, keys, adj_start, adj_len, owner, mark, position, scratch, upper_a, upper_b
            )
            if pool_size + count > capacity:
                # Never grows (see `capacity`): the live segments fit in half of the pool.
                pool_size = _compact(
                    next_region - 1, alive, adj_start, adj_len, nbr, keys, ranks, exact, order
                )
            adj_start[k] = pool_size
            adj_len[k] = count
            heap_len[k] = _fill_segment(
                k,
                pool_size,
                count,
                scratch,
                upper_a,
                upper_b,
                np.float64(areas[a]) * norms[a],
                np.float64(areas[b]) * norms[b],
                cos_ab,
                areas,
                norms,
                floor,
                nbr,
                keys,
                ranks,
                exact,
                order,
            )
            pool_size += count
            region = k
        _record(owner, num_patches, remap, labels[level])


@numba.njit(cache=True, nogil=True)
def _merge_kernel(
    features: np.ndarray, height: int, width: int, thresholds: np.ndarray, means: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Runs the merging on (H*W, C) float32 ``features``; ``thresholds`` sorted high to low.

    Every region owns one segment of a pool of edge slots, holding its neighbour list as it
    was when the region was created (see the module docstring); a region's own edges (for a
    patch: to its right and lower neighbours; for a merged region: to all its neighbours) form
    a binary heap inside its segment, and a global heap holds each region's top edge. Segments
    of merged-away regions are reclaimed by compacting the pool when it is full. Creation
    ranks are ``k * (2 H W - 1) + n`` for the edge of merged region ``k`` to neighbour ``n``
    (the same order as numbering edges one by one, without sorting the neighbour list).

    Compiled ``nogil``: threads clustering different grids run in parallel (the explore job's
    workers, :mod:`~.explore_workers`).

    Returns:
        (m, H*W) int32 labels, one row per threshold.
    """
    num_patches = height * width
    max_regions = 2 * num_patches - 1
    floor = thresholds[-1]
    num_slots = num_patches // 2 + 1  # = means.shape[0]
    slot_of = np.full(max_regions, -1, dtype=np.int32)
    free_slots = np.arange(num_slots - 1, -1, -1).astype(np.int32)
    num_free = num_slots
    areas = np.ones(max_regions, dtype=np.int64)
    norms = np.zeros(max_regions, dtype=np.float64)
    owner = np.arange(max_regions).astype(np.int32)
    alive = np.zeros(max_regions, dtype=np.bool_)
    alive[:num_patches] = True
    wide = np.empty(features.shape[1], dtype=np.float64)

    # A region lists at most one neighbour per patch edge of its boundary (<= 4 x its area), and
    # the alive regions partition the grid, so the live segments plus a new one never exceed
    # 4 H W slots: after compaction at least half of this pool is free, compaction is amortised
    # O(1) per slot, and the arrays are never reallocated (which also keeps numba from
    # reference counting them on every loop iteration).
    capacity = 8 * num_patches + 64
    nbr = np.empty(capacity, dtype=np.int32)
    keys = np.empty(capacity, dtype=np.float64)
    ranks = np.empty(capacity, dtype=np.int64)
    exact = np.empty(capacity, dtype=np.bool_)
    order = np.empty(capacity, dtype=np.int32)
    adj_start = np.zeros(max_regions, dtype=np.int32)
    adj_len = np.zeros(max_regions, dtype=np.int32)
    heap_len = np.zeros(max_regions, dtype=np.int32)
    pool_size = _initial_edges(
        features,
        height,
        width,
        wide,
        norms,
        floor,
        nbr,
        keys,
        ranks,
        exact,
        order,
        adj_start,
        adj_len,
        heap_len,
    )

    # Global heap of each region's top edge: at most one entry per region is pushed per pop,
    # so it never holds more than the patches' initial entries.
    g_keys = np.empty(num_patches, dtype=np.float64)
    g_ranks = np.empty(num_patches, dtype=np.int64)
    g_regions = np.empty(num_patches, dtype=np.int32)
    g_size = 0
    for p in range(num_patches):
        g_size = _push_region(
            p, adj_start, heap_len, order, keys, ranks, floor, g_keys, g_ranks, g_regions, g_size
        )

    labels = np.empty((thresholds.shape[0], num_patches), dtype=np.int32)
    remap = np.empty(max_regions, dtype=np.int64)
    mark = np.full(max_regions, -1, dtype=np.int32)
    position = np.zeros(max_regions, dtype=np.int32)
    scratch = np.empty(max_regions, dtype=np.int32)
    upper_a = np.empty(max_regions, dtype=np.float64)
    upper_b = np.empty(max_regions, dtype=np.float64)
    _merge_levels(
        features,
        thresholds,
        means,
        labels,
        remap,
        mark,
        position,
        scratch,
        upper_a,
        upper_b,
        slot_of,
        free_slots,
        num_free,
        areas,
        norms,
        owner,
        alive,
        wide,
        nbr,
        keys,
        ranks,
        exact,
        order,
        adj_start,
        adj_len,
        heap_len,
        pool_size,
        capacity,
        g_keys,
        g_ranks,
        g_regions,
        g_size,
    )
    return labels
