"""Validation of a whole pseudo-label set when it is loaded, before any training step.

A bad mask used to surface only when training first drew its image, hours in, as
``rles[0]: compressed RLE counts do not describe 128x128 pixels`` naming neither image nor
annotation; NaN scores and dangling or self ``parent_id`` were accepted silently. Every store
(JSON shards, ``.arrow``, ``.parquet``) now runs :func:`check_label_columns` over all its labels
when it is opened, and ``sohes data convert-labels`` refuses to write a file that fails it.

The checks are vectorised over flat per-annotation columns (one pass; the RLE run lengths are
summed for all strings at once by :func:`~sohes_hf.modeling.masks.compressed_rle_pixels`):

* the RLE size is the image's ``[height, width]`` and its counts describe exactly that many
  pixels (garbage, short and long counts all fail this);
* the score is finite and in [0, 1];
* annotation ids are non-negative and unique within their image; ``parent_id`` is null/-1 or
  an *earlier* annotation of the same image (never the annotation itself): the hierarchy of
  paper section 3.1 is a forest whose parents precede their children;
* ``depth`` is 0 for roots and the parent's depth + 1 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sohes_hf.modeling.masks import compressed_rle_pixels

_MAX_EXAMPLES = 3


class PseudoLabelError(ValueError):
    """A pseudo-label set breaks the contract; the message names file, image and annotation."""


@dataclass(frozen=True)
class LabelColumns:
    """Flat columns of the labels of some images (annotations of image i at offsets[i]:offsets[i+1]).

    Attributes:
        image_ids, file_names, heights, widths: (I,) per image.
        offsets: (I + 1,) int64 start of each image's annotations.
        label_ids, parent_ids (-1 for roots), depths: (A,) int64.
        scores: (A,) float64.
        counts: (A,) compressed RLE counts strings.
        sizes: (A, 2) RLE ``[height, width]`` per annotation, or None where the store keeps one
            size per image.
    """

    image_ids: np.ndarray
    file_names: Sequence[str]
    heights: np.ndarray
    widths: np.ndarray
    offsets: np.ndarray
    label_ids: np.ndarray
    parent_ids: np.ndarray
    depths: np.ndarray
    scores: np.ndarray
    counts: Sequence[str]
    sizes: np.ndarray | None = None


def _parents(columns: LabelColumns, image_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(duplicate id, bad parent, parent position or -1) per annotation (A >= 1), vectorised.

    Ids are ranked densely so that (image, id) packs into one int64 key without overflow; each
    parent is looked up by binary search among the keys of all annotations.
    """
    num = len(columns.label_ids)
    unique_ids = np.unique(columns.label_ids)
    stride = len(unique_ids) + 1
    keys = image_of * stride + np.searchsorted(unique_ids, columns.label_ids)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    duplicate = np.zeros(num, dtype=bool)
    duplicate[order[np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1]] = True
    has_parent = columns.parent_ids >= 0
    parent_rank = np.minimum(np.searchsorted(unique_ids, columns.parent_ids), len(unique_ids) - 1)
    known = has_parent & (unique_ids[parent_rank] == columns.parent_ids)
    parent_keys = image_of * stride + parent_rank
    where = np.minimum(np.searchsorted(sorted_keys, parent_keys), num - 1)
    found = known & (sorted_keys[where] == parent_keys)
    parent_position = np.where(found, order[where], -1)
    bad_parent = (has_parent & ~(found & (parent_position < np.arange(num)))) | (columns.parent_ids < -1)
    return duplicate, bad_parent, np.where(bad_parent, -1, parent_position)


def check_label_columns(columns: LabelColumns, source: str) -> None:
    """Refuses any annotation that breaks the pseudo-label contract (see the module doc).

    Raises:
        PseudoLabelError: how many annotations of how many images are bad, and the first few
            with image id, file name, annotation id and reason.
    """
    num = len(columns.label_ids)
    if num == 0:
        return
    counts_per_image = np.diff(columns.offsets)
    image_of = np.repeat(np.arange(len(columns.image_ids)), counts_per_image)
    heights, widths = columns.heights[image_of], columns.widths[image_of]
    reasons = np.full(num, "", dtype=object)

    def flag(bad: np.ndarray, reason: str | np.ndarray) -> None:
        new = bad & (reasons == "")
        reasons[new] = reason[new] if isinstance(reason, np.ndarray) else reason

    if columns.sizes is not None:
        sizes = np.asarray(columns.sizes, dtype=np.int64).reshape(num, 2)
        wrong = (sizes[:, 0] != heights) | (sizes[:, 1] != widths)
        if wrong.any():
            texts = [f"RLE size {[int(v) for v in size]} is not the image's [height, width]" for size in
                     sizes]  # fmt: skip
            flag(wrong, np.array(texts, dtype=object))
    pixels = heights.astype(np.int64) * widths.astype(np.int64)
    ascii_counts = [text.encode("ascii", "replace") for text in columns.counts]
    described = compressed_rle_pixels(ascii_counts, pixels)
    non_ascii = np.fromiter((not text.isascii() for text in columns.counts), dtype=bool, count=num)
    bad_rle = (described != pixels) | non_ascii
    if bad_rle.any():
        texts = [f"RLE counts do not describe {h}x{w} pixels (garbage, cut or extra runs)" for h, w in
                 zip(heights, widths, strict=True)]  # fmt: skip
        flag(bad_rle, np.array(texts, dtype=object))
    scores = np.asarray(columns.scores, dtype=np.float64)
    flag(~np.isfinite(scores), "score is not a finite number (NaN or inf)")
    flag((scores < 0) | (scores > 1), "score is outside [0, 1]")
    flag(columns.label_ids < 0, "annotation id is negative")
    flag(columns.parent_ids == columns.label_ids, "is its own parent")
    duplicate, bad_parent, parent_position = _parents(columns, image_of)
    flag(duplicate, "annotation id repeats within the image")
    flag(bad_parent, "parent_id is not an earlier annotation of the same image (dangling or after its child)")
    has_parent = parent_position >= 0
    expected_depth = np.zeros(num, dtype=np.int64)
    expected_depth[has_parent] = columns.depths[parent_position[has_parent]] + 1
    flag(columns.depths != expected_depth, "depth is not 0 for a root or its parent's depth + 1")
    bad = np.flatnonzero(reasons != "")
    if bad.size == 0:
        return
    examples = []
    for index in bad[:_MAX_EXAMPLES]:
        image = image_of[index]
        examples.append(
            f"image {int(columns.image_ids[image])} ({columns.file_names[image]}), annotation "
            f"{int(columns.label_ids[index])} (parent_id {int(columns.parent_ids[index])}): {reasons[index]}"
        )
    num_images = len(np.unique(image_of[bad]))
    raise PseudoLabelError(
        f"{source}: {bad.size} invalid pseudo-label annotation(s) in {num_images} image(s); "
        + "; ".join(examples)
        + (" ..." if bad.size > _MAX_EXAMPLES else "")
        + ". Fix or regenerate the labels (sohes explore) before training"
    )
