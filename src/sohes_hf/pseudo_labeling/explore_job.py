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
final file equals that of an uninterrupted run, byte for byte. The journal's header records the
configuration; resuming with a different one raises ``ExploreOutputError`` (a ``ValueError``).
One process at a time writes a shard: the run holds ``<shard>.lock`` (:mod:`.shard_lock`), a
second process on the same shard stops at once naming the first one's PID, and temporary files
left by a killed run are removed at start. Skipped images (corrupt,
unreadable, too large or too small) are journaled too and not retried, and so is an image on
which memory runs out (``MemoryError``, CUDA out of memory): one such image must not stop the
shard at every resume. Any other error stops the job (it is a bug, not a property of the image).

Memory is bounded whatever the shard size (an SA-1B shard of 100k images is ~10 GB of RLEs, paper
section 4): the journal is the only store of finished records. Resume reads it line by line and
keeps an index image key -> byte offset of its line; a finished image's record is dropped once
its line is written (at most ``checkpoint_every`` serialized lines wait for the next flush). The
final COCO file is assembled in listing order by seeking to each image's line, one record at a
time, and streamed by :class:`~.coco_stream.CocoStreamWriter` (same bytes as ``json.dumps`` of
the whole dict; fsync + ``os.replace``); the summary's statistics are counted on the way. The
journal is in completion order, not listing order (a batch journals its skipped images before
its processed ones, a resume appends the rest), hence the offsets.

:func:`~.shard_merge.merge_shards` (re-exported here) joins the shard files of a folder into one
COCO file, renumbering annotation ids and their ``parent_id``, streaming too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sohes_hf import __version__
from sohes_hf.atomic_io import write_json_atomic
from sohes_hf.data.image_sources import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    ImageEntry,
    ImageReader,
    ImageReadError,
    list_images,
    shard_entries,
)
from sohes_hf.data.tar_scan import InputProblem
from sohes_hf.logging_utils import get_logger
from sohes_hf.pseudo_labeling.coco_stream import CocoStreamWriter, json_default
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.explore_journal import ExploreOutputError, Journal, index_journal
from sohes_hf.pseudo_labeling.explore_progress import (
    BAR_FORMAT,
    ImageStatus,
    ReportingExtractor,
    ReportingRefiner,
)
from sohes_hf.pseudo_labeling.explore_report import emptied_step, format_rate
from sohes_hf.pseudo_labeling.explore_workers import SerializedExtractor, SerializedRefiner, map_in_threads
from sohes_hf.pseudo_labeling.local_reclustering import FeatureExtractor
from sohes_hf.pseudo_labeling.refinement import MaskRefiner
from sohes_hf.pseudo_labeling.self_exploration import ImagePseudoLabels, explore_image
from sohes_hf.pseudo_labeling.shard_lock import hold_shard_lock
from sohes_hf.pseudo_labeling.shard_merge import FILE_PREFIX
from sohes_hf.pseudo_labeling.shard_merge import MergeSummary as MergeSummary  # re-exported
from sohes_hf.pseudo_labeling.shard_merge import merge_shards as merge_shards  # re-exported

logger = get_logger(__name__)


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
        max_file_bytes: image files (tar members) above this size are skipped unread, so a
            listed device or huge file cannot exhaust memory.
        backbone: backbone name recorded in the output's ``info`` (provenance only; the refiner
            is ``exploration.refiner``).
        exploration: the self-exploration hyper-parameters.
        workers: images explored concurrently by CPU threads (see
            :mod:`~.explore_workers`); network passes still run one at a time. The output does not
            depend on it, so a run may be resumed with another value.
    """

    inputs: tuple[str, ...]
    output_dir: str
    num_shards: int = 1
    shard_index: int = 0
    checkpoint_every: int = 10
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    backbone: str = "facebook/dino-vitb8"
    exploration: SelfExplorationConfig = field(default_factory=SelfExplorationConfig)
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: no image inputs given")
        for name in ("num_shards", "checkpoint_every", "max_image_pixels", "max_file_bytes", "workers"):
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
    lock: Path

    @property
    def written(self) -> tuple[Path, ...]:
        """The files the shard's run writes (atomically, except the appended journal)."""
        return (self.journal, self.annotations, self.skipped, self.summary)

    @classmethod
    def of(cls, output_dir: str | Path, shard_index: int, num_shards: int) -> ShardPaths:
        stem = Path(output_dir) / f"{FILE_PREFIX}.shard-{shard_index:05d}-of-{num_shards:05d}"
        return cls(
            journal=stem.with_name(stem.name + ".jsonl"),
            annotations=stem.with_name(stem.name + ".json"),
            skipped=stem.with_name(stem.name + ".skipped.json"),
            summary=stem.with_name(stem.name + ".summary.json"),
            lock=stem.with_name(stem.name + ".lock"),
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
        masks_after_step: masks after each self-exploration step, summed over the labelled images
            (the fields of :class:`~.self_exploration.ExplorationCounts`); tells which step
            removed the masks when a run ends with few or none.
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
    masks_after_step: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> str:
        """This run's speed in a unit readable at any speed ("2.3 min/image", "4.1 images/s")."""
        num_processed = self.num_images - self.num_resumed
        return format_rate(num_processed, self.seconds)

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
            "rate": self.rate,
            "masks_after_step": dict(self.masks_after_step),
            "annotations_file": str(self.paths.annotations),
        }


