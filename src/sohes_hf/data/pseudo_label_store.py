"""Pseudo-labels written by ``sohes explore``, indexed by image for training (paper section 3.1-3.2).

Self-exploration writes COCO JSON shards (contract in COMMON.md): ``images`` with ``id`` and
``file_name``, and ``annotations`` with an RLE ``segmentation``, ``score``, ``parent_id``
(annotation id or null) and ``depth``, parents before children. Three stores read them:

* :class:`JsonPseudoLabelStore` parses the shards and keeps an in-memory index
  image id -> labels. No conversion step, but start-up parses everything and every process holds
  all labels (tens of GB for 220k SA-1B images with ~100 masks each). For inspection and small sets.
* :class:`ArrowPseudoLabelStore` memory-maps an uncompressed Arrow IPC file (``.arrow``) written
  by :func:`convert_pseudo_labels`, one row per image. Opening is instant, workers share the OS
  page cache, and a random lookup converts one row: the store for training.
* :class:`ParquetPseudoLabelStore` reads the same table from a compressed ``.parquet`` file
  (several times smaller): for storing and sharing labels. A random lookup that misses its row-group
  cache decodes a whole group, several times slower than ``.arrow``.

``benchmarks/benchmark_data.py`` measures all three.

:func:`targets_for_image` turns an image's annotations into the per-image training targets
``{"masks": [RLE], "parents": [int]}`` (in-list parent indices, -1 for roots).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sohes_hf.atomic_io import atomic_path
from sohes_hf.data.coco_datasets import read_coco_json
from sohes_hf.data.pseudo_label_checks import LabelColumns, PseudoLabelError, check_label_columns
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class PseudoLabel:
    """One pseudo-label mask.

    Attributes:
        id: annotation id (unique within the label set).
        segmentation: COCO RLE ``{"size": [h, w], "counts": str}``.
        score: confidence of the mask in [0, 1].
        parent_id: annotation id of the direct parent, None for a root entity.
        depth: 0 for a whole entity, 1 for its parts, and so on.
    """

    id: int
    segmentation: dict[str, Any]
    score: float
    parent_id: int | None
    depth: int


@dataclass(frozen=True)
class ImagePseudoLabels:
    """The pseudo-labels of one image, parents before children."""

    image_id: int
    file_name: str
    width: int
    height: int
    labels: tuple[PseudoLabel, ...]


class PseudoLabelStore(Protocol):
    """What the dataset builders need from a store."""

    def get(self, image_id: int) -> ImagePseudoLabels | None: ...

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        """``(height, width)`` the labels were made for, without converting the labels."""
        ...

    def num_labels(self, image_id: int) -> int | None:
        """How many pseudo-labels the image has, without converting them (``None``: no such image).

        Why: the training dataset counts every image's labels when it loads; through ``get`` that
        converted all the labels of every image, and a Parquet store decoded a whole row group
        per image whenever the listing order was not the file's order.
        """
        ...

    def image_id_for_file_name(self, file_name: str) -> int | None: ...

    def __len__(self) -> int: ...


def targets_for_image(labels: Sequence[PseudoLabel]) -> dict[str, list[Any]]:
    """Per-image training targets: ``{"masks": [RLE, ...], "parents": [int, ...]}``.

    ``parents[i]`` is the index in this list of mask i's direct parent, -1 for roots. The return
    is the JSON-style dict of the COMMON.md data -> processor contract, not a dataclass.

    Raises:
        ValueError: a ``parent_id`` is not an earlier annotation of the same image.
    """
    index_of: dict[int, int] = {}
    parents = []
    for index, label in enumerate(labels):
        if label.parent_id is None:
            parents.append(-1)
        elif label.parent_id in index_of:
            parents.append(index_of[label.parent_id])
        else:
            raise ValueError(
                f"annotation {label.id}: parent_id {label.parent_id} is not an earlier annotation of "
                "its image (parents must precede children)"
            )
        index_of[label.id] = index
    return {"masks": [dict(label.segmentation) for label in labels], "parents": parents}


def _field(record: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    return record[key]


def _parse_label(raw: Mapping[str, Any], where: str) -> PseudoLabel:
    segmentation = _field(raw, "segmentation", where)
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise ValueError(f"{where}: segmentation must be a COCO RLE with size and counts")
    counts = segmentation["counts"]
    if not isinstance(counts, str):
        raise ValueError(f"{where}: segmentation counts must be a compressed RLE str")
    parent = raw.get("parent_id")
    try:
        return PseudoLabel(
            id=_integer(_field(raw, "id", where)),
            segmentation={"size": [_integer(s) for s in segmentation["size"]], "counts": counts},
            score=float(raw.get("score", 1.0)),
            parent_id=None if parent is None else _integer(parent),
            depth=_integer(raw["depth"]) if "depth" in raw else _DEPTH_FROM_PARENTS,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} (id {raw.get('id')!r}): {error}") from error


# ``depth`` is redundant with ``parent_id``: a file without it (e.g. ground truth made elsewhere)
# gets it from the parent links; a file with it must agree with them (``check_label_columns``).
_DEPTH_FROM_PARENTS = -1


def _fill_depths(labels: Sequence[PseudoLabel]) -> tuple[PseudoLabel, ...]:
    """Labels with a missing depth set to 0 for roots and the parent's depth + 1 (parents first)."""
    depth_of: dict[int, int] = {}
    filled = []
    for label in labels:
        if label.depth == _DEPTH_FROM_PARENTS:
            parent_depth = depth_of.get(label.parent_id, -1) if label.parent_id is not None else -1
            label = dataclasses.replace(label, depth=parent_depth + 1)
        depth_of[label.id] = label.depth
        filled.append(label)
    return tuple(filled)


