"""Streaming reader of SA-1B tar packs, member by member, in memory (paper section 4, appendix A).

SOHES trains on 2% of SA-1B (20 of the 1,000 ``sa_XXXXXX.tar`` packs, about 220k images) and
evaluates on another pack. Each pack is a flat tar of ``sa_<N>.jpg`` + ``sa_<N>.json`` pairs; the
JSON holds ``image`` (``image_id``, ``width``, ``height``, ``file_name``) and the human
``annotations`` (COCO RLE ``segmentation``, ``bbox``, ``area``, ``predicted_iou``,
``stability_score``, ``point_coords``, ``crop_box``, ``id``).

Why not the packaged ``webdataset`` loader of datasets: on a truncated tar it raises
``tarfile.ReadError: unexpected end of data`` without naming the member and ends the whole stream,
and with explicit features a JSON without its image raises ``KeyError: '__key__'``. Here every
member is read into memory (never written to disk under its name, so ``../`` names cannot
escape), a bad member is reported with its name and skipped, and a truncated pack is reported and
the next pack is read.

Two views, so that human masks can never leak into training:
    * the *training* view (:func:`iter_sa1b_images`) yields images only; the JSON members are not
      even read (the tar stream skips their bytes);
    * the *evaluation* view (:func:`iter_sa1b_records`) yields images with their parsed human
      annotations, used only to build the SA-1B evaluation split.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
"""Images with more pixels are skipped as decompression bombs, checked from the header before any
decoding. SA-1B images are about 1500 x 2250 (3.4 Mpx); 100 Mpx (300 MB decoded RGB) leaves a 30x
margin while refusing a forged header that would make PIL allocate gigabytes. Same limit as
``sohes explore``'s image reader."""

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
"""Tar members larger than this are skipped unread (an SA-1B JPEG is ~0.5 MB, a JSON ~1-5 MB)."""

_MEMBER_PATTERN = re.compile(r"^sa_([0-9]{1,12})\.(jpg|json)$")
_MAX_ISSUES_KEPT = 1000


class SA1BFormatError(ValueError):
    """A tar member does not follow the SA-1B layout or JSON schema; the message names it."""


@dataclass(frozen=True)
class DataIssue:
    """One skipped piece of input: where it was and why (kept so users can audit a run)."""

    source: str
    member: str
    reason: str


@dataclass
class ReadReport:
    """Counts of what a reader yielded and skipped; updated while iterating.

    Attributes:
        num_images: images yielded.
        num_skipped: skipped items per reason (``"missing_image"``, ``"bad_json"``, ...).
        num_truncated_sources: tar packs that ended mid-stream.
        issues: the first 1,000 issues with source and member name.
    """

    num_images: int = 0
    num_skipped: dict[str, int] = field(default_factory=dict)
    num_truncated_sources: int = 0
    issues: list[DataIssue] = field(default_factory=list)

    def add_issue(self, kind: str, source: str, member: str, reason: str) -> None:
        """Counts a skipped item under ``kind`` and logs it with its member name."""
        self.num_skipped[kind] = self.num_skipped.get(kind, 0) + 1
        if len(self.issues) < _MAX_ISSUES_KEPT:
            self.issues.append(DataIssue(source=source, member=member, reason=reason))
        logger.warning("skipping %s in %s: %s", member, source, reason)

    @property
    def total_skipped(self) -> int:
        return sum(self.num_skipped.values())


@dataclass(frozen=True)
class SA1BImageInfo:
    """The ``image`` field of an SA-1B JSON."""

    image_id: int
    width: int
    height: int
    file_name: str


@dataclass(frozen=True)
class SA1BAnnotation:
    """One human (SAM-assisted) mask of SA-1B: ground truth for evaluation only.

    Attributes:
        segmentation: COCO RLE ``{"size": [h, w], "counts": str}``.
        bbox: XYWH box in pixels.
        point_coords: the [x, y] prompt points (pixels).
        crop_box: XYWH crop the mask was generated in.
    """

    id: int
    segmentation: dict[str, Any]
    bbox: tuple[float, float, float, float]
    area: float
    predicted_iou: float
    stability_score: float
    point_coords: tuple[tuple[float, float], ...]
    crop_box: tuple[float, float, float, float]


@dataclass(frozen=True)
class SA1BImage:
    """An image of a pack: its validated id and the encoded JPEG bytes (decoded lazily)."""

    image_id: int
    file_name: str
    width: int
    height: int
    image_bytes: bytes
    source: str


@dataclass(frozen=True)
class SA1BRecord:
    """An image with its human annotations (evaluation view)."""

    image: SA1BImage
    annotations: tuple[SA1BAnnotation, ...]


@dataclass(frozen=True)
class SA1BPack:
    """A pack listed in the official links file (``file_name<TAB>cdn_link``)."""

    file_name: str
    url: str


