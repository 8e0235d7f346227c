"""datasets builders joining training images with their pseudo-labels (paper section 3.3, 4).

SOHES trains its segmentation model on images paired with the pseudo-labels that
self-exploration produced for them. Two image sources are joined with a pseudo-label store
(:mod:`sohes_hf.data.pseudo_label_store`):

* :class:`SA1BPseudoLabelBuilder`: SA-1B tar packs (local paths or URLs), streamed member by
  member by :mod:`sohes_hf.data.sa1b`'s training view, which never reads the human masks;
* :class:`ImageFolderPseudoLabelBuilder`: a folder of images whose paths relative to the folder
  are the ``file_name`` of the pseudo-label file (for non-SA-1B data).

Both are ``datasets.GeneratorBasedBuilder`` subclasses used directly (datasets 5 loads no
scripts): ``builder.as_streaming_dataset("train")`` streams, ``builder.download_and_prepare()``
then ``builder.as_dataset("train")`` caches Arrow files. Each pack (or folder chunk) is one
shard, so ``datasets.distributed.split_dataset_by_node`` hands whole shards to ranks when the
shard count divides by the world size.

An image without pseudo-labels is skipped, counted in :attr:`JoinStats.num_without_pseudo_labels`
and logged; it is never yielded with empty targets. Stats count what this process generated
(a data-loader worker keeps its own).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.builder import Key

from sohes_hf.data.pseudo_label_store import (
    ImagePseudoLabels,
    PseudoLabelStore,
    open_pseudo_label_store,
    targets_for_image,
)
from sohes_hf.data.sa1b import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_MEMBER_BYTES,
    ReadReport,
    SA1BFormatError,
    iter_sa1b_images,
    probe_image_size,
)
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

PSEUDO_LABEL_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "pseudo_labels": {
            "segmentation": datasets.List(
                {"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")}
            ),
            "annotation_id": datasets.List(datasets.Value("int64")),
            "parent_id": datasets.List(datasets.Value("int64")),
            "parents": datasets.List(datasets.Value("int32")),
            "depth": datasets.List(datasets.Value("int32")),
            "score": datasets.List(datasets.Value("float32")),
        },
    }
)
"""Example schema. ``pseudo_labels`` holds parallel lists, parents before children:
``segmentation`` (COCO RLE, str counts), ``annotation_id``, ``parent_id`` (annotation id of the
direct parent, None for roots), ``parents`` (index of the parent in these lists, -1 for roots, the
training-target contract), ``depth`` (0 = whole entity) and ``score``."""


@dataclass
class JoinStats:
    """What a builder generated in this process.

    Attributes:
        num_yielded: examples yielded (images with pseudo-labels).
        num_without_pseudo_labels: images skipped because the store has no entry for them.
        num_size_mismatch: images skipped because their pseudo-label size differs from the image.
        read: the image reader's counts and issues (truncated packs, bad members, bombs).
    """

    num_yielded: int = 0
    num_without_pseudo_labels: int = 0
    num_size_mismatch: int = 0
    read: ReadReport = field(default_factory=ReadReport)


def example_targets(example: dict[str, Any]) -> dict[str, list[Any]]:
    """Training targets ``{"masks": [RLE], "parents": [int]}`` of one builder example."""
    labels = example["pseudo_labels"]
    return {
        "masks": [dict(rle) for rle in labels["segmentation"]],
        "parents": [int(p) for p in labels["parents"]],
    }


@dataclass
class PseudoLabelJoinConfig(datasets.BuilderConfig):
    """Configuration shared by the builders.

    Attributes:
        pseudo_labels: a pseudo-label ``.parquet`` file, or COCO JSON files / directories of
            ``*.json`` shards written by ``sohes explore``.
        max_image_pixels: images with more pixels are skipped as decompression bombs.
    """

    pseudo_labels: str | list[str] | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pseudo_labels:
            raise ValueError(
                "pseudo_labels: give the pseudo-label .parquet file or JSON files written by sohes explore"
            )
        if self.max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels}")


@dataclass
class SA1BPseudoLabelConfig(PseudoLabelJoinConfig):
    """Attributes:
    tar_files: SA-1B pack paths or URLs (see :func:`sohes_hf.data.sa1b.read_links_file`),
        one shard each.
    max_member_bytes: tar members larger than this are skipped unread.
    """

    tar_files: list[str] = field(default_factory=list)
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.tar_files, str) or not self.tar_files:
            raise ValueError("tar_files: give a non-empty list of SA-1B pack paths or URLs")
        if self.max_member_bytes <= 0:
            raise ValueError(f"max_member_bytes must be positive, got {self.max_member_bytes}")


@dataclass
class ImageFolderPseudoLabelConfig(PseudoLabelJoinConfig):
    """Attributes:
    image_dir: folder of images; paths relative to it (``/``-separated) are the pseudo-label
        ``file_name``.
    num_shards: the sorted image list is dealt round-robin into this many shards (set it to a
        multiple of the number of training processes).
    """

    image_dir: str | None = None
    num_shards: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.image_dir or not Path(self.image_dir).is_dir():
            raise ValueError(f"image_dir: {self.image_dir!r} is not a directory")
        if self.num_shards <= 0:
            raise ValueError(f"num_shards must be positive, got {self.num_shards}")


class _PseudoLabelJoinBuilder(datasets.GeneratorBasedBuilder):
    """Joins (image_id, file_name, bytes) from a source with the pseudo-label store."""

    config: PseudoLabelJoinConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = JoinStats()
        self._store: PseudoLabelStore | None = None

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=PSEUDO_LABEL_FEATURES)

    def __getstate__(self) -> dict[str, Any]:
        # Data-loader workers receive a pickled builder: never ship an opened store (a JSON index
        # or a memory-mapped table would be copied into every worker); each reopens its own.
        state = dict(super().__getstate__())
        state["_store"] = None
        return state

    def pseudo_label_store(self) -> PseudoLabelStore:
        """The store, opened on first use (so each process opens its own)."""
        if self._store is None:
            self._store = open_pseudo_label_store(self.config.pseudo_labels)  # type: ignore[arg-type]
        return self._store

    def _join(
        self, shard: int, items: Iterator[tuple[int | None, str, int, int, bytes]]
    ) -> Iterator[tuple[Key, dict[str, Any]]]:
        """Yields examples for ``(image_id or None, file_name, width, height, bytes)`` items."""
        store = self.pseudo_label_store()
        for number, (image_id, file_name, width, height, data) in enumerate(items):
            if image_id is None:
                image_id = store.image_id_for_file_name(file_name)
            labels = store.get(image_id) if image_id is not None else None
            if labels is None:
                self.stats.num_without_pseudo_labels += 1
                logger.debug("skipping %s: no pseudo-labels for it", file_name)
                continue
            if (labels.width, labels.height) != (width, height):
                self.stats.num_size_mismatch += 1
                logger.warning(
                    "skipping %s: pseudo-labels are %dx%d but the image is %dx%d",
                    file_name,
                    labels.width,
                    labels.height,
                    width,
                    height,
                )
                continue
            self.stats.num_yielded += 1
            yield Key(shard, number), _example(labels, file_name, data)

    def _log_summary(self) -> None:
        stats = self.stats
        skipped = stats.num_without_pseudo_labels + stats.num_size_mismatch + stats.read.total_skipped
        logger.log(
            logging.WARNING if skipped else logging.INFO,
            "pseudo-label join: %d examples; skipped %d images without pseudo-labels, %d size "
            "mismatches, %d unreadable items (builder.stats has the details)",
            stats.num_yielded,
            stats.num_without_pseudo_labels,
            stats.num_size_mismatch,
            stats.read.total_skipped,
        )


def _example(labels: ImagePseudoLabels, file_name: str, data: bytes) -> dict[str, Any]:
    targets = targets_for_image(labels.labels)
    return {
        "image": {"bytes": data, "path": file_name},
        "image_id": labels.image_id,
        "file_name": file_name,
        "width": labels.width,
        "height": labels.height,
        "pseudo_labels": {
            "segmentation": targets["masks"],
            "annotation_id": [label.id for label in labels.labels],
            "parent_id": [label.parent_id for label in labels.labels],
            "parents": targets["parents"],
            "depth": [label.depth for label in labels.labels],
            "score": [label.score for label in labels.labels],
        },
    }


class SA1BPseudoLabelBuilder(_PseudoLabelJoinBuilder):
    """SA-1B packs joined with pseudo-labels; images come from the training view only.

    Example::

        builder = SA1BPseudoLabelBuilder(
            tar_files=["sa_000000.tar"], pseudo_labels="pseudo_labels.parquet", cache_dir="cache"
        )
        stream = builder.as_streaming_dataset(split="train")
    """

    BUILDER_CONFIG_CLASS = SA1BPseudoLabelConfig
    config: SA1BPseudoLabelConfig

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        # Streaming: URLs stay URLs and are read sequentially; otherwise packs are cached locally.
        sources = dl_manager.download(list(self.config.tar_files))
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"sources": list(sources)})]

    def _generate_shards(self, sources: Sequence[str]) -> Iterator[str]:
        yield from sources

    def _generate_examples(self, sources: Sequence[str]) -> Iterator[tuple[Key, dict[str, Any]]]:
        for shard, source in enumerate(sources):
            images = iter_sa1b_images(
                [source],
                self.stats.read,
                max_image_pixels=self.config.max_image_pixels,
                max_member_bytes=self.config.max_member_bytes,
            )
            yield from self._join(
                shard, ((im.image_id, im.file_name, im.width, im.height, im.image_bytes) for im in images)
            )
        self._log_summary()


def list_image_folder(image_dir: str | Path) -> list[str]:
    """Image paths under ``image_dir`` relative to it, ``/``-separated, sorted."""
    root = Path(image_dir)
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_FOLDER_EXTENSIONS
    )


class ImageFolderPseudoLabelBuilder(_PseudoLabelJoinBuilder):
    """A plain image folder joined with pseudo-labels by relative file name."""

    BUILDER_CONFIG_CLASS = ImageFolderPseudoLabelConfig
    config: ImageFolderPseudoLabelConfig

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        files = list_image_folder(self.config.image_dir)  # type: ignore[arg-type]
        if not files:
            raise ValueError(
                f"image_dir: no {'/'.join(IMAGE_FOLDER_EXTENSIONS)} image under {self.config.image_dir}"
            )
        num_shards = min(self.config.num_shards, len(files))
        shards = [files[i::num_shards] for i in range(num_shards)]
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"shards": shards})]

    def _generate_shards(self, shards: Sequence[Sequence[str]]) -> Iterator[str]:
        for files in shards:
            yield ",".join(files)

    def _read(self, relative: str) -> tuple[int | None, str, int, int, bytes] | None:
        path = Path(self.config.image_dir) / relative  # type: ignore[arg-type]
        data = path.read_bytes()
        try:
            width, height = probe_image_size(data, str(path), self.config.max_image_pixels, formats=None)
        except SA1BFormatError as error:
            self.stats.read.add_issue("bad_image", str(self.config.image_dir), relative, str(error))
            return None
        self.stats.read.num_images += 1
        return None, relative, width, height, data

    def _generate_examples(self, shards: Sequence[Sequence[str]]) -> Iterator[tuple[Key, dict[str, Any]]]:
        for shard, files in enumerate(shards):
            items = (item for item in map(self._read, files) if item is not None)
            yield from self._join(shard, items)
        self._log_summary()
