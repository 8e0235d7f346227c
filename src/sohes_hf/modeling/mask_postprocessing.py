"""Mask logits -> binary RLE masks, areas and scores at the target size, computed in windows.

SOHES predicts each entity's mask as Mask2Former does (paper section 3.2, appendix A): a low-res
logit map (1/4 of the padded input). Post-processing follows detectron2's Mask2Former instance
inference: bilinear upsampling (``align_corners=False``) to the padded input size, crop of the
valid (non-padding) region, bilinear resize to the original image (target) size, binarisation at
logit > 0, and ``score = class probability x mean(sigmoid(logits) over the binary mask)``.

Doing that at full size costs one 1024 x 1024 float map per query, although most entities cover a
small part of the image. Bilinear interpolation makes each output pixel a convex combination of
at most 2 x 2 source pixels, so an output pixel can only be positive where one of its source taps
is positive: every positive pixel lies in the upsampled, slightly dilated bounding box of the
query's positive low-res pixels. This module computes both resizes only inside that window and
builds the full-size RLE directly from the window's column-major runs.

Exactness: window pixels are computed with the same taps and weights as PyTorch's CPU bilinear
kernel (``upsample_bilinear2d``: source index ``scale * (i + 0.5) - 0.5`` clamped at 0, weights
``1 - lambda`` and ``lambda``) and the same fused multiply-add grouping (``torch.addcmul``). On
the torch 2.14 AVX2 CPU build they equal ``F.interpolate`` bit for bit in the geometries that
matter here (checked: 256 -> 1024 and 1000, 683 -> 1500, 1024 -> 2250, 1000 -> 600); in some small
downscales (e.g. 37 -> 20 rows) the kernel's vectorised loops round differently and values differ
by a few ulp (< 1e-6 relative), as they do on other builds or on CUDA. Only a logit within a few
ulp of 0 can then binarise differently. Pixels outside the window are exactly <= 0 (all their
taps are <= 0 and the weights are >= 0). Scores sum the sigmoid in float64 (the full-size path
summed in float32): they agree to ~1e-7.

This file imports only the standard library, numpy, torch and pycocotools (it is copied flat
into Hub repositories for ``trust_remote_code`` loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask

__all__ = ["TargetMasks", "binarize_mask_logits"]


@dataclass
class TargetMasks:
    """Binary masks kept by :func:`binarize_mask_logits`, in ascending query order.

    Attributes:
        query_indices: (K,) int64 positions of the kept masks in the input ``mask_logits``.
        rles: K COCO RLEs ``{"size": [height, width], "counts": str}`` at the target size.
        areas: (K,) int64 pixel counts of the binary masks.
        scores: (K,) float64 ``class_prob * mean(sigmoid(logit))`` over each binary mask.
        boxes: (K, 4) float64 tight boxes XYWH in target pixels, as COCO / ``pycocotools.mask.toBbox``
            give them (``width = x_max - x_min + 1``); read off the window, no RLE decoding.
    """

    query_indices: np.ndarray
    rles: list[dict[str, Any]]
    areas: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class _Taps:
    """Source taps of a 1-D bilinear resize (``align_corners=False``), one entry per output pixel.

    ``out[i] = src[index0[i]] * weight0[i] + src[index1[i]] * weight1[i]`` with ``index1`` equal to
    ``index0 + 1`` except at the last source pixel. Both index arrays are non-decreasing.
    """

    index0: np.ndarray
    index1: np.ndarray
    weight0: np.ndarray
    weight1: np.ndarray


def _linear_taps(in_size: int, out_size: int) -> _Taps:
    """Taps and weights of PyTorch's bilinear kernel for ``in_size`` -> ``out_size`` pixels.

    The scale is ``float32(in) / out``; the source coordinate ``scale * (i + 0.5) - 0.5`` is one
    fused multiply-add in the kernel (rounded once to float32, reproduced here in float64, where
    the product is exact), clamped at 0 and truncated to the first tap.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    real = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    real = np.maximum(real, np.float32(0.0))
    index0 = np.minimum(real.astype(np.int64), in_size - 1)
    lam = np.clip(real - index0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
    return _Taps(
        index0=index0,
        index1=index1,
        weight0=(np.float32(1.0) - lam).astype(np.float32),
        weight1=lam,
    )


def _support(taps: _Taps, first: int, last: int, limit: int) -> tuple[int, int]:
    """Output range ``[lo, hi]`` (within ``[0, limit)``) whose taps reach source ``[first, last]``.

    Output ``i`` touches the range iff ``index1[i] >= first`` and ``index0[i] <= last`` (the two
    taps are adjacent); both arrays are sorted, so this is two binary searches. ``lo > hi`` when
    nothing is reached.
    """
    lo = int(np.searchsorted(taps.index1[:limit], first, side="left"))
    hi = int(np.searchsorted(taps.index0[:limit], last, side="right")) - 1
    return lo, hi


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (``torch.addcmul`` is a fused multiply-add on CPU).

    ``b`` broadcasts against ``a``, which has the shape of ``c``.
    """
    return torch.addcmul(torch.from_numpy(c), torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _resize_window(
    source: np.ndarray,
    source_origin: tuple[int, int],
    rows: _Taps,
    cols: _Taps,
    row_range: tuple[int, int],
    col_range: tuple[int, int],
) -> np.ndarray:
    """Output pixels ``rows row_range[0]..row_range[1]`` x ``cols col_range[0]..col_range[1]``.

    ``source`` (float32) is a window of the input whose top-left pixel is ``source_origin``; it
    must cover every tap of the requested output. Width first, then height, each as
    ``fma(x0, w0, x1 * w1)``: the grouping of PyTorch's CPU kernel. Numpy does the gathers and
    products (small arrays: far less per-call overhead than torch ops), torch the fused adds.
    """
    r0, r1 = row_range[0], row_range[1] + 1
    c0, c1 = col_range[0], col_range[1] + 1
    oy, ox = source_origin
    top = rows.index0[r0:r1] - oy
    bottom = rows.index1[r0:r1] - oy
    # Only the source rows the output reads, then interpolate along the width. np.take keeps
    # the results C-contiguous (fancy indexing on axis 1 returns a transposed layout that makes
    # the row gathers below ~20x slower).
    first = int(top[0])
    part = source[first : int(bottom[-1]) + 1]
    right = np.take(part, cols.index1[c0:c1] - ox, axis=1)
    right *= cols.weight1[c0:c1]
    horizontal = _fma(np.take(part, cols.index0[c0:c1] - ox, axis=1), cols.weight0[c0:c1], right)
    lower = np.take(horizontal, bottom - first, axis=0)
    lower *= rows.weight1[r0:r1, None]
    return _fma(np.take(horizontal, top - first, axis=0), rows.weight0[r0:r1, None], lower)


def _encode_window(window: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> dict[str, Any]:
    """COCO RLE (``str`` counts) of a (H, W) mask that is zero outside ``window`` at ``origin``.

    Small windows: runs taken from the window (:func:`_window_rle`, cost ~ window area). Windows
    covering a quarter of the image or more: the window is placed into a zero Fortran-order
    canvas and ``pycocotools.mask.encode`` runs over it (a fixed ~0.5 ms per megapixel, cheaper
    than the run search there). Both give the same string.
    """
    height, width = size
    if 4 * window.size < height * width:
        return _window_rle(window, origin, size)
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    canvas[origin[0] : origin[0] + window.shape[0], origin[1] : origin[1] + window.shape[1]] = window
    rle = coco_mask.encode(canvas)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _window_rle(window: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> dict[str, Any]:
    """COCO RLE of a (H, W) mask that is zero outside ``window`` placed at ``origin`` (y, x).

    COCO RLE runs over the column-major flattening, so the window's columns are padded with one
    zero above and below, runs of ones are found there, moved to full-size positions
    (``column * H + row``) and merged where a run reaches the bottom of one column and the next
    starts at the top of the following column. pycocotools compresses the counts: the string is
    the one ``pycocotools.mask.encode`` gives for the full-size mask (checked in the tests).
    """
    if not window.any():
        raise ValueError("window: expected at least one positive pixel")
    height, width = size
    y0, x0 = origin
    rows = window.shape[0]
    padded = np.zeros((window.shape[1], rows + 2), dtype=np.int8)
    padded[:, 1:-1] = window.T
    steps = np.diff(padded.ravel())
    starts = np.flatnonzero(steps == 1) + 1
    ends = np.flatnonzero(steps == -1) + 1
    stride = rows + 2
    starts = (x0 + starts // stride) * height + y0 + starts % stride - 1
    ends = (x0 + ends // stride) * height + y0 + ends % stride - 1
    joined = ends[:-1] == starts[1:]
    if joined.any():
        starts = starts[np.concatenate(([True], ~joined))]
        ends = ends[np.concatenate((~joined, [True]))]
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    if counts[-1] == 0:
        counts = counts[:-1]
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def binarize_mask_logits(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
    threshold: float,
) -> TargetMasks:
    """Binary masks, areas and scores at the target size of the queries that pass ``threshold``.

    Equivalent to upsampling every query at full size (``F.interpolate`` to ``padded_size``, crop
    to ``valid_size``, ``F.interpolate`` to ``target_size``, as detectron2's Mask2Former does)
    followed by ``logit > 0``, ``area = sum``,
    ``score = class_prob * mean(sigmoid(logit) over the mask)`` and keeping non-empty masks with
    ``score >= threshold`` (detectron2's Mask2Former instance scores, paper section 3.2), but
    every query is resized only inside the window that can hold positive pixels (module
    docstring). CUDA inputs are copied to the CPU first: the low-res logits are small, and the
    windows, sigmoid sums and RLE runs are many small operations that the CPU does without
    kernel launches or synchronisation.

    Args:
        mask_logits: (Q, h, w) low-res mask logits (any float dtype, any device).
        class_probs: (Q,) entity probabilities.
        padded_size: (H_pad, W_pad) model input size the logits correspond to.
        valid_size: (H_valid, W_valid) top-left region of the padded input holding the image.
        target_size: (H, W) output size.
        threshold: Minimum score.

    Returns:
        The kept masks, in ascending query order.

    Raises:
        ValueError: On inconsistent shapes or sizes.
    """
    if mask_logits.ndim != 3:
        raise ValueError(f"mask_logits: expected (Q, h, w), got {tuple(mask_logits.shape)}")
    if tuple(class_probs.shape) != (mask_logits.shape[0],):
        raise ValueError(f"class_probs: expected ({mask_logits.shape[0]},), got {tuple(class_probs.shape)}")
    _check_sizes(padded_size, valid_size, target_size)
    logits = mask_logits.detach().to(device="cpu", dtype=torch.float32).contiguous()
    probs = class_probs.detach().to(device="cpu", dtype=torch.float64).numpy()
    height, width = int(target_size[0]), int(target_size[1])
    valid_height, valid_width = int(valid_size[0]), int(valid_size[1])
    up_rows = _linear_taps(logits.shape[1], int(padded_size[0]))
    up_cols = _linear_taps(logits.shape[2], int(padded_size[1]))
    resize = (valid_height, valid_width) != (height, width)
    # A same-size half-pixel bilinear resize samples every pixel at its own centre: identity.
    down_rows = _linear_taps(valid_height, height) if resize else None
    down_cols = _linear_taps(valid_width, width) if resize else None

    return _binarize_windows(
        logits, probs, up_rows, up_cols, down_rows, down_cols, valid_size, target_size, threshold
    )


def _binarize_windows(
    logits: torch.Tensor,
    probs: np.ndarray,
    up_rows: _Taps,
    up_cols: _Taps,
    down_rows: _Taps | None,
    down_cols: _Taps | None,
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
    threshold: float,
) -> TargetMasks:
    """The per-query loop of :func:`binarize_mask_logits` (CPU float32 logits, taps built)."""
    low_height, low_width = logits.shape[1], logits.shape[2]
    height, width = int(target_size[0]), int(target_size[1])
    valid_height, valid_width = int(valid_size[0]), int(valid_size[1])
    # Rows / columns of each low-res map holding a positive logit (max > 0; cheaper than a
    # boolean copy of all maps).
    row_any = (logits.amax(dim=2) > 0).numpy()
    col_any = (logits.amax(dim=1) > 0).numpy()
    has_positive = row_any.any(axis=1)
    first_row = row_any.argmax(axis=1)
    last_row = low_height - 1 - row_any[:, ::-1].argmax(axis=1)
    first_col = col_any.argmax(axis=1)
    last_col = low_width - 1 - col_any[:, ::-1].argmax(axis=1)

    sources = logits.numpy()
    kept: list[int] = []
    rles: list[dict[str, Any]] = []
    areas: list[int] = []
    scores: list[float] = []
    boxes: list[tuple[int, int, int, int]] = []
    for query in np.flatnonzero(has_positive).tolist():
        # Padded-size pixels (inside the valid region) that can be positive.
        ya, yb = _support(up_rows, int(first_row[query]), int(last_row[query]), valid_height)
        xa, xb = _support(up_cols, int(first_col[query]), int(last_col[query]), valid_width)
        if ya > yb or xa > xb:
            continue
        if down_rows is not None and down_cols is not None:
            ty = _support(down_rows, ya, yb, height)
            tx = _support(down_cols, xa, xb, width)
            if ty[0] > ty[1] or tx[0] > tx[1]:
                continue
            # The padded-size pixels the target window reads, then the target window.
            ya, yb = int(down_rows.index0[ty[0]]), int(down_rows.index1[ty[1]])
            xa, xb = int(down_cols.index0[tx[0]]), int(down_cols.index1[tx[1]])
            up = _resize_window(sources[query], (0, 0), up_rows, up_cols, (ya, yb), (xa, xb))
            window = _resize_window(up, (ya, xa), down_rows, down_cols, ty, tx)
            origin = (ty[0], tx[0])
        else:
            window = _resize_window(sources[query], (0, 0), up_rows, up_cols, (ya, yb), (xa, xb))
            origin = (ya, xa)
        binary = window > 0
        area = int(np.count_nonzero(binary))
        if area == 0:
            continue
        # Sum in float64 (the full-size path summed float32 over the whole image).
        prob_sum = float(torch.from_numpy(window[binary]).sigmoid().sum(dtype=torch.float64))
        score = float(probs[query]) * prob_sum / area
        if score < threshold:
            continue
        kept.append(query)
        rles.append(_encode_window(binary, origin, (height, width)))
        areas.append(area)
        scores.append(score)
        boxes.append(_window_box(binary, origin))
    return TargetMasks(
        query_indices=np.asarray(kept, dtype=np.int64),
        rles=rles,
        areas=np.asarray(areas, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
    )


def _window_box(window: np.ndarray, origin: tuple[int, int]) -> tuple[int, int, int, int]:
    """Tight XYWH box (target pixels) of the positive pixels of a non-empty window at ``origin``."""
    rows = np.flatnonzero(window.any(axis=1))
    cols = np.flatnonzero(window.any(axis=0))
    return (
        origin[1] + int(cols[0]),
        origin[0] + int(rows[0]),
        int(cols[-1] - cols[0]) + 1,
        int(rows[-1] - rows[0]) + 1,
    )


def _check_sizes(
    padded_size: tuple[int, int], valid_size: tuple[int, int], target_size: tuple[int, int]
) -> None:
    """Raises ValueError unless all sizes are positive pairs and ``valid_size`` fits the padding."""
    for name, size in (
        ("padded_size", padded_size),
        ("valid_size", valid_size),
        ("target_size", target_size),
    ):
        if len(size) != 2 or any(int(side) < 1 for side in size):
            raise ValueError(f"{name}: expected positive (height, width), got {tuple(size)}")
    if valid_size[0] > padded_size[0] or valid_size[1] > padded_size[1]:
        raise ValueError(f"valid_size: {tuple(valid_size)} exceeds padded_size {tuple(padded_size)}")
