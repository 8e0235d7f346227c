"""The self-exploration job: pseudo-labels for a folder / list / SA-1B tars, sharded and resumable.

Paper section 3.1 runs on every training image independently ("we can parallelize the processing
for each image"), so the job splits the image listing into shards (round-robin) and each shard
writes its own files in the output folder::

    pseudo_labels.shard-00000-of-00004.jsonl          journal: header + one line per finished image
    pseudo_labels.shard-00000-of-00004.json           COCO pseudo-label file of the shard (final)
    pseudo_labels.shard-00000-of-00004.skipped.json   images skipped, with the reason
    pseudo_labels.shard-00000-of-00004.summary.json   images, masks/image, depth histogram, time

Resume: the journal is append-only. Finished images are appended as complete JSON lines, flushed
and fsync'ed every ``checkpoint_every`` images and whenever the job stops (also on errors and
Ctrl-C). Re-running the same command reads the journal, drops a torn last line left by a hard
kill, and processes only the images not in it, so finished work is never redone or lost and the
final file equals that of an uninterrupted run. The journal's header records the configuration;
resuming with a different one raises ``ValueError``. Skipped images (corrupt, unreadable, too
large or too small) are journaled too and not retried.

:func:`merge_shards` joins the shard files of a folder into one COCO file, renumbering annotation
ids and their ``parent_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sohes_hf import __version__
from sohes_hf.atomic_io import write_json_atomic, write_text_atomic
from sohes_hf.data.image_sources import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageEntry,
    ImageReader,
    ImageReadError,
    list_images,
    shard_entries,
)
from sohes_hf.logging_utils import get_logger
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.local_reclustering import FeatureExtractor
from sohes_hf.pseudo_labeling.refinement import MaskRefiner
from sohes_hf.pseudo_labeling.self_exploration import ImagePseudoLabels, explore_image

logger = get_logger(__name__)

FILE_PREFIX = "pseudo_labels"
CATEGORIES = [{"id": 1, "name": "entity"}]
_SHARD_FILE = re.compile(rf"^{FILE_PREFIX}\.shard-(\d+)-of-(\d+)\.json$")


@dataclass(frozen=True)
class ExploreJobConfig:
    """What to explore and where to write it.

    Attributes:
        inputs: folders, list files, SA-1B tar packs or image files (see
            :mod:`sohes_hf.data.image_sources`).
        output_dir: folder receiving the shard files.
        num_shards: number of shards the listing is split into (one per process/node).
        shard_index: which shard this run processes, in [0, num_shards).
        checkpoint_every: finished images between two journal flushes (fsync).
        max_image_pixels: images above width x height are skipped (decompression-bomb guard).
        backbone: backbone name recorded in the output's ``info`` (provenance only; the refiner
            is ``exploration.refiner``).
        exploration: the self-exploration hyper-parameters.
    """

    inputs: tuple[str, ...]
    output_dir: str
    num_shards: int = 1
    shard_index: int = 0
    checkpoint_every: int = 10
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    backbone: str = "facebook/dino-vitb8"
    exploration: SelfExplorationConfig = field(default_factory=SelfExplorationConfig)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: no image inputs given")
        for name in ("num_shards", "checkpoint_every", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        index = self.shard_index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_shards:
            raise ValueError(f"shard_index: must be in [0, {self.num_shards - 1}], got {index!r}")


@dataclass(frozen=True)
class ShardPaths:
    """Files of one shard in the output folder."""

    journal: Path
    annotations: Path
    skipped: Path
    summary: Path

    @classmethod
    def of(cls, output_dir: str | Path, shard_index: int, num_shards: int) -> ShardPaths:
        stem = Path(output_dir) / f"{FILE_PREFIX}.shard-{shard_index:05d}-of-{num_shards:05d}"
        return cls(
            journal=stem.with_name(stem.name + ".jsonl"),
            annotations=stem.with_name(stem.name + ".json"),
            skipped=stem.with_name(stem.name + ".skipped.json"),
            summary=stem.with_name(stem.name + ".summary.json"),
        )


@dataclass(frozen=True)
class ExploreSummary:
    """Outcome of a shard.

    Attributes:
        num_images: images in the shard.
        num_labeled: images with pseudo-labels (processed, not skipped).
        num_skipped: images skipped (see the skipped report).
        num_resumed: images found finished in the journal at start.
        num_masks: pseudo-labels written.
        masks_per_image: num_masks / num_labeled (0 when none).
        depth_histogram: depth -> number of masks (0 = whole entities).
        seconds: wall time of this run.
        images_per_second: images processed by this run per second.
        paths: the shard's files.
    """

    num_images: int
    num_labeled: int
    num_skipped: int
    num_resumed: int
    num_masks: int
    masks_per_image: float
    depth_histogram: dict[int, int]
    seconds: float
    images_per_second: float
    paths: ShardPaths

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (written as the summary file)."""
        return {
            "num_images": self.num_images,
            "num_labeled": self.num_labeled,
            "num_skipped": self.num_skipped,
            "num_resumed": self.num_resumed,
            "num_masks": self.num_masks,
            "masks_per_image": self.masks_per_image,
            "depth_histogram": {str(k): v for k, v in sorted(self.depth_histogram.items())},
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "annotations_file": str(self.paths.annotations),
        }