def _integer(value: Any) -> int:
    """An int from JSON; floats such as 3.5, bools and strings are refused (int() would accept)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _columns(images: Sequence[ImagePseudoLabels]) -> LabelColumns:
    """Flat per-annotation columns of parsed images, for :func:`check_label_columns`."""
    labels = [label for image in images for label in image.labels]
    return LabelColumns(
        image_ids=np.array([image.image_id for image in images], dtype=np.int64),
        file_names=[image.file_name for image in images],
        heights=np.array([image.height for image in images], dtype=np.int64),
        widths=np.array([image.width for image in images], dtype=np.int64),
        offsets=np.concatenate(([0], np.cumsum([len(image.labels) for image in images]))).astype(np.int64),
        label_ids=np.array([label.id for label in labels], dtype=np.int64),
        parent_ids=np.array(
            [-1 if label.parent_id is None else label.parent_id for label in labels], np.int64
        ),
        depths=np.array([label.depth for label in labels], dtype=np.int64),
        scores=np.array([label.score for label in labels], dtype=np.float64),
        counts=[label.segmentation["counts"] for label in labels],
        sizes=np.array([label.segmentation["size"] for label in labels], dtype=np.int64).reshape(-1, 2),
    )


def _table_columns(table: pa.Table, source: str) -> LabelColumns:
    """Flat columns of rows of :data:`_TABLE_SCHEMA` (without copying the counts' bytes twice)."""
    lists = {name: table.column(name).combine_chunks() for name in _LIST_COLUMNS}
    lengths = {name: pc.list_value_length(array).fill_null(-1).to_numpy() for name, array in lists.items()}
    first = lengths["label_id"]
    for name, values in lengths.items():
        if (values < 0).any() or not np.array_equal(values, first):
            row = int(np.flatnonzero((values < 0) | (values != first))[0])
            image_id = table.column("image_id")[row].as_py()
            raise PseudoLabelError(
                f"{source}: image {image_id}: column {name!r} is null or has another length than "
                "label_id; regenerate the file with sohes data convert-labels"
            )
    try:
        flat = {name: array.flatten() for name, array in lists.items()}
        return LabelColumns(
            image_ids=table.column("image_id").to_numpy().astype(np.int64),
            file_names=table.column("file_name").to_pylist(),
            heights=table.column("height").to_numpy().astype(np.int64),
            widths=table.column("width").to_numpy().astype(np.int64),
            offsets=np.concatenate(([0], np.cumsum(first))).astype(np.int64),
            label_ids=flat["label_id"].to_numpy().astype(np.int64),
            parent_ids=flat["parent_id"].to_numpy().astype(np.int64),
            depths=flat["depth"].to_numpy().astype(np.int64),
            scores=flat["score"].to_numpy(zero_copy_only=False).astype(np.float64),
            counts=flat["counts"].to_pylist(),
        )
    except (pa.ArrowInvalid, TypeError, ValueError) as error:  # nulls inside the lists
        raise PseudoLabelError(f"{source}: unreadable pseudo-label columns ({error})") from error


def _check_table(batches: Iterator[pa.Table], source: str) -> None:
    """Validates a store's rows batch by batch (bounded memory), see :mod:`.pseudo_label_checks`."""
    for table in batches:
        columns = _table_columns(table, source)
        if columns.counts and any(text is None for text in columns.counts):
            raise PseudoLabelError(f"{source}: null RLE counts; regenerate the file")
        check_label_columns(columns, source)


def _json_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"pseudo-label file or directory {path} does not exist")
    if not files:
        raise FileNotFoundError(f"no pseudo-label JSON found in {items}")
    return files


