"""Merging the shard COCO files of a self-exploration job into one file, in bounded memory.

The job (:mod:`.explore_job`, paper section 3.1 run image by image) writes one COCO file per
shard; :func:`merge_shards` joins them for training. Shards are streamed element by element
(:func:`~.coco_stream.iter_coco_members`) into a :class:`~.coco_stream.CocoStreamWriter`, so a
merge of SA-1B-sized shards holds one annotation at a time plus 8 bytes per image id.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sohes_hf.logging_utils import get_logger
from sohes_hf.pseudo_labeling.coco_stream import CocoStreamWriter, iter_coco_members

logger = get_logger(__name__)

FILE_PREFIX = "pseudo_labels"
"""Stem of every file of an exploration output folder."""

_SHARD_FILE = re.compile(rf"^{FILE_PREFIX}\.shard-(\d+)-of-(\d+)\.json$")


@dataclass(frozen=True)
class MergeSummary:
    """Outcome of :func:`merge_shards`: shards merged, images and annotations written."""

    num_shards: int
    num_images: int
    num_annotations: int


def merge_shards(output_dir: str | Path, output_file: str | Path) -> MergeSummary:
    """Merges the shard COCO files of ``output_dir`` into one COCO file ``output_file``.

    Annotation ids are renumbered 1..N in shard order and ``parent_id`` follows them. The shards
    are streamed (:func:`~.coco_stream.iter_coco_members`) and the result is written by
    :class:`~.coco_stream.CocoStreamWriter`, so memory holds one annotation and the image ids
    (8 bytes per image, for the uniqueness check), not the shards. ``info`` is the first shard's
    with ``num_shards`` added.

    Raises:
        FileNotFoundError: no shard file in ``output_dir``, or a shard of the set is missing.
        ValueError: shard files disagree on the shard count, two shards hold one image id, or an
            annotation's parent is not an earlier annotation of its image (then nothing is written).
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir: {folder} is not a folder")
    found: dict[int, Path] = {}
    totals = set()
    for path in sorted(folder.iterdir()):
        match = _SHARD_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
            totals.add(int(match.group(2)))
    if not found:
        raise FileNotFoundError(f"output_dir: no {FILE_PREFIX}.shard-*-of-*.json files in {folder}")
    if len(totals) != 1:
        raise ValueError(f"output_dir: shard files of different shard counts {sorted(totals)} in {folder}")
    (num_shards,) = totals
    missing = [k for k in range(num_shards) if k not in found]
    if missing:
        raise FileNotFoundError(f"output_dir: shards {missing} of {num_shards} are not finished in {folder}")
    shards = [found[index] for index in range(num_shards)]
    info: dict[str, Any] = {}
    for path in shards:
        info = next((dict(value) for name, value in iter_coco_members(path) if name == "info"), {})
        if info:
            break
    info["num_shards"] = num_shards
    image_ids = array("q")
    shard_ends: list[int] = []
    with CocoStreamWriter(output_file, info) as writer:
        for path in tqdm(shards, unit="shard", desc="merge", disable=len(shards) < 2):
            _copy_shard(path, writer, image_ids)
            shard_ends.append(len(image_ids))
        _check_unique_image_ids(image_ids, shard_ends, shards)
    logger.info(
        "merged %d shards: %d images, %d annotations -> %s",
        num_shards,
        writer.num_images,
        writer.num_annotations,
        output_file,
    )
    return MergeSummary(
        num_shards=num_shards, num_images=writer.num_images, num_annotations=writer.num_annotations
    )


def _copy_shard(path: Path, writer: CocoStreamWriter, image_ids: array[int]) -> None:
    """Streams one shard into ``writer``: ids continue the writer's count, parents follow them.

    Parents are looked up among the earlier annotations of the same image (the pseudo-label
    contract puts parents first; the job writes each image's annotations together), so only
    the current image's old -> new id map is held.
    """
    new_ids: dict[Any, int] = {}
    image_of_ids: Any = None
    for name, element in iter_coco_members(path):
        if name == "images":
            image_ids.append(int(element["id"]))
            writer.add_image(element)
        elif name == "annotations":
            if element["image_id"] != image_of_ids:
                new_ids, image_of_ids = {}, element["image_id"]
            merged = dict(element)
            merged["id"] = new_ids[element["id"]] = writer.num_annotations + 1
            parent = element["parent_id"]
            if parent is not None:
                if parent not in new_ids:
                    raise ValueError(
                        f"output_dir: {path}: parent {parent} of annotation {element['id']} "
                        f"is not an earlier annotation of image {element['image_id']}"
                    )
                merged["parent_id"] = new_ids[parent]
            writer.add_annotation(merged)


def _check_unique_image_ids(image_ids: array[int], shard_ends: Sequence[int], shards: Sequence[Path]) -> None:
    """Raises ValueError naming an image id held twice (sorting 8-byte ids, not a set of objects)."""
    ids = np.frombuffer(image_ids, dtype=np.int64) if len(image_ids) else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):
        first, second = order[repeated[0]], order[repeated[0] + 1]
        where = np.searchsorted(np.asarray(shard_ends), [first, second], side="right")
        raise ValueError(
            f"output_dir: image id {int(ids[first])} appears twice "
            f"({shards[where[0]].name} and {shards[where[1]].name})"
        )
