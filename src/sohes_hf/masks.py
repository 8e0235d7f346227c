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


def mask_areas(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Pixel areas (N,) int64 of RLE masks."""
    coco_rles = _to_coco_list(rles, "rles")
    if not coco_rles:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(coco_mask.area(coco_rles), dtype=np.int64)


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
    areas_a = np.asarray(coco_mask.area(coco_a), dtype=np.float64)
    # coverage * |a| is exact up to float rounding: areas are integers far below 2**52.
    return np.rint(_iou(coco_a, coco_b, crowd=True) * areas_a[:, None]).astype(np.int64)


def mask_nms(
    rles: Sequence[Mapping[str, Any]], scores: Sequence[float] | np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy mask non-maximum suppression.

    Masks are visited by decreasing score (equal scores: lower index first, so the result is
    deterministic); a mask is kept unless its IoU with an already kept mask exceeds
    ``iou_threshold``.

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
    ious = _iou([coco_rles[i] for i in order], [coco_rles[i] for i in order], crowd=False)
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        kept.append(int(order[rank]))
        suppressed |= ious[rank] > iou_threshold
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
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(
            f"{name}: expected a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}"
        )
    size = rle["size"]
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)
    ):
        raise ValueError(f"{name}: 'size' must be [height, width] with positive ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        compressed = {"size": [height, width], "counts": counts}
        _check_compressed(compressed, name)
        return compressed
    if isinstance(counts, (list, tuple, np.ndarray)):
        values = np.asarray(counts)
        if values.ndim != 1 or values.dtype.kind not in "iu" or (values < 0).any():
            raise ValueError(f"{name}: uncompressed 'counts' must be non-negative integers")
        if int(values.sum()) != height * width:
            raise ValueError(
                f"{name}: uncompressed 'counts' sum to {int(values.sum())}, not height*width={height * width}"
            )
        return dict(
            coco_mask.frPyObjects({"size": [height, width], "counts": values.tolist()}, height, width)
        )
    raise ValueError(f"{name}: 'counts' must be str, bytes or a list of ints, got {type(counts).__name__}")


def _check_compressed(rle: dict[str, Any], name: str) -> None:
    """Rejects compressed counts that do not describe exactly height*width pixels.

    pycocotools reads malformed strings without complaint (into garbage masks), so the run
    lengths are decoded here, vectorised, and their total compared with the image size.
    """
    height, width = rle["size"]
    if _run_length_total(rle["counts"]) != height * width:
        raise ValueError(f"{name}: compressed RLE counts do not describe {height}x{width} pixels")


def _run_length_total(counts: bytes) -> int:
    """Sums the run lengths of a compressed COCO RLE string; -1 when it is malformed.

    The format (pycocotools ``rleToString``): each run is a little-endian sequence of 5-bit
    groups stored as ``chr(48 + group)``, bit 0x20 meaning "more groups follow" and bit 0x10 of
    the last group the sign; from the fourth run on, runs are coded as deltas to the run two
    places earlier.
    """
    if not counts:
        return 0
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if (chars < 0).any() or (chars > 63).any() or chars[-1] & 0x20:
        return -1
    is_last = (chars & 0x20) == 0
    run_index = np.concatenate(([0], np.cumsum(is_last)[:-1]))
    run_starts = np.flatnonzero(np.concatenate(([True], is_last[:-1])))
    group_position = np.arange(len(chars)) - run_starts[run_index]
    if group_position.max() > 11:  # more than 60 bits: not a run length
        return -1
    values = np.zeros(int(is_last.sum()), dtype=np.int64)
    np.add.at(values, run_index, (chars & 0x1F) << (5 * group_position))
    last_chars = chars[is_last]
    last_positions = group_position[is_last]
    negative = (last_chars & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (last_positions[negative] + 1))
    runs = values.copy()
    for first in (1, 2):  # runs[k] = values[k] + runs[k - 2] for k > 2: two interleaved cumsums
        if len(runs) > first + 2:
            runs[first + 2 :: 2] = runs[first] + np.cumsum(values[first + 2 :: 2])
    if (runs < 0).any():
        return -1
    return int(runs.sum())


def _to_coco_list(rles: Any, name: str) -> list[dict[str, Any]]:
    if isinstance(rles, Mapping) or not isinstance(rles, Sequence):
        raise ValueError(f"{name}: expected a sequence of RLE dicts, got {type(rles).__name__}")
    return [_to_coco(rle, f"{name}[{index}]") for index, rle in enumerate(rles)]


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
    coco_b = _to_coco_list(rles_b, "rles_b")
    if coco_a and coco_b and _common_size(coco_a, "rles_a") != _common_size(coco_b, "rles_b"):
        raise ValueError(
            f"rles_a and rles_b have different sizes: {coco_a[0]['size']} vs {coco_b[0]['size']}"
        )
    return coco_a, coco_b


def _iou(coco_a: list[dict[str, Any]], coco_b: list[dict[str, Any]], crowd: bool) -> np.ndarray:
    result = coco_mask.iou(coco_a, coco_b, [int(crowd)] * len(coco_b))
    return np.asarray(result, dtype=np.float64).reshape(len(coco_a), len(coco_b))