def iter_pseudo_label_files(paths: str | Path | Sequence[str | Path]) -> Iterator[ImagePseudoLabels]:
    """Parses COCO-JSON pseudo-label shards (files or directories of ``*.json``), image by image.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file breaks the contract (the message names the file and annotation).
    """
    for path in _json_files(paths):
        try:
            parsed = _parse_file(path)
        except PseudoLabelError:
            raise
        except ValueError as error:  # one class for callers: bad labels are a user error
            raise PseudoLabelError(str(error)) from error
        yield from parsed


def _parse_file(path: Path) -> list[ImagePseudoLabels]:
    """All images of one shard, validated as a whole (:func:`check_label_columns`)."""
    data = read_coco_json(path, f"pseudo-label file {path}")
    try:
        by_image: dict[int, list[PseudoLabel]] = {
            _integer(_field(im, "id", str(path))): [] for im in data["images"]
        }
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: images: {error}") from error
    for number, raw in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{number}]"
        image_id = _field(raw, "image_id", where)
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in by_image:
            raise ValueError(f"{where}: image_id {image_id} is not in 'images'")
        by_image[image_id].append(_parse_label(raw, where))
    parsed = []
    for number, image in enumerate(data["images"]):
        where = f"{path}: images[{number}]"
        try:
            image_id = _integer(image["id"])
            width = _integer(_field(image, "width", where))
            height = _integer(_field(image, "height", where))
        except ValueError as error:
            raise ValueError(f"{where} (id {image.get('id')!r}): {error}") from error
        if width < 1 or height < 1:
            raise ValueError(f"{where} (id {image_id}): width and height must be positive")
        parsed.append(
            ImagePseudoLabels(
                image_id=image_id,
                file_name=str(_field(image, "file_name", where)),
                width=width,
                height=height,
                labels=_fill_depths(by_image[image_id]),
            )
        )
    check_label_columns(_columns(parsed), f"pseudo-label file {path}")  # the whole file, one pass
    return parsed


class JsonPseudoLabelStore:
    """In-memory index image id -> pseudo-labels, parsed from COCO JSON shards."""

    def __init__(self, images: Sequence[ImagePseudoLabels]) -> None:
        self._images: dict[int, ImagePseudoLabels] = {}
        self._by_file_name: dict[str, int] = {}
        for image in images:
            if image.image_id in self._images:
                raise ValueError(
                    f"image id {image.image_id} ({image.file_name}) appears in two pseudo-label entries"
                )
            self._images[image.image_id] = image
            self._by_file_name[image.file_name] = image.image_id

    @classmethod
    def from_files(cls, paths: str | Path | Sequence[str | Path]) -> JsonPseudoLabelStore:
        """Reads every shard; see :func:`iter_pseudo_label_files`."""
        return cls(list(iter_pseudo_label_files(paths)))

    def get(self, image_id: int) -> ImagePseudoLabels | None:
        return self._images.get(image_id)

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        image = self._images.get(image_id)
        return None if image is None else (image.height, image.width)

    def num_labels(self, image_id: int) -> int | None:
        image = self._images.get(image_id)
        return None if image is None else len(image.labels)

    def image_id_for_file_name(self, file_name: str) -> int | None:
        return self._by_file_name.get(file_name)

    def __len__(self) -> int:
        return len(self._images)


_LIST_COLUMNS = ("label_id", "counts", "score", "parent_id", "depth")
_CHECK_ROWS = 4096  # images validated at a time when a store is opened

_TABLE_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("label_id", pa.list_(pa.int64())),
        ("counts", pa.list_(pa.string())),
        ("score", pa.list_(pa.float32())),
        ("parent_id", pa.list_(pa.int64())),
        ("depth", pa.list_(pa.int32())),
    ]
)
"""One row per image, sorted by image id. All masks of an image share its size, so only the RLE
counts are stored per mask; ``parent_id`` is -1 for roots."""