def run_explore_job(
    job: ExploreJobConfig,
    extractor: FeatureExtractor,
    refiner: MaskRefiner,
    on_image_done: Callable[[int], None] | None = None,
    show_progress: bool = True,
) -> ExploreSummary:
    """Explores the images of one shard, resuming from its journal; writes the shard's files.

    Args:
        job: inputs, output folder, shard and checkpointing.
        extractor: backbone (e.g. :class:`~sohes_hf.pseudo_labeling.features.DinoFeatureExtractor`).
        refiner: mask refiner.
        on_image_done: called with the number of images finished by this run after each one
            (progress hooks; tests use it to simulate a crash).
        show_progress: show a tqdm bar (images/s).

    Returns:
        The shard's summary (also logged and written to the summary file).
    """
    start = time.perf_counter()
    entries = shard_entries(list_images(job.inputs), job.num_shards, job.shard_index)
    paths = ShardPaths.of(job.output_dir, job.shard_index, job.num_shards)
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    header = _header(job, entries)
    records = _load_journal(paths.journal, header)
    num_resumed = len(records)
    todo = [entry for entry in entries if entry.key not in records]
    if num_resumed:
        logger.info(
            "resuming shard %d: %d of %d images already done", job.shard_index, num_resumed, len(entries)
        )
    config = job.exploration
    num_done = 0
    with (
        _Journal(paths.journal, header, job.checkpoint_every) as journal,
        ImageReader(job.max_image_pixels, config.min_image_side) as reader,
        tqdm(
            total=len(entries),
            initial=num_resumed,
            unit="img",
            desc="self-exploration",
            disable=not show_progress,
        ) as progress,
    ):

        def finish(entry: ImageEntry, record: dict[str, Any]) -> None:
            """Journals one image's record (done or skipped) and reports progress."""
            nonlocal num_done
            journal.append(record)
            records[entry.key] = record
            num_done += 1
            progress.update(1)
            if on_image_done is not None:
                on_image_done(num_done)

        for batch in _chunks(todo, config.feature_batch_size):
            loaded = []
            for entry in batch:
                try:
                    loaded.append((entry, reader.read(entry)))
                except ImageReadError as error:
                    logger.warning("skipping %s: %s", entry.key, error.reason)
                    finish(entry, _skipped_record(entry, error.reason))
            features = extractor.extract([image for _, image in loaded], config.image_size)
            for (entry, image), image_features in zip(loaded, features, strict=True):
                labels = explore_image(image, extractor, refiner, config, global_features=image_features)
                finish(entry, _image_record(entry, labels))
    coco, skipped = _assemble(entries, records, header)
    _write_json(paths.annotations, coco)
    _write_json(paths.skipped, {"skipped": skipped})
    seconds = time.perf_counter() - start
    summary = _summarize(coco, len(entries), len(skipped), num_resumed, num_done, seconds, paths)
    _write_json(paths.summary, summary.to_dict())
    logger.info(
        "shard %d/%d: %d images (%d skipped), %.1f masks/image, depths %s, %.1f s (%.2f img/s) -> %s",
        job.shard_index,
        job.num_shards,
        summary.num_images,
        summary.num_skipped,
        summary.masks_per_image,
        summary.depth_histogram,
        summary.seconds,
        summary.images_per_second,
        paths.annotations,
    )
    return summary