def read_links_file(path: str | Path) -> list[SA1BPack]:
    """Parses the official SA-1B links file: a header line, then ``file_name<TAB>cdn_link`` lines.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line has not two tab-separated fields or the file lists no pack.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"links file {path} does not exist")
    packs = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"links file {path}, line {line_number}: expected 'file_name<TAB>cdn_link'")
        packs.append(SA1BPack(file_name=fields[0].strip(), url=fields[1].strip()))
    if not packs:
        raise ValueError(f"links file {path} lists no pack (expected a header line then pack lines)")
    return packs


def select_packs(packs: Sequence[SA1BPack], names: Iterable[str]) -> list[str]:
    """URLs of the packs whose ``file_name`` is in ``names`` (e.g. ``sa_000020.tar``), in order given.

    Raises:
        ValueError: a name is not in the links file.
    """
    by_name = {pack.file_name: pack.url for pack in packs}
    urls = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"pack {name!r} is not in the links file (it lists e.g. {packs[0].file_name!r})")
        urls.append(by_name[name])
    return urls


def _open_source(source: str) -> IO[bytes]:
    """Opens a local path or an fsspec URL (``https://``, ``hf://``, ``file://``...) for streaming.

    ``block_size=0`` makes HTTP(S) and ``hf://`` files stream sequentially instead of issuing a
    range request per block. (datasets' ``xopen`` resolves ``file://`` URLs against the working
    directory, so fsspec is called directly.)
    """
    if "://" not in source:
        if not Path(source).is_file():
            raise FileNotFoundError(f"SA-1B pack {source} does not exist")
        return open(source, "rb")
    import fsspec

    try:
        return fsspec.open(source, "rb", block_size=0).open()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"SA-1B pack {source} does not exist ({error})") from error


def _iter_members(
    source: str, report: ReadReport, *, read_suffixes: tuple[str, ...], max_member_bytes: int
) -> Iterator[tuple[int, str, str, bytes | None]]:
    """Yields ``(image_id, kind, member_name, data)`` for each well-named member of one pack.

    ``data`` is None for members whose kind is not in ``read_suffixes`` (their bytes are skipped
    by the tar stream). Members are read into memory; names are only matched, never used as paths.
    """
    with _open_source(source) as fileobj:
        last_member = "<start of archive>"
        last_offset = 0
        try:
            stream = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 (fileobj is closed above)
            for info in stream:
                stream.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise
                if info.isdir():
                    continue
                last_member, last_offset = info.name, info.offset
                match = _MEMBER_PATTERN.match(posixpath.basename(info.name.replace("\\", "/")))
                if not info.isreg():
                    kind = (
                        f"a link to {info.linkname!r}" if info.issym() or info.islnk() else "a device or FIFO"
                    )
                    reason = f"not a regular file ({kind}; links are never followed), at byte {info.offset}"
                    report.add_issue("not_a_file", source, info.name, reason)
                    continue
                if _unsafe_name(info.name):
                    reason = f"absolute or '..' member name, at byte {info.offset}; SA-1B names are plain"
                    report.add_issue("unsafe_name", source, info.name, reason)
                    continue
                if match is None:
                    report.add_issue(
                        "unexpected_member", source, info.name, "name is not sa_<N>.jpg or sa_<N>.json"
                    )
                    continue
                if info.size > max_member_bytes:
                    report.add_issue(
                        "too_large",
                        source,
                        info.name,
                        f"{info.size} bytes > max_member_bytes={max_member_bytes}",
                    )
                    continue
                kind = match.group(2)
                data = None
                if kind in read_suffixes:
                    extracted = stream.extractfile(info)
                    data = extracted.read() if extracted is not None else b""
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"member {info.name} holds {len(data)} of {info.size} bytes")
                yield int(match.group(1)), kind, info.name, data
            # tarfile ends silently when the data stops at a header boundary or inside a member it
            # skipped; a complete archive has its end-of-archive zero block after the last member.
            position = getattr(stream.fileobj, "pos", None)
            if position is not None and position <= stream.offset:
                raise tarfile.ReadError("no end-of-archive block: the pack stops here")
        except (tarfile.TarError, EOFError, OSError) as error:
            report.num_truncated_sources += 1
            report.add_issue(
                "truncated",
                source,
                last_member,
                f"pack is truncated or corrupt at or after this member (header at byte {last_offset}): "
                f"{error}; the images before it are kept, re-download the pack for the rest",
            )


def _unsafe_name(name: str) -> bool:
    """An absolute or ``..`` member name: never used as a path here, but not what SA-1B holds."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or ".." in posix.split("/")


def _iter_pairs(
    source: str, report: ReadReport, *, read_json: bool, max_member_bytes: int
) -> Iterator[tuple[int, str, bytes, str, bytes | None]]:
    """Groups consecutive members of one id; yields ``(id, jpg_name, jpg, json_name, json)``.

    Pairs without an image or (evaluation view) without a JSON are reported and skipped, as are
    ids seen twice in one pack.
    """
    suffixes = ("jpg", "json") if read_json else ("jpg",)
    seen: set[int] = set()
    current: int | None = None
    members: dict[str, tuple[str, bytes | None]] = {}

    def flush() -> Iterator[tuple[int, str, bytes, str, bytes | None]]:
        if current is None:
            return
        if current in seen:
            name = next(iter(members.values()))[0]
            report.add_issue("duplicate_id", source, name, f"image id {current} appears twice in the pack")
            return
        seen.add(current)
        if "jpg" not in members:
            report.add_issue("missing_image", source, members["json"][0], "JSON without its sa_<N>.jpg image")
            return
        if read_json and "json" not in members:
            report.add_issue("missing_json", source, members["jpg"][0], "image without its sa_<N>.json")
            return
        jpg_name, jpg = members["jpg"]
        json_name, json_data = members.get("json", ("", None))
        yield current, jpg_name, jpg or b"", json_name, json_data

    for image_id, kind, name, data in _iter_members(
        source, report, read_suffixes=suffixes, max_member_bytes=max_member_bytes
    ):
        if image_id != current or kind in members:
            yield from flush()
            current, members = image_id, {}
        members[kind] = (name, data)
    yield from flush()


def probe_image_size(
    data: bytes, member: str, max_image_pixels: int, formats: tuple[str, ...] | None = ("JPEG",)
) -> tuple[int, int]:
    """Returns ``(width, height)`` from the image header without decoding the pixels.

    Args:
        formats: PIL formats accepted (SA-1B holds JPEGs only); None accepts any PIL reads.

    Raises:
        SA1BFormatError: not a readable image, or more than ``max_image_pixels`` pixels
            (decompression bomb).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as image:
                width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SA1BFormatError(f"{member}: not a readable image ({error})") from error
    if width * height > max_image_pixels:
        raise SA1BFormatError(
            f"{member}: {width}x{height} exceeds max_image_pixels={max_image_pixels} (decompression bomb)"
        )
    return width, height


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SA1BFormatError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SA1BFormatError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _numbers(value: Any, length: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise SA1BFormatError(f"{what} must be a list of {length} numbers")
    return tuple(_number(v, what) for v in value)


def _finite(values: tuple[float, ...], what: str) -> tuple[float, ...]:
    if not all(math.isfinite(v) for v in values):
        raise SA1BFormatError(f"{what} must be finite, got {list(values)}")
    return values


def _check_rles(annotations: Sequence[SA1BAnnotation]) -> None:
    """Refuses RLE counts that do not decode to exactly height x width pixels.

    One vectorised pass over the image's masks; only on failure are they checked one by one to
    name the bad annotation (a garbage string would otherwise fail later, in evaluation).
    """
    from sohes_hf.modeling.masks import normalize_rle, normalize_rles

    try:
        normalize_rles([a.segmentation for a in annotations], "annotations")
    except ValueError:
        for index, annotation in enumerate(annotations):
            try:
                normalize_rle(annotation.segmentation)
            except ValueError as error:
                raise SA1BFormatError(
                    f"annotations[{index}] (id {annotation.id}).segmentation: {error}"
                ) from error
        raise


def _parse_annotation(raw: Any, where: str, height: int, width: int) -> SA1BAnnotation:
    if not isinstance(raw, dict):
        raise SA1BFormatError(f"{where} must be an object")
    segmentation = raw.get("segmentation")
    if not isinstance(segmentation, dict) or not isinstance(segmentation.get("counts"), str):
        raise SA1BFormatError(f"{where}.segmentation must be a COCO RLE with str counts")
    size = segmentation.get("size")
    if not isinstance(size, list) or [_integer(s, f"{where}.segmentation.size") for s in size] != [
        height,
        width,
    ]:
        raise SA1BFormatError(
            f"{where}.segmentation.size must equal the image [height, width]=[{height}, {width}]"
        )
    area = _number(raw.get("area"), f"{where}.area")
    if not math.isfinite(area) or area < 0:
        raise SA1BFormatError(f"{where} (id {raw.get('id')!r}).area must be finite and >= 0, got {area}")
    points = raw.get("point_coords")
    if not isinstance(points, list):
        raise SA1BFormatError(f"{where}.point_coords must be a list of [x, y]")
    return SA1BAnnotation(
        id=_integer(raw.get("id"), f"{where}.id"),
        segmentation={"size": [height, width], "counts": segmentation["counts"]},
        bbox=_finite(_numbers(raw.get("bbox"), 4, f"{where}.bbox"), f"{where}.bbox"),  # type: ignore[arg-type]
        area=area,
        predicted_iou=_number(raw.get("predicted_iou"), f"{where}.predicted_iou"),
        stability_score=_number(raw.get("stability_score"), f"{where}.stability_score"),
        point_coords=tuple(_numbers(p, 2, f"{where}.point_coords") for p in points),  # type: ignore[misc]
        crop_box=_numbers(raw.get("crop_box"), 4, f"{where}.crop_box"),  # type: ignore[arg-type]
    )


def parse_sa1b_json(
    data: bytes, member: str, expected_image_id: int
) -> tuple[SA1BImageInfo, list[SA1BAnnotation]]:
    """Validates one SA-1B JSON; ints and floats are both accepted where the schema has numbers.

    Raises:
        SA1BFormatError: the message starts with ``member`` and names the offending field.
    """
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), dict):
            raise SA1BFormatError("top level must be an object with an 'image' object")
        image = raw["image"]
        info = SA1BImageInfo(
            image_id=_integer(image.get("image_id"), "image.image_id"),
            width=_integer(image.get("width"), "image.width"),
            height=_integer(image.get("height"), "image.height"),
            file_name=str(image.get("file_name")),
        )
        if info.image_id != expected_image_id or info.file_name != f"sa_{expected_image_id}.jpg":
            raise SA1BFormatError(
                f"image.image_id/file_name ({info.image_id}, {info.file_name!r}) do not match the member name"
            )
        if info.width <= 0 or info.height <= 0:
            raise SA1BFormatError("image.width and image.height must be positive")
        annotations = raw.get("annotations")
        if not isinstance(annotations, list):
            raise SA1BFormatError("'annotations' must be a list")
        parsed = [
            _parse_annotation(a, f"annotations[{i}]", info.height, info.width)
            for i, a in enumerate(annotations)
        ]
        _check_rles(parsed)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SA1BFormatError(f"{member}: not valid JSON ({error})") from error
    except SA1BFormatError as error:
        raise SA1BFormatError(f"{member}: {error}") from error
    return info, parsed


def _validate_limits(max_image_pixels: int, max_member_bytes: int) -> None:
    if max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    if max_member_bytes <= 0:
        raise ValueError(f"max_member_bytes must be positive, got {max_member_bytes}")


def iter_sa1b_images(
    sources: Sequence[str],
    report: ReadReport | None = None,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[SA1BImage]:
    """Training view: yields the images of SA-1B packs, never their human annotations.

    Args:
        sources: pack paths or URLs, read in order, each streamed once.
        report: receives counts and issues (member names) of skipped input.
        max_image_pixels: larger images are skipped as decompression bombs.
        max_member_bytes: larger members are skipped unread.
    """
    _validate_limits(max_image_pixels, max_member_bytes)
    report = report if report is not None else ReadReport()
    for source in sources:
        for image_id, jpg_name, jpg, _, _ in _iter_pairs(
            source, report, read_json=False, max_member_bytes=max_member_bytes
        ):
            try:
                width, height = probe_image_size(jpg, jpg_name, max_image_pixels)
            except SA1BFormatError as error:
                report.add_issue("bad_image", source, jpg_name, str(error))
                continue
            report.num_images += 1
            yield SA1BImage(image_id, f"sa_{image_id}.jpg", width, height, jpg, source)


def iter_sa1b_records(
    sources: Sequence[str],
    report: ReadReport | None = None,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[SA1BRecord]:
    """Evaluation view: yields images with their validated human annotations.

    A JSON that breaks the schema, or whose image size differs from the JPEG header, is reported
    with its member name and the pair is skipped.
    """
    _validate_limits(max_image_pixels, max_member_bytes)
    report = report if report is not None else ReadReport()
    for source in sources:
        for image_id, jpg_name, jpg, json_name, json_data in _iter_pairs(
            source, report, read_json=True, max_member_bytes=max_member_bytes
        ):
            try:
                width, height = probe_image_size(jpg, jpg_name, max_image_pixels)
            except SA1BFormatError as error:
                report.add_issue("bad_image", source, jpg_name, str(error))
                continue
            try:
                info, annotations = parse_sa1b_json(json_data or b"", json_name, image_id)
                if (info.width, info.height) != (width, height):
                    raise SA1BFormatError(
                        f"{json_name}: image size {info.width}x{info.height} differs from the "
                        f"JPEG's {width}x{height}"
                    )
            except SA1BFormatError as error:
                report.add_issue("bad_json", source, json_name, str(error))
                continue
            report.num_images += 1
            image = SA1BImage(image_id, f"sa_{image_id}.jpg", width, height, jpg, source)
            yield SA1BRecord(image=image, annotations=tuple(annotations))