def _labels_table(paths: str | Path | Sequence[str | Path]) -> pa.Table:
    images = sorted(JsonPseudoLabelStore.from_files(paths)._images.values(), key=lambda im: im.image_id)
    for image in images:
        for label in image.labels:
            if label.id < 0 or (label.parent_id is not None and label.parent_id < 0):
                raise ValueError(f"annotation {label.id}: ids must be non-negative (-1 marks a root)")
            if label.segmentation["size"] != [image.height, image.width]:
                raise ValueError(
                    f"annotation {label.id}: RLE size {label.segmentation['size']} differs from image "
                    f"{image.image_id} size [{image.height}, {image.width}]"
                )
    columns: dict[str, list[Any]] = {
        "image_id": [im.image_id for im in images],
        "file_name": [im.file_name for im in images],
        "width": [im.width for im in images],
        "height": [im.height for im in images],
        "label_id": [[lb.id for lb in im.labels] for im in images],
        "counts": [[lb.segmentation["counts"] for lb in im.labels] for im in images],
        "score": [[lb.score for lb in im.labels] for im in images],
        "parent_id": [[-1 if lb.parent_id is None else lb.parent_id for lb in im.labels] for im in images],
        "depth": [[lb.depth for lb in im.labels] for im in images],
    }
    return pa.table(columns, schema=_TABLE_SCHEMA)


def convert_pseudo_labels(
    paths: str | Path | Sequence[str | Path], output: str | Path, *, rows_per_group: int = 16
) -> int:
    """Writes pseudo-label JSON shards as one ``.arrow`` (Arrow IPC) or ``.parquet`` file.

    The file is written to a temporary name and renamed, so an interrupted conversion leaves no
    partial file.

    Args:
        paths: JSON files or directories of ``*.json`` shards.
        output: ``*.arrow`` (uncompressed, memory-mapped at training time: fastest random
            access) or ``*.parquet`` (compressed, several times smaller: for storage and sharing).
        rows_per_group: images per Parquet row group / Arrow record batch; a Parquet lookup
            decodes one group.

    Returns:
        The number of images written.

    Raises:
        ValueError: ``output`` has another suffix, ``rows_per_group`` is not positive, or the
            labels break the contract.
    """
    output = Path(output)
    if output.suffix not in (".arrow", ".parquet"):
        raise ValueError(f"output must end with .arrow or .parquet, got {output}")
    if rows_per_group <= 0:
        raise ValueError(f"rows_per_group must be positive, got {rows_per_group}")
    table = _labels_table(paths)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as temporary:
        if output.suffix == ".parquet":
            pq.write_table(table, str(temporary), row_group_size=rows_per_group)
        else:
            with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, _TABLE_SCHEMA) as writer:
                writer.write_table(table, max_chunksize=rows_per_group)
    logger.info("wrote pseudo-labels of %d images to %s", table.num_rows, output)
    return int(table.num_rows)


def _row_to_labels(data: dict[str, Any]) -> ImagePseudoLabels:
    size = [data["height"], data["width"]]
    labels = tuple(
        PseudoLabel(
            id=label_id,
            segmentation={"size": list(size), "counts": counts},
            score=score,
            parent_id=None if parent < 0 else parent,
            depth=depth,
        )
        for label_id, counts, score, parent, depth in zip(
            data["label_id"], data["counts"], data["score"], data["parent_id"], data["depth"], strict=True
        )
    )
    return ImagePseudoLabels(data["image_id"], data["file_name"], size[1], size[0], labels)


def _label_counts(label_ids: pa.ChunkedArray) -> np.ndarray:
    """Labels per row, from the offsets of the ``label_id`` list column (no label is converted)."""
    return pc.fill_null(pc.list_value_length(label_ids), 0).to_numpy()


class _TableStore:
    """Lookups by image id / file name over rows of :data:`_TABLE_SCHEMA`."""

    path: Path
    _location: dict[int, Any]
    _by_file_name: dict[str, int]

    def _check_schema(self, schema: pa.Schema) -> None:
        if not schema.equals(_TABLE_SCHEMA):
            raise ValueError(f"{self.path} is not a sohes-hf pseudo-label file (schema differs)")

    def image_id_for_file_name(self, file_name: str) -> int | None:
        return self._by_file_name.get(file_name)

    def __len__(self) -> int:
        return len(self._location)


