"""Mask toolkit: binary masks, COCO run-length encoding (RLE), areas, boxes, overlaps and NMS.

Every phase of SOHES handles large sets of masks: self-exploration pools hundreds of candidate
regions per image (paper section 3.1), the hierarchy tests pixel coverage between every pair
(section 3.1, step 4), and evaluation matches up to 1,000 predictions per image (section 4.1).
Decoding them all to full-resolution arrays is the slow path, so everything here works on COCO
RLE through pycocotools' C routines and decodes only when asked.

Conventions:
    * An RLE is ``{"size": [height, width], "counts": str}``: compressed counts as a JSON-safe
      ``str`` (pycocotools uses ``bytes``; both are accepted as input, ``str`` is returned).
    * Binary masks are ``bool`` arrays of shape (H, W), or (N, H, W) for a stack.
    * Boxes are XYWH in pixels, float64, as COCO writes them.

All functions are pure (no I/O) and raise :class:`ValueError` on malformed input.

This is the implementation; :mod:`sohes_hf.masks` is its public import path and re-exports it.
It lives in the ``modeling`` folder and imports nothing from ``sohes_hf`` because the image
processor and the pipeline use it: ``save_pretrained`` copies it flat into a model repository
so that ``trust_remote_code=True`` works without the package (see ``docs/inference.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

RLE = dict[str, Any]


def encode_mask(mask: np.ndarray) -> RLE:
    """Encodes one binary mask (H, W) as a compressed RLE with ``str`` counts."""
    array = _as_binary_stack(mask[None] if _ndim(mask) == 2 else mask, "mask")
    if array.shape[0] != 1:
        raise ValueError(f"mask: expected shape (H, W), got {np.shape(mask)}")
    return encode_masks(array)[0]


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """Encodes a stack of binary masks (N, H, W) as compressed RLEs with ``str`` counts."""
    stack = _as_binary_stack(masks, "masks")
    if stack.shape[0] == 0:
        return []
    fortran = np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8))
    return [_with_str_counts(rle) for rle in coco_mask.encode(fortran)]


def encode_rle_counts(counts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Compressed COCO counts strings of many RLEs at once, as pycocotools' ``rleToString``.

    Format: run ``i`` is written as ``x = counts[i] - counts[i - 2]`` for ``i > 2`` (else
    ``counts[i]``), in little-endian groups of 5 bits, each stored as ``chr(48 + group)`` with
    0x20 set when more groups follow; writing stops once the remaining bits are all equal to
    the sign bit (0x10) of the last group written. Vectorised over all runs of all RLEs, so
    encoding K masks costs a few numpy passes instead of K calls into pycocotools.

    Args:
        counts: (sum(lengths),) int64 run lengths of all RLEs, concatenated; each RLE starts with
            a (possibly empty) run of zeros, all other runs positive.
        lengths: (K,) number of runs of each RLE.

    Returns:
        K ASCII strings (``str``), identical to pycocotools' compressed counts.

    Raises:
        ValueError: ``lengths`` has a value below 1 or does not add up to ``counts``' size.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lengths.size and (lengths.min() < 1 or int(lengths.sum()) != counts.size):
        raise ValueError(f"lengths: expected values >= 1 adding up to {counts.size} runs")
    if lengths.size == 0:
        return []
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    local = np.arange(counts.size) - np.repeat(starts, lengths)
    values = counts.copy()
    delta = local > 2
    values[delta] -= counts[np.flatnonzero(delta) - 2]
    num_groups = np.zeros(values.size, dtype=np.int64)
    remaining = values.copy()
    pending = np.ones(values.size, dtype=bool)
    while pending.any():
        num_groups += pending
        group = remaining & 0x1F
        remaining >>= 5  # arithmetic shift, as on the signed long of rleToString
        more = np.where((group & 0x10) != 0, remaining != -1, remaining != 0)
        pending &= more
    value_of = np.repeat(np.arange(values.size), num_groups)
    index = np.arange(value_of.size) - np.repeat(np.cumsum(num_groups) - num_groups, num_groups)
    chars = (values[value_of] >> (5 * index)) & 0x1F
    chars |= np.where(index < num_groups[value_of] - 1, 0x20, 0)
    text = (chars + 48).astype(np.uint8).tobytes().decode("ascii")
    chars_per_rle = np.add.reduceat(num_groups, starts)
    ends = np.cumsum(chars_per_rle).tolist()
    begins = [0, *ends[:-1]]
    return [text[begin:end] for begin, end in zip(begins, ends, strict=True)]


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decodes one RLE (compressed or uncompressed) into a bool mask (H, W)."""
    return np.asarray(coco_mask.decode(_to_coco(rle, "rle")), dtype=bool)