def _list_inputs(job: ExploreJobConfig, input_problems: list[InputProblem]) -> list[ImageEntry]:
    """Every image of the job's inputs; refuses inputs holding none (naming what was unusable)."""
    listing = _listing(job.inputs, input_problems)
    if not listing:
        unusable = ""
        if input_problems:
            first = input_problems[0]
            unusable = f"; {len(input_problems)} input(s) unusable, first: {first.source}: {first.reason}"
        raise ExploreInputError(
            f"no image found in {', '.join(job.inputs)} (looked for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}, list files and SA-1B .tar packs){unusable}"
        )
    return listing


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

    Raises:
        ExploreOutputError: the journal belongs to another configuration or is not a journal,
            or another process is running this shard (:class:`~.shard_lock.ShardBusyError`).
    """
    paths = ShardPaths.of(job.output_dir, job.shard_index, job.num_shards)
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    with hold_shard_lock(paths.lock, paths.written):
        return _run_shard(job, paths, extractor, refiner, on_image_done, show_progress)


def _run_shard(
    job: ExploreJobConfig,
    paths: ShardPaths,
    extractor: FeatureExtractor,
    refiner: MaskRefiner,
    on_image_done: Callable[[int], None] | None,
    show_progress: bool,
) -> ExploreSummary:
    """:func:`run_explore_job` once the shard's lock is held."""
    start = time.perf_counter()
    input_problems: list[InputProblem] = []  # cut packs, links...: listed in the skip report
    entries = shard_entries(_list_inputs(job, input_problems), job.num_shards, job.shard_index)
    header = _header(job, entries)
    offsets = index_journal(paths.journal, header)
    num_resumed = len(offsets)
    todo = [entry for entry in entries if entry.key not in offsets]
    if num_resumed:
        logger.info(
            "resuming shard %d: %d of %d images already done", job.shard_index, num_resumed, len(entries)
        )
    config = job.exploration
    num_done = 0
    with (
        Journal(paths.journal, header, job.checkpoint_every, offsets) as journal,
        ImageReader(job.max_image_pixels, config.min_image_side, job.max_file_bytes) as reader,
        tqdm(
            total=len(entries),
            initial=num_resumed,
            unit="img",
            desc="self-exploration",
            disable=not show_progress,
            bar_format=BAR_FORMAT,
        ) as progress,
    ):
        status = ImageStatus(progress, {entry.key: number for number, entry in enumerate(entries, start=1)})

        def finish(entry: ImageEntry, record: dict[str, Any]) -> None:
            """Journals one image's record (done or skipped) and reports progress."""
            nonlocal num_done
            journal.append(entry.key, record)
            num_done += 1
            progress.update(1)
            status.clear(entry, explored=record["type"] == "image")
            if on_image_done is not None:
                on_image_done(num_done)

        network_lock = threading.Lock()
        serialized_extractor = SerializedExtractor(extractor, network_lock)
        serialized_refiner = SerializedRefiner(refiner, network_lock)

        def loaded_images() -> Iterator[tuple[ImageEntry, np.ndarray, np.ndarray]]:
            """Reads the images batch by batch (journaling the unreadable ones) with their features."""
            for batch in _chunks(todo, config.feature_batch_size):
                status.batch(batch, "reading")
                loaded = []
                for entry in batch:
                    try:
                        loaded.append((entry, reader.read(entry)))
                    except ImageReadError as error:
                        logger.warning("skipping %s: %s", entry.key, error.reason)
                        finish(entry, _skipped_record(entry, error.reason))
                images = [image for _, image in loaded]
                status.batch([entry for entry, _ in loaded], "backbone features")
                features = serialized_extractor.extract(images, config.image_size)
                for (entry, image), image_features in zip(loaded, features, strict=True):
                    yield entry, image, image_features

        def explore(item: tuple[ImageEntry, np.ndarray, np.ndarray]) -> ImagePseudoLabels | str:
            """The image's pseudo-labels, or why it is skipped (memory ran out on this image)."""
            entry, image, image_features = item
            status.set(entry, "global clustering")
            try:
                return explore_image(
                    image,
                    ReportingExtractor(serialized_extractor, lambda text: status.set(entry, text)),
                    ReportingRefiner(serialized_refiner, lambda text: status.set(entry, text)),
                    config,
                    global_features=image_features,
                )
            except (MemoryError, torch.OutOfMemoryError) as error:
                return f"out of memory while exploring it ({type(error).__name__}: {error})"

        results = map_in_threads(explore, loaded_images(), job.workers)
        try:
            for (entry, _, _), outcome in results:
                if isinstance(outcome, str):
                    logger.warning("skipping %s: %s", entry.key, outcome)
                    finish(entry, _skipped_record(entry, outcome))
                else:
                    _warn_if_emptied(entry, outcome)
                    finish(entry, _image_record(entry, outcome))
        finally:
            results.close()  # on an error: cancel the images not started, let the running ones end
    totals = _assemble(paths, entries, offsets, header, show_progress, input_problems)
    seconds = time.perf_counter() - start
    summary = ExploreSummary(
        num_images=len(entries),
        num_labeled=totals.num_labeled,
        num_skipped=totals.num_skipped,
        num_resumed=num_resumed,
        num_masks=totals.num_masks,
        masks_per_image=totals.num_masks / totals.num_labeled if totals.num_labeled else 0.0,
        depth_histogram=dict(sorted(totals.depths.items())),
        seconds=seconds,
        images_per_second=num_done / seconds if seconds > 0 else 0.0,
        paths=paths,
        masks_after_step=dict(totals.masks_after_step),
    )
    _write_json(paths.summary, summary.to_dict())
    logger.info(
        "shard %d/%d: %d images (%d skipped), %.1f masks/image, depths %s, %.1f s (%s) -> %s",
        job.shard_index,
        job.num_shards,
        summary.num_images,
        summary.num_skipped,
        summary.masks_per_image,
        summary.depth_histogram,
        summary.seconds,
        summary.rate,
        paths.annotations,
    )
    emptied = emptied_step(summary.masks_after_step)
    if summary.num_labeled and emptied is not None:
        logger.warning(
            "%s removed every mask of every image of shard %d (%d masks before it, 0 after): %s",
            emptied.step,
            job.shard_index,
            emptied.num_before,
            emptied.hint,
        )
    return summary