class ArrowPseudoLabelStore(_TableStore):
    """Random access to an ``.arrow`` file of :func:`convert_pseudo_labels`, memory-mapped.

    Opening maps the file (no copy: data-loader workers share the OS page cache) and reads the
    id column; a lookup converts one row. The training store of choice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"pseudo-label file {self.path} does not exist")
        try:
            self._table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{self.path} is not a readable Arrow IPC file ({error})") from error
        self._check_schema(self._table.schema)
        starts = range(0, self._table.num_rows, _CHECK_ROWS)
        _check_table(
            (self._table.slice(start, _CHECK_ROWS) for start in starts), f"pseudo-label file {self.path}"
        )
        ids = self._table.column("image_id").to_pylist()
        self._location = {image_id: row for row, image_id in enumerate(ids)}
        self._by_file_name = dict(zip(self._table.column("file_name").to_pylist(), ids, strict=True))
        self._heights = self._table.column("height").to_numpy()
        self._widths = self._table.column("width").to_numpy()
        self._label_counts = _label_counts(self._table.column("label_id"))

    def get(self, image_id: int) -> ImagePseudoLabels | None:
        row = self._location.get(image_id)
        return None if row is None else _row_to_labels(self._table.slice(row, 1).to_pylist()[0])

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        row = self._location.get(image_id)
        return None if row is None else (int(self._heights[row]), int(self._widths[row]))

    def num_labels(self, image_id: int) -> int | None:
        row = self._location.get(image_id)
        return None if row is None else int(self._label_counts[row])


class ParquetPseudoLabelStore(_TableStore):
    """Random access to a ``.parquet`` file of :func:`convert_pseudo_labels`.

    Opening reads the id column; a lookup decodes the row group holding the image (LRU cache of
    ``cache_row_groups`` decoded groups). Smaller on disk than ``.arrow`` but a random lookup
    that misses the cache decodes a whole group (see benchmarks/benchmark_data.py).
    """

    def __init__(self, path: str | Path, *, cache_row_groups: int = 8) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"pseudo-label file {self.path} does not exist")
        if cache_row_groups <= 0:
            raise ValueError(f"cache_row_groups must be positive, got {cache_row_groups}")
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{self.path} is not a readable Parquet file ({error})") from error
        self._check_schema(self._file.schema_arrow)
        groups = (self._file.read_row_group(group) for group in range(self._file.num_row_groups))
        _check_table(groups, f"pseudo-label file {self.path}")
        self._cache_size = cache_row_groups
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._location = {}
        self._by_file_name = {}
        # Per row group: heights, widths and label counts (lookups that decode no labels).
        self._sizes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for group in range(self._file.num_row_groups):
            columns = ["image_id", "file_name", "height", "width", "label_id"]
            table = self._file.read_row_group(group, columns=columns)
            keys = table.select(["image_id", "file_name"]).to_pydict()
            for row, (image_id, file_name) in enumerate(
                zip(keys["image_id"], keys["file_name"], strict=True)
            ):
                self._location[image_id] = (group, row)
                self._by_file_name[file_name] = image_id
            heights, widths = table.column("height").to_numpy(), table.column("width").to_numpy()
            self._sizes.append((heights, widths, _label_counts(table.column("label_id"))))

    def _row_group(self, group: int) -> pa.Table:
        # Arrow tables are cached, not Python objects: converting a whole group to Python cost
        # ~40 ms per random lookup in benchmarks/benchmark_data.py.
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        table = self._file.read_row_group(group)
        self._cache[group] = table
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return table

    def get(self, image_id: int) -> ImagePseudoLabels | None:
        location = self._location.get(image_id)
        if location is None:
            return None
        group, row = location
        return _row_to_labels(self._row_group(group).slice(row, 1).to_pylist()[0])

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        location = self._location.get(image_id)
        if location is None:
            return None
        heights, widths, _ = self._sizes[location[0]]
        return int(heights[location[1]]), int(widths[location[1]])

    def num_labels(self, image_id: int) -> int | None:
        location = self._location.get(image_id)
        if location is None:
            return None
        return int(self._sizes[location[0]][2][location[1]])


def open_pseudo_label_store(paths: str | Path | Sequence[str | Path]) -> PseudoLabelStore:
    """An Arrow or Parquet store for one ``.arrow``/``.parquet`` path, else a JSON store."""
    if isinstance(paths, (str, Path)):
        if str(paths).endswith(".arrow"):
            return ArrowPseudoLabelStore(paths)
        if str(paths).endswith(".parquet"):
            return ParquetPseudoLabelStore(paths)
    return JsonPseudoLabelStore.from_files(paths)