def decode_masks(
    rles: Sequence[Mapping[str, Any]], height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Decodes RLEs into a bool stack (N, H, W).

    Args:
        rles: RLEs of one common size.
        height, width: the size, required when ``rles`` is empty (the result is then (0, H, W))
            and checked against the RLEs otherwise.
    """
    coco_rles = _to_coco_list(rles, "rles")
    if not coco_rles:
        if height is None or width is None:
            raise ValueError("decode_masks: height and width are required when rles is empty")
        return np.zeros((0, int(height), int(width)), dtype=bool)
    size = _common_size(coco_rles, "rles")
    if (height is not None and height != size[0]) or (width is not None and width != size[1]):
        raise ValueError(f"decode_masks: rles have size {size}, not the requested ({height}, {width})")
    return np.ascontiguousarray(coco_mask.decode(coco_rles).transpose(2, 0, 1).astype(bool))


def normalize_rle(rle: Mapping[str, Any]) -> RLE:
    """Returns the compressed, ``str``-counts form of any COCO RLE (compressed or uncompressed)."""
    return _with_str_counts(_to_coco(rle, "rle"))


def normalize_rles(rles: Sequence[Mapping[str, Any]], name: str = "rles") -> list[RLE]:
    """:func:`normalize_rle` for many RLEs at once, validated in one vectorised pass.

    Args:
        rles: compressed or uncompressed COCO RLEs (sizes may differ).
        name: how error messages name the sequence, e.g. ``"predictions[3]['masks']"``.
    """
    return [_with_str_counts(rle) for rle in _to_coco_list(rles, name)]


def compressed_rle_pixels(counts: Sequence[bytes], pixels: np.ndarray) -> np.ndarray:
    """Pixels (K,) int64 described by each compressed RLE counts string, -1 where malformed.

    One vectorised pass over all strings (validating a whole pseudo-label file at load time).

    Args:
        counts: compressed counts as ASCII ``bytes``.
        pixels: (K,) each string's height * width (a run longer than that is malformed).
    """
    return _run_length_totals(counts, pixels)


def mask_areas(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Pixel areas (N,) int64 of RLE masks."""
    return _areas(_to_coco_list(rles, "rles"))


def mask_boxes_xywh(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Tight XYWH boxes (N, 4) float64 of RLE masks; an empty mask gets (0, 0, 0, 0)."""
    coco_rles = _to_coco_list(rles, "rles")
    if not coco_rles:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(coco_mask.toBbox(coco_rles), dtype=np.float64).reshape(-1, 4)


def pairwise_iou(rles_a: Sequence[Mapping[str, Any]], rles_b: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """IoU (Na, Nb) float64 between every mask of ``rles_a`` and every mask of ``rles_b``.

    Two empty masks have IoU 0 (pycocotools' convention).
    """
    coco_a, coco_b = _pair_of_lists(rles_a, rles_b)
    if not coco_a or not coco_b:
        return np.zeros((len(coco_a), len(coco_b)), dtype=np.float64)
    return _iou(coco_a, coco_b, crowd=False)


def pairwise_coverage(rles_a: Sequence[Mapping[str, Any]], rles_b: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Coverage (Na, Nb) float64: the fraction |a ∩ b| / |a| of each mask a lying inside each b.

    This is the quantity of the hierarchy test (paper section 3.1, step 4). pycocotools' IoU
    against "crowd" regions is exactly intersection over the first argument's area, so no mask
    is decoded. An empty ``a`` has coverage 0 everywhere.
    """
    coco_a, coco_b = _pair_of_lists(rles_a, rles_b)
    if not coco_a or not coco_b:
        return np.zeros((len(coco_a), len(coco_b)), dtype=np.float64)
    return _iou(coco_a, coco_b, crowd=True)


def intersection_areas(
    rles_a: Sequence[Mapping[str, Any]], rles_b: Sequence[Mapping[str, Any]]
) -> np.ndarray:
    """Intersection areas (Na, Nb) int64 between every pair of masks, computed on RLE."""
    coco_a, coco_b = _pair_of_lists(rles_a, rles_b)
    if not coco_a or not coco_b:
        return np.zeros((len(coco_a), len(coco_b)), dtype=np.int64)
    areas_a = _areas(coco_a).astype(np.float64)
    # coverage * |a| is exact up to float rounding: areas are integers far below 2**52.
    return np.rint(_iou(coco_a, coco_b, crowd=True) * areas_a[:, None]).astype(np.int64)


def mask_nms(
    rles: Sequence[Mapping[str, Any]], scores: Sequence[float] | np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy mask non-maximum suppression.

    Masks are visited by decreasing score (equal scores: lower index first, so the result is
    deterministic); a mask is kept unless its IoU with an already kept mask exceeds
    ``iou_threshold``.

    Only pairs that can exceed the threshold are compared: IoU(a, b) <= min(|a|, |b|) / max(|a|,
    |b|), and it is 0 when the boxes are disjoint. So memory is O(N) and each kept mask costs one
    vectorised pass over the boxes plus the RLE overlaps of its few candidates, where a dense IoU
    matrix would need N^2 floats (1.2 million masks: 10 TiB).

    Returns:
        (K,) int64 indices of the kept masks, highest score first.
    """
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    coco_rles = _to_coco_list(rles, "rles")
    score_array = np.asarray(scores, dtype=np.float64)
    if score_array.shape != (len(coco_rles),):
        raise ValueError(f"scores: expected shape ({len(coco_rles)},), got {score_array.shape}")
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores: must be finite")
    if not coco_rles:
        return np.zeros(0, dtype=np.int64)
    _common_size(coco_rles, "rles")
    order = np.lexsort((np.arange(len(coco_rles)), -score_array))
    ordered = [coco_rles[i] for i in order]
    areas = _areas(ordered).astype(np.float64)
    boxes = np.asarray(coco_mask.toBbox(ordered), dtype=np.float64).reshape(-1, 4)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    threshold = float(iou_threshold)
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        kept.append(int(order[rank]))
        rest = slice(rank + 1, None)
        can_exceed = (
            ~suppressed[rest]
            & (np.minimum(areas[rest], areas[rank]) > threshold * np.maximum(areas[rest], areas[rank]))
            & (x0[rest] < x1[rank])
            & (x0[rank] < x1[rest])
            & (y0[rest] < y1[rank])
            & (y0[rank] < y1[rest])
        )
        candidates = rank + 1 + np.flatnonzero(can_exceed)
        if candidates.size:
            ious = _iou([ordered[rank]], [ordered[c] for c in candidates.tolist()], crowd=False)[0]
            suppressed[candidates[ious > threshold]] = True
    return np.asarray(kept, dtype=np.int64)


# --- validation and conversion helpers ---------------------------------------------------------


def _ndim(array: Any) -> int:
    return int(np.ndim(array))


def _as_binary_stack(masks: Any, name: str) -> np.ndarray:
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected shape (N, H, W), got {array.shape}")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "uif" or not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name}: expected a bool or 0/1 array, got dtype {array.dtype}")
        array = array.astype(bool)
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{name}: height and width must be positive, got {array.shape[1:]}")
    return array


def _with_str_counts(rle: Mapping[str, Any]) -> RLE:
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _to_coco(rle: Any, name: str) -> dict[str, Any]:
    """Validates one RLE and returns pycocotools' compressed form (``bytes`` counts)."""
    return _to_coco_list([rle], name, names=[name])[0]


def _to_coco_list(rles: Any, name: str, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Validates a sequence of RLEs and returns pycocotools' compressed forms (``bytes`` counts).

    Structure is checked one RLE at a time; the run lengths of all compressed strings are then
    checked in one vectorised pass (one string at a time costs ~0.3 ms per mask, more than the
    overlap computations that follow).
    """
    if isinstance(rles, Mapping) or not isinstance(rles, Sequence):
        raise ValueError(f"{name}: expected a sequence of RLE dicts, got {type(rles).__name__}")
    names = names if names is not None else [f"{name}[{index}]" for index in range(len(rles))]
    checked = [_structurally_checked(rle, item) for rle, item in zip(rles, names, strict=True)]
    compressed = [index for index, (_, needs_check) in enumerate(checked) if needs_check]
    if compressed:
        pixels = np.array([checked[i][0]["size"][0] * checked[i][0]["size"][1] for i in compressed])
        totals = _run_length_totals([checked[index][0]["counts"] for index in compressed], pixels)
        for index, total in zip(compressed, totals, strict=True):
            height, width = checked[index][0]["size"]
            if total != height * width:
                raise ValueError(
                    f"{names[index]}: compressed RLE counts do not describe {height}x{width} pixels"
                )
    return [rle for rle, _ in checked]


def _structurally_checked(rle: Any, name: str) -> tuple[dict[str, Any], bool]:
    """Checks keys, size and counts type; converts uncompressed counts (checking their sum).

    Returns:
        The compressed RLE, and whether its counts still need the run-length check.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(
            f"{name}: expected a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}"
        )
    size = rle["size"]
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name}: 'size' must be [height, width] with positive ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError as error:
            raise ValueError(f"{name}: compressed RLE counts must be ASCII") from error
    if isinstance(counts, bytes):
        return {"size": [height, width], "counts": counts}, True
    if isinstance(counts, (list, tuple, np.ndarray)):
        values = np.asarray(counts)
        if values.ndim != 1 or values.dtype.kind not in "iu" or (values < 0).any():
            raise ValueError(f"{name}: uncompressed 'counts' must be non-negative integers")
        if int(values.sum()) != height * width:
            raise ValueError(
                f"{name}: uncompressed 'counts' sum to {int(values.sum())}, not height*width={height * width}"
            )
        uncompressed = {"size": [height, width], "counts": values.tolist()}
        return dict(coco_mask.frPyObjects(uncompressed, height, width)), False
    raise ValueError(f"{name}: 'counts' must be str, bytes or a list of ints, got {type(counts).__name__}")


# Strings are decoded in chunks of about this many characters: every temporary array then
# stays under glibc's mmap threshold (128 KiB of int64) and in cache, instead of being mapped,
# zero-filled and unmapped anew (3-4x faster than one pass over a whole file's counts; see
# benchmarks/benchmark_label_checks.py).
_RLE_CHUNK_CHARS = 1 << 15


def _run_length_totals(counts: Sequence[bytes], pixels: np.ndarray) -> np.ndarray:
    """Pixels (K,) int64 described by each compressed counts string; -1 where it is malformed.

    The format (pycocotools ``rleToString``): each run is a little-endian sequence of 5-bit
    groups stored as ``chr(48 + group)``, bit 0x20 meaning "more groups follow" and bit 0x10 of
    the last group the sign; from the fourth run on, runs are coded as deltas to the run two
    places earlier. pycocotools itself reads malformed strings silently into garbage masks.
    ``pixels`` (K,), each string's height*width, also refuses any run or delta larger than the
    image, which keeps the sums below far from int64 overflow. Strings are independent, so they
    are decoded a chunk at a time (see ``_RLE_CHUNK_CHARS``).
    """
    counts = list(counts)
    num_strings = len(counts)
    pixels = np.asarray(pixels, dtype=np.int64)
    lengths = np.fromiter((len(c) for c in counts), dtype=np.int64, count=num_strings)
    totals = np.zeros(num_strings, dtype=np.int64)
    ends = np.cumsum(lengths)
    start = 0
    while start < num_strings:
        before = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, before + _RLE_CHUNK_CHARS, side="right"))
        stop = min(max(stop, start + 1), num_strings)
        totals[start:stop] = _chunk_run_length_totals(
            counts[start:stop], lengths[start:stop], pixels[start:stop]
        )
        start = stop
    return totals


def _chunk_run_length_totals(counts: Sequence[bytes], lengths: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """:func:`_run_length_totals` of a few strings, vectorised over their characters and runs."""
    num_strings = len(counts)
    totals = np.zeros(num_strings, dtype=np.int64)
    if int(lengths.sum()) == 0:
        return totals
    groups = np.frombuffer(b"".join(counts), dtype=np.uint8) - np.uint8(48)  # wraps: below "0" is > 63
    string_of_char = np.repeat(np.arange(num_strings), lengths)
    malformed = np.zeros(num_strings, dtype=bool)
    malformed[string_of_char[groups > 63]] = True
    ends = np.cumsum(lengths)[lengths > 0] - 1
    is_last = (groups & 0x20) == 0
    # A string ending in "more groups follow" is cut; forcing a run end there keeps its last
    # run from spilling into the next string.
    malformed[string_of_char[ends[~is_last[ends]]]] = True
    is_last[ends] = True
    last = np.flatnonzero(is_last)
    starts = np.empty_like(last)
    starts[0] = 0
    starts[1:] = last[:-1] + 1
    run_length = last - starts + 1
    malformed[string_of_char[starts[run_length > 12]]] = True  # over 60 bits: not a run length
    payload = (groups & 0x1F).astype(np.int64)
    values = payload[starts]
    longer = np.flatnonzero(run_length > 1)  # most runs are one or two groups long
    for group in range(1, 12):
        if longer.size == 0:
            break
        values[longer] += payload[starts[longer] + group] << (5 * group)
        longer = longer[run_length[longer] > group + 1]
    negative = np.flatnonzero((groups[last] & 0x10) != 0)
    values[negative] -= np.left_shift(1, 5 * np.minimum(run_length[negative], 12))
    string_of_run = string_of_char[starts]
    too_big = np.abs(values) > pixels[string_of_run]
    malformed[string_of_run[too_big]] = True
    values[too_big] = 0
    # Undo the delta coding, runs[j] = values[j] + runs[j - 2] for j >= 3: cumulative sums over
    # each parity class of the run index, rebased at each string's first run (run 0 stands
    # alone; the odd chain starts at run 1, the even one at run 2).
    num_runs = values.size
    cumulative = np.empty_like(values)
    cumulative[0::2] = np.cumsum(values[0::2])
    cumulative[1::2] = np.cumsum(values[1::2])
    has_runs = np.bincount(string_of_run, minlength=num_strings) > 0
    first_run = np.minimum(np.searchsorted(string_of_run, np.arange(num_strings)), num_runs - 1)
    before_odd = np.concatenate(([0], cumulative))[first_run]  # cumulative[first - 1]
    before_even = cumulative[first_run]  # cumulative[first]: run 0 is not in the even chain
    odd = ((np.arange(num_runs) - first_run[string_of_run]) & 1).astype(bool)
    runs = cumulative - np.where(odd, before_odd[string_of_run], before_even[string_of_run])
    firsts = first_run[has_runs]
    runs[firsts] = values[firsts]
    malformed[string_of_run[runs < 0]] = True
    totals[has_runs] = np.add.reduceat(runs, firsts)
    totals[malformed] = -1
    return totals


def _areas(coco_rles: list[dict[str, Any]]) -> np.ndarray:
    """Areas in chunks of 255: pycocotools 2.0.11's ``area`` overflows on 256 or more RLEs."""
    chunks = [coco_mask.area(coco_rles[start : start + 255]) for start in range(0, len(coco_rles), 255)]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)


def _common_size(coco_rles: Sequence[dict[str, Any]], name: str) -> tuple[int, int]:
    sizes = {tuple(rle["size"]) for rle in coco_rles}
    if len(sizes) != 1:
        raise ValueError(f"{name}: masks have different sizes {sorted(sizes)}")
    height, width = next(iter(sizes))
    return int(height), int(width)


def _pair_of_lists(
    rles_a: Sequence[Mapping[str, Any]], rles_b: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    coco_a = _to_coco_list(rles_a, "rles_a")
    coco_b = coco_a if rles_b is rles_a else _to_coco_list(rles_b, "rles_b")  # self-overlap: check once
    if coco_a and coco_b and _common_size(coco_a, "rles_a") != _common_size(coco_b, "rles_b"):
        raise ValueError(
            f"rles_a and rles_b have different sizes: {coco_a[0]['size']} vs {coco_b[0]['size']}"
        )
    return coco_a, coco_b


def _iou(coco_a: list[dict[str, Any]], coco_b: list[dict[str, Any]], crowd: bool) -> np.ndarray:
    result = coco_mask.iou(coco_a, coco_b, [int(crowd)] * len(coco_b))
    return np.asarray(result, dtype=np.float64).reshape(len(coco_a), len(coco_b))