def _warn_if_emptied(entry: ImageEntry, labels: ImagePseudoLabels) -> None:
    """Warns when a step of self-exploration left ``entry`` without any mask (it gets none)."""
    emptied = emptied_step(vars(labels.counts))
    if len(labels) == 0 and emptied is not None:
        logger.warning(
            "%s: %s removed all %d masks; the image gets no pseudo-label",
            entry.key,
            emptied.step,
            emptied.num_before,
        )


class ExploreInputError(ValueError):
    """An input (folder, list file, tar pack) cannot be listed; the message names it."""


def _listing(inputs: Sequence[str], problems: list[InputProblem]) -> list[ImageEntry]:
    """All images of ``inputs``; ExploreInputError naming the input that cannot be listed.

    A pack that is not a tar, or a list file that is not UTF-8 text, is a user error at the
    start of the job (nothing is written yet), so it is raised rather than skipped; the inputs
    are listed one by one only to name the culprit.
    """
    try:
        return list_images(inputs, problems)
    except (ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        culprit = ""
        for item in inputs:
            try:
                list_images([item])
            except (ValueError, OSError):
                culprit = f"{item}: "
                break
        if isinstance(error, UnicodeDecodeError):
            raise ExploreInputError(
                f"{culprit}not UTF-8 text ({error.reason} at byte {error.start}); a list file holds one "
                "image path per line"
            ) from error
        message = str(error).removeprefix("inputs: ")
        if culprit and message.startswith(culprit.rstrip(": ")):
            culprit = ""
        raise ExploreInputError(f"{culprit}{message}") from error


# --- journal -----------------------------------------------------------------------------------


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


_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def _skipped_record(entry: ImageEntry, reason: str) -> dict[str, Any]:
    """The journal line of a skipped image; the reason is made run-independent.

    Decoder messages may embed an object's repr (PIL: ``cannot identify image file <_io.BytesIO
    object at 0x7f...>``), whose address changes per run, so two identical runs would write
    different skipped reports: the address is dropped (``<_io.BytesIO>``).
    """
    return {
        "type": "skipped",
        "key": entry.key,
        "image_id": entry.image_id,
        "file_name": entry.file_name,
        "reason": _OBJECT_REPR.sub(r"<\1>", reason),
    }


@dataclass
class _ShardTotals:
    """Counts gathered while the shard's files are written (the summary's statistics)."""

    num_labeled: int = 0
    num_skipped: int = 0
    num_masks: int = 0
    depths: Counter[int] = field(default_factory=Counter)
    masks_after_step: Counter[str] = field(default_factory=Counter)


def _assemble(
    paths: ShardPaths,
    entries: Sequence[ImageEntry],
    offsets: Mapping[str, int],
    header: Mapping[str, Any],
    show_progress: bool,
    input_problems: Sequence[InputProblem] = (),
) -> _ShardTotals:
    """Writes the shard's COCO file and skipped report from the journal, in listing order.

    The journal is in completion order, which differs from the listing order after a resume
    and within a feature batch (skipped images are journaled before the batch's processed ones),
    so each image's line is read at its byte offset. One image's record is in memory at a time;
    the COCO file is streamed by :class:`~.coco_stream.CocoStreamWriter` (annotation ids 1..N
    in listing order, parents before children) with the same bytes as ``json.dumps`` of the
    whole COCO dict. Skipped entries (a few hundred bytes each, like the offsets index) are
    collected for their report.
    """
    info = {"description": "SOHES self-exploration pseudo-labels", "sohes_hf_version": __version__, **header}
    totals = _ShardTotals()
    skipped: list[dict[str, Any]] = []
    with (
        open(paths.journal, "rb") as journal,
        CocoStreamWriter(paths.annotations, info) as writer,
    ):
        for entry in tqdm(entries, unit="img", desc="writing COCO", disable=not show_progress):
            if entry.key not in offsets:
                raise RuntimeError(f"journal {paths.journal}: image {entry.key} was never journaled")
            journal.seek(offsets[entry.key])
            record = json.loads(journal.readline())
            if record.get("key") != entry.key:
                raise ExploreOutputError(
                    f"output: journal {paths.journal} changed while the job ran "
                    f"(expected {entry.key} at byte {offsets[entry.key]})"
                )
            if record["type"] == "skipped":
                skipped.append({k: record[k] for k in ("key", "image_id", "file_name", "reason")})
                continue
            image = record["image"]
            writer.add_image({k: image[k] for k in ("id", "file_name", "width", "height")})
            first_id = writer.num_annotations + 1
            for ann in record["annotations"]:
                rle = ann["segmentation"]
                writer.add_annotation(
                    {
                        "id": writer.num_annotations + 1,
                        "image_id": image["id"],
                        "category_id": 1,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                        "area": ann["area"],
                        "bbox": ann["bbox"],
                        "iscrowd": 0,
                        "score": ann["score"],
                        "parent_id": None if ann["parent"] < 0 else first_id + ann["parent"],
                        "depth": ann["depth"],
                    }
                )
                totals.depths[int(ann["depth"])] += 1
            totals.num_labeled += 1
            totals.num_masks += len(record["annotations"])
            totals.masks_after_step.update({k: int(v) for k, v in record.get("counts", {}).items()})
    totals.num_skipped = len(skipped)
    problems = [dataclasses.asdict(problem) for problem in input_problems]
    _write_json(paths.skipped, {"skipped": skipped, "inputs": problems})
    return totals


def _chunks(items: Sequence[ImageEntry], size: int) -> Iterator[Sequence[ImageEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload, indent=None, default=json_default)