@dataclass(frozen=True)
class MergeSummary:
    """Outcome of :func:`merge_shards`: shards merged, images and annotations written."""

    num_shards: int
    num_images: int
    num_annotations: int


def merge_shards(output_dir: str | Path, output_file: str | Path) -> MergeSummary:
    """Merges the shard COCO files of ``output_dir`` into one COCO file ``output_file``.

    Annotation ids are renumbered 1..N in shard order and ``parent_id`` follows them.

    Raises:
        FileNotFoundError: no shard file in ``output_dir``, or a shard of the set is missing.
        ValueError: shard files disagree on the shard count, or two shards hold one image id.
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
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    image_ids: set[int] = set()
    info: dict[str, Any] = {}
    for index in range(num_shards):
        shard = json.loads(found[index].read_text(encoding="utf-8"))
        info = info or dict(shard.get("info", {}))
        for image in shard["images"]:
            if image["id"] in image_ids:
                raise ValueError(f"output_dir: image id {image['id']} appears in two shards ({found[index]})")
            image_ids.add(image["id"])
            images.append(image)
        new_ids = {ann["id"]: len(annotations) + i + 1 for i, ann in enumerate(shard["annotations"])}
        for ann in shard["annotations"]:
            merged = dict(ann)
            merged["id"] = new_ids[ann["id"]]
            merged["parent_id"] = None if ann["parent_id"] is None else new_ids[ann["parent_id"]]
            annotations.append(merged)
    info["num_shards"] = num_shards
    _write_json(
        Path(output_file),
        {"info": info, "images": images, "categories": CATEGORIES, "annotations": annotations},
    )
    logger.info(
        "merged %d shards: %d images, %d annotations -> %s",
        num_shards,
        len(images),
        len(annotations),
        output_file,
    )
    return MergeSummary(num_shards=num_shards, num_images=len(images), num_annotations=len(annotations))


# --- journal -----------------------------------------------------------------------------------


class _Journal:
    """Append-only JSONL file; buffered lines are written, flushed and fsync'ed every N images."""

    def __init__(self, path: Path, header: Mapping[str, Any], checkpoint_every: int) -> None:
        self.path = path
        self.header = header
        self.checkpoint_every = checkpoint_every
        self.pending: list[str] = []

    def __enter__(self) -> _Journal:
        if not self.path.exists() or self.path.stat().st_size == 0:
            write_text_atomic(self.path, json.dumps({"type": "header", **self.header}, sort_keys=True) + "\n")
        return self

    def append(self, record: Mapping[str, Any]) -> None:
        self.pending.append(json.dumps(record, sort_keys=True) + "\n")
        if len(self.pending) >= self.checkpoint_every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(self.pending))
            handle.flush()
            os.fsync(handle.fileno())
        logger.debug("checkpoint: %d images appended to %s", len(self.pending), self.path)
        self.pending.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.flush()  # also on errors and Ctrl-C: finished images are never lost


