"""Merging the shard COCO files of a self-exploration job into one file, in bounded memory.

The job (:mod:`.explore_job`, paper section 3.1 run image by image) writes one COCO file per
shard; :func:`merge_shards` joins them for training, after checking that the shards were made
with one configuration (their ``info``: a 512 px shard does not merge with a 256 px one) and
that the merged file would not overwrite a file of the folder. Shards are streamed element by element
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

_PER_SHARD_INFO = ("description", "shard_index", "images_sha256", "num_shards")
"""``info`` fields that differ between the shards of one job (the rest must agree)."""


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
        ValueError: ``output_file`` is a shard's file (:func:`check_merge_output`), shard files
            disagree on the shard count or on the job configuration of their ``info`` (image
            size, thresholds, backbone...), two shards hold one image id, or an annotation's
            parent is not an earlier annotation of its image (then nothing is written).
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir: {folder} is not a folder")
    check_merge_output(folder, output_file)
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
    info = _check_same_config(shards)
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


def check_merge_output(output_dir: str | Path, output_file: str | Path) -> None:
    """Raises ValueError when writing ``output_file`` would overwrite a file of the shard folder.

    Refused: any existing file of the folder's job (shard COCO files, journals, reports: names
    ``pseudo_labels.shard-*``, compared after resolving links), and any path with such a name in
    the folder (a later merge would take it for a shard). Merging onto shard 0 would replace
    the shard by the merged file, losing the shard and doubling its images at the next merge.
    """
    folder = Path(output_dir).resolve()
    target = Path(output_file)
    resolved = target.resolve()
    prefix = f"{FILE_PREFIX}.shard-"
    if resolved.parent == folder and resolved.name.startswith(prefix):
        raise ValueError(
            f"output_file: {target} is a file of the shard folder {output_dir} ({resolved.name}); "
            "write the merged file elsewhere, e.g. next to the folder"
        )
    if target.exists():
        for path in folder.iterdir():
            if path.name.startswith(prefix) and path.is_file() and path.samefile(target):
                raise ValueError(
                    f"output_file: {target} is the shard folder's file {path} (a link to it); "
                    "write the merged file elsewhere, e.g. next to the folder"
                )


def _check_same_config(shards: Sequence[Path]) -> dict[str, Any]:
    """The first shard's ``info``; raises ValueError naming two shards whose configurations differ.

    Every ``info`` field but the per-shard ones (index, image-list hash) is compared, nested
    dicts field by field, so the message names e.g. ``self_exploration.image_size``. The
    package version may differ (a resume after an upgrade): logged, not refused.
    """
    infos = [next((dict(v) for name, v in iter_coco_members(path) if name == "info"), {}) for path in shards]
    first = _flatten({k: v for k, v in infos[0].items() if k not in _PER_SHARD_INFO})
    for path, info in zip(shards[1:], infos[1:], strict=True):
        other = _flatten({k: v for k, v in info.items() if k not in _PER_SHARD_INFO})
        different = sorted(key for key in first.keys() | other.keys() if first.get(key) != other.get(key))
        versions = [key for key in different if key == "sohes_hf_version"]
        if versions:
            logger.warning(
                "merge: %s and %s were written by sohes-hf %s and %s",
                shards[0].name,
                path.name,
                first.get("sohes_hf_version"),
                other.get("sohes_hf_version"),
            )
        different = [key for key in different if key != "sohes_hf_version"]
        if different:
            shown = "; ".join(f"{key}: {first.get(key)!r} vs {other.get(key)!r}" for key in different[:3])
            more = f" (and {len(different) - 3} more)" if len(different) > 3 else ""
            raise ValueError(
                f"output_dir: shards {shards[0].name} and {path.name} were made with different "
                f"configurations ({shown}{more}); re-run the odd shard with the same options, "
                "or merge only shards of one job"
            )
    return infos[0]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
