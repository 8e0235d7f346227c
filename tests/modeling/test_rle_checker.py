"""The chunked RLE run-length checker equals the one-pass checker it replaced (issue 15, item 2).

The reference below is the previous implementation of ``_run_length_totals``, copied unchanged
(only its docstring shortened); valid strings are also checked against pycocotools' decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sohes_hf.modeling import masks as masks_module
from sohes_hf.modeling.masks import compressed_rle_pixels


def _reference_totals(counts: Sequence[bytes], pixels: np.ndarray | None = None) -> np.ndarray:
    """The one-pass checker that the chunked one replaced (sohes-hf before issue 15, item 2)."""
    num_strings = len(counts)
    lengths = np.fromiter((len(c) for c in counts), dtype=np.int64, count=num_strings)
    totals = np.zeros(num_strings, dtype=np.int64)
    if lengths.sum() == 0:
        return totals
    chars = np.frombuffer(b"".join(counts), dtype=np.uint8).astype(np.int64) - 48
    string_of_char = np.repeat(np.arange(num_strings), lengths)
    bad = (chars < 0) | (chars > 63)
    chars = np.clip(chars, 0, 63)
    ends = np.cumsum(lengths)[lengths > 0] - 1
    # A string ending in "more groups follow" is truncated; forcing a run end there keeps its
    # last run from spilling into the next string.
    bad[ends] |= (chars[ends] & 0x20) != 0
    is_last = (chars & 0x20) == 0
    is_last[ends] = True
    run_starts = np.flatnonzero(np.concatenate(([True], is_last[:-1])))
    run_of_char = np.cumsum(np.concatenate(([False], is_last[:-1])))
    position = np.arange(chars.size) - run_starts[run_of_char]
    bad |= position > 11  # over 60 bits: not a run length
    position = np.minimum(position, 11)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), run_starts)
    last = np.flatnonzero(is_last)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (position[last][negative] + 1))
    string_of_run = string_of_char[run_starts]
    malformed = np.bincount(string_of_char, weights=bad, minlength=num_strings) > 0
    if pixels is not None:
        too_big = np.abs(values) > pixels[string_of_run]
        malformed |= np.bincount(string_of_run, weights=too_big, minlength=num_strings) > 0
        values = np.where(too_big, 0, values)
    # Undo the delta coding: runs[j] = values[j] + runs[j - 2] for j >= 3, i.e. cumulative sums
    # along three chains per string: j = 0, odd j, and even j >= 2 (global cumsums, rebased at
    # each string's first run).
    has_runs = np.bincount(string_of_run, minlength=num_strings) > 0
    first_run = np.searchsorted(string_of_run, np.arange(num_strings))
    local = np.arange(values.size) - first_run[string_of_run]
    odd = (local % 2) == 1
    even = (local >= 2) & ~odd
    runs = values.copy()
    for chain in (odd, even):
        cumulative = np.cumsum(np.where(chain, values, 0))
        before = np.concatenate(([0], cumulative))[first_run]  # chain sum before each string
        runs[chain] = (cumulative - before[string_of_run])[chain]
    malformed |= np.bincount(string_of_run, weights=runs < 0, minlength=num_strings) > 0
    totals[has_runs] = np.add.reduceat(runs, first_run[has_runs])
    totals[malformed] = -1
    return totals


def _valid_strings(rng: np.random.Generator, number: int, height: int, width: int) -> list[bytes]:
    masks = rng.random((number, height, width)) < rng.random((number, 1, 1))
    boxes = np.zeros((number, height, width), dtype=bool)
    for index in range(number):  # long runs too (5-12 groups per run)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        boxes[index, top : top + rng.integers(1, height), left : left + rng.integers(1, width)] = True
    chosen = np.where(rng.random(number)[:, None, None] < 0.5, masks, boxes)
    return [coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in chosen]


def _malformed(rng: np.random.Generator, valid: list[bytes]) -> bytes:
    kind = rng.integers(0, 7)
    source = bytearray(valid[rng.integers(len(valid))])
    if kind == 0:  # random bytes, printable and not
        return bytes(rng.integers(0, 256, rng.integers(0, 40)).astype(np.uint8))
    if kind == 1:  # random groups of the alphabet: any run lengths, signs, deltas
        return bytes(rng.integers(48, 112, rng.integers(0, 40)).astype(np.uint8))
    if kind == 2 and source:  # one character changed
        source[rng.integers(len(source))] = int(rng.integers(32, 127))
        return bytes(source)
    if kind == 3 and source:  # cut
        return bytes(source[: rng.integers(0, len(source))])
    if kind == 4:  # extra runs
        return bytes(source) + bytes(rng.integers(48, 112, rng.integers(1, 6)).astype(np.uint8))
    if kind == 5:  # "more groups follow" only: an over-long, cut run
        return b"o" * int(rng.integers(1, 20))
    # a zero run of 11-14 groups (zero payload, "more follows" set) before a valid string:
    # 12 groups (60 bits) is the longest run length there is
    return b"P" * int(rng.integers(10, 14)) + b"0" + bytes(source)


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 15])
def test_chunked_checker_equals_the_one_pass_checker(
    chunk_chars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(masks_module, "_RLE_CHUNK_CHARS", chunk_chars)
    rng = np.random.default_rng(chunk_chars)
    height, width = 24, 40
    valid = _valid_strings(rng, 200, height, width)
    for trial in range(40):
        number = int(rng.integers(1, 60))
        strings = [
            valid[i] if rng.random() < 0.5 else _malformed(rng, valid) for i in rng.integers(0, 200, number)
        ]
        pixels = rng.choice([1, 60, height * width, 10**7], number).astype(np.int64)
        expected = _reference_totals(strings, pixels)
        np.testing.assert_array_equal(compressed_rle_pixels(strings, pixels), expected, err_msg=str(trial))
    assert ((expected == -1) | (expected >= 0)).all()


def test_chunked_checker_agrees_with_pycocotools_decoding() -> None:
    rng = np.random.default_rng(5)
    height, width = 33, 47
    strings = _valid_strings(rng, 300, height, width)
    totals = compressed_rle_pixels(strings, np.full(300, height * width))
    np.testing.assert_array_equal(totals, np.full(300, height * width))
    # one image smaller: every run still fits, but the total is not the smaller image's
    smaller = compressed_rle_pixels(strings, np.full(300, height * width - 1))
    assert (smaller != height * width - 1).all()
    decoded = coco_mask.decode([{"size": [height, width], "counts": s} for s in strings])
    assert decoded.shape == (height, width, 300)


def test_empty_input_and_empty_strings() -> None:
    assert compressed_rle_pixels([], np.zeros(0, dtype=np.int64)).shape == (0,)
    np.testing.assert_array_equal(compressed_rle_pixels([b"", b"", b""], np.full(3, 5)), [0, 0, 0])