def _load_journal(path: Path, header: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Finished records by image key; drops a torn last line; checks the header.

    Every record is written as one complete line ending in a newline, so bytes after the last
    newline can only be a write cut short by a hard kill: they are truncated away.
    """
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        logger.warning("journal %s: dropping a torn last line (the job was killed mid-write)", path)
        with open(path, "r+b") as handle:
            handle.truncate(complete)
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"output: journal {path} is corrupt at line {number}: {error}") from error
        if record.get("type") == "header":
            _check_header(path, record, header)
        else:
            records[record["key"]] = record
    return records


def _check_header(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    different = sorted(key for key in expected if found.get(key) != expected[key])
    if different:
        raise ValueError(
            f"output: {path} was written by a different job configuration (differs in: "
            f"{', '.join(different)}); use another --output folder to start afresh"
        )


def _header(job: ExploreJobConfig, entries: Sequence[ImageEntry]) -> dict[str, Any]:
    keys = hashlib.sha256("\n".join(e.key for e in entries).encode("utf-8")).hexdigest()
    return {
        "num_shards": job.num_shards,
        "shard_index": job.shard_index,
        "images_sha256": keys,
        "self_exploration": job.exploration.to_dict(),
        "backbone": job.backbone,
        "max_image_pixels": job.max_image_pixels,
    }


# --- records and COCO assembly -------------------------------------------------------------------


def _image_record(entry: ImageEntry, labels: ImagePseudoLabels) -> dict[str, Any]:
    annotations = [
        {
            "segmentation": labels.masks[i],
            "area": int(labels.areas[i]),
            "bbox": [float(v) for v in labels.boxes[i]],
            "score": float(labels.scores[i]),
            "parent": int(labels.parents[i]),
            "depth": int(labels.depths[i]),
        }
        for i in range(len(labels))
    ]
    counts = labels.counts
    return {
        "type": "image",
        "key": entry.key,
        "image": {
            "id": entry.image_id,
            "file_name": entry.file_name,
            "width": labels.width,
            "height": labels.height,
        },
        "annotations": annotations,
        "counts": vars(counts).copy(),
        "seconds": labels.timings.total,
    }


def _skipped_record(entry: ImageEntry, reason: str) -> dict[str, Any]:
    return {
        "type": "skipped",
        "key": entry.key,
        "image_id": entry.image_id,
        "file_name": entry.file_name,
        "reason": reason,
    }


def _assemble(
    entries: Sequence[ImageEntry], records: Mapping[str, Mapping[str, Any]], header: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO dict of the shard in listing order (annotation ids 1..N), and the skipped list."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for entry in entries:
        record = records[entry.key]
        if record["type"] == "skipped":
            skipped.append({k: record[k] for k in ("key", "image_id", "file_name", "reason")})
            continue
        images.append(record["image"])
        first_id = len(annotations) + 1
        for ann in record["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image"]["id"],
                    "category_id": 1,
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                    "score": ann["score"],
                    "parent_id": None if ann["parent"] < 0 else first_id + ann["parent"],
                    "depth": ann["depth"],
                }
            )
    info = {"description": "SOHES self-exploration pseudo-labels", "sohes_hf_version": __version__, **header}
    coco = {"info": info, "images": images, "categories": CATEGORIES, "annotations": annotations}
    return coco, skipped


def _summarize(
    coco: Mapping[str, Any],
    num_images: int,
    num_skipped: int,
    num_resumed: int,
    num_done: int,
    seconds: float,
    paths: ShardPaths,
) -> ExploreSummary:
    num_labeled = len(coco["images"])
    depths = Counter(int(ann["depth"]) for ann in coco["annotations"])
    num_masks = len(coco["annotations"])
    return ExploreSummary(
        num_images=num_images,
        num_labeled=num_labeled,
        num_skipped=num_skipped,
        num_resumed=num_resumed,
        num_masks=num_masks,
        masks_per_image=num_masks / num_labeled if num_labeled else 0.0,
        depth_histogram=dict(sorted(depths.items())),
        seconds=seconds,
        images_per_second=num_done / seconds if seconds > 0 else 0.0,
        paths=paths,
    )


def _chunks(items: Sequence[ImageEntry], size: int) -> Iterator[Sequence[ImageEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload, indent=None, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
