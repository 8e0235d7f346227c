"""Unlabeled image inputs of self-exploration: folders, list files and SA-1B tar packs.

Inputs (paper section 3.1 works on raw images only):

* a folder: every image file below it (recursive), sorted by relative path;
* a list file (``.txt``/``.lst``): one image path per line, relative to the list file's folder
  unless absolute; blank lines and lines starting with ``#`` are ignored;
* an SA-1B tar pack (``.tar``): its ``sa_N.jpg`` members, read in memory with
  ``TarFile.extractfile`` (nothing is ever extracted to disk by member name); other regular
  members (the ``sa_N.json`` annotations) are ignored. A pack cut off mid-member (interrupted
  download) keeps the images before the cut; links, devices, ``..``/absolute names and
  duplicated image names are skipped; each is reported (see :mod:`~.tar_scan`);
* a single image file.

Image ids: a file named ``sa_N.jpg`` (SA-1B) gets id N; any other file gets its 1-based position
in the full listing of all inputs. Two images with one id raise :class:`InputListingError`.

Bad parts of an input do not stop a job: an image member that cannot be used is still listed,
with :attr:`ImageEntry.problem` set, so the reader refuses it and the job's skip report names it
under its image id; problems of the pack itself (the cut, unused links) are appended to the
``problems`` list given to :func:`list_images`.

Pixels are decoded with Pillow in their stored orientation (EXIF rotation is not applied, as in
pycocotools/SA-1B annotations). Images over :data:`DEFAULT_MAX_IMAGE_PIXELS` pixels are refused
before decoding (decompression-bomb guard), as are images whose shorter side is too small.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from sohes_hf.data.tar_scan import SA1B_IMAGE_NAME, InputProblem, scan_tar
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIST_EXTENSIONS = (".txt", ".lst")
TAR_EXTENSIONS = (".tar",)
# 100 megapixels: 30x an SA-1B image (~1500 x 2250); larger files are refused unread because a
# decoded 8-bit RGB image takes 3 bytes per pixel (a "bomb" of a few KB can claim gigabytes).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
# 256 MiB: an SA-1B JPEG is ~0.5 MB and a 100-megapixel PNG at most ~300 MB; anything larger is
# refused unread, so a listed /dev/zero or a huge file cannot exhaust memory (same bound as the
# SA-1B streaming reader's members).
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
# A list file holds paths (~100 bytes a line): 1 GiB is ~10 million images.
MAX_LIST_FILE_BYTES = 1024 * 1024 * 1024
_SA1B_NAME = SA1B_IMAGE_NAME


class InputListingError(ValueError):
    """The inputs cannot be listed at all (missing, unknown kind, two images with one id)."""


class ImageReadError(Exception):
    """An image could not be used; ``reason`` says why (written to the skipped-file report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageEntry:
    """One input image, not yet read.

    Attributes:
        image_id: COCO image id (N of ``sa_N.jpg``, else 1-based position in the listing).
        file_name: COCO ``file_name``: ``sa_N.jpg`` for tar members, the path relative to the
            folder for folder inputs, the line as written for list files, the name for files.
        path: the image file, or the tar pack holding it.
        member: the tar member name, or ``None`` for plain files.
        problem: why the image cannot be used, found while listing (a cut, a link, a duplicate
            name, a list-file line that is not a regular file); the reader refuses it with this.
    """

    image_id: int
    file_name: str
    path: str
    member: str | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        """Unique, stable identity of the image (used by resume bookkeeping)."""
        return f"{self.path}::{self.member}" if self.member is not None else self.path


_Named = tuple[str, str, str | None, str | None]  # (file_name, path, member, problem)


def list_images(inputs: Sequence[str | Path], problems: list[InputProblem] | None = None) -> list[ImageEntry]:
    """Lists the images of folders, list files, tar packs and image files, in a stable order.

    Args:
        inputs: folders, list files, tar packs, image files.
        problems: receives the parts of the inputs that are not used (each also logged).

    Raises:
        FileNotFoundError: an input does not exist.
        InputListingError: an input is of an unknown kind, is not a readable tar pack, or two
            images share an id.
    """
    if len(inputs) == 0:
        raise InputListingError("inputs: no image inputs given")
    found: list[InputProblem] = []
    named: list[_Named] = []
    for item in inputs:
        named.extend(_list_input(Path(item), found))
    for item_problem in found:
        where = "" if item_problem.member is None else f" member {item_problem.member!r}"
        logger.warning(
            "input %s%s (offset %s): %s", item_problem.source, where, item_problem.offset, item_problem.reason
        )
    if problems is not None:
        problems.extend(found)
    entries = []
    owners: dict[int, str] = {}
    names: dict[str, str] = {}  # key -> file_name: the journal identifies images by key
    for position, (file_name, path, member, problem) in enumerate(named, start=1):
        match = _SA1B_NAME.match(Path(file_name).name)
        image_id = int(match.group(1)) if match else position
        entry = ImageEntry(image_id=image_id, file_name=file_name, path=path, member=member, problem=problem)
        if entry.key in names:
            reason = f"{file_name!r} is the same file as {names[entry.key]!r}, listed earlier; used once"
            logger.warning("input %s: %s", entry.key, reason)
            if problems is not None:
                problems.append(InputProblem(entry.key, None, None, reason))
            continue
        names[entry.key] = file_name
        if image_id in owners:
            raise InputListingError(
                f"inputs: image id {image_id} given to both {owners[image_id]} and {entry.key}; "
                "give each image once (sa_N.jpg files take id N)"
            )
        owners[image_id] = entry.key
        entries.append(entry)
    return entries


def shard_entries(entries: Sequence[ImageEntry], num_shards: int, shard_index: int) -> list[ImageEntry]:
    """The images of shard ``shard_index`` out of ``num_shards``: every ``num_shards``-th image.

    Round-robin over the stable listing, so shards are disjoint, cover every image and differ in
    size by at most one.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards: must be a positive integer, got {num_shards!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index: must be in [0, {num_shards - 1}], got {shard_index!r}")
    return list(entries[shard_index::num_shards])


class ImageReader:
    """Reads :class:`ImageEntry` pixels; keeps tar packs open between reads (use as a context).

    Args:
        max_image_pixels: width x height above which an image is refused before decoding.
        min_image_side: shorter side (pixels) below which an image is refused as tiny.
        max_file_bytes: image files (or tar members) larger than this are refused unread.
    """

    def __init__(
        self,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_image_side: int = 1,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        for name, value in (
            ("max_image_pixels", max_image_pixels),
            ("min_image_side", min_image_side),
            ("max_file_bytes", max_file_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        self.max_image_pixels = max_image_pixels
        self.min_image_side = min_image_side
        self.max_file_bytes = max_file_bytes
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the open tar packs."""
        for tar, _ in self._tars.values():
            tar.close()
        self._tars.clear()

    def read(self, entry: ImageEntry) -> np.ndarray:
        """Decodes an image into RGB (H, W, 3) uint8.

        Raises:
            ImageReadError: unreadable, corrupt, too large (bomb guard) or too small, or refused
                while listing (:attr:`ImageEntry.problem`).
        """
        if entry.problem is not None:
            raise ImageReadError(entry.problem)
        data = self._read_bytes(entry)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size  # header only: nothing decoded yet
                    self._check_size(width, height)
                    pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        except ImageReadError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"too large: {error}") from error
        except UnidentifiedImageError as error:  # its message names an in-memory buffer's address
            raise ImageReadError(
                "cannot decode: UnidentifiedImageError: not an image format Pillow recognises"
            ) from error
        except (OSError, ValueError, SyntaxError) as error:  # PIL signals corrupt data with these
            raise ImageReadError(f"cannot decode: {type(error).__name__}: {error}") from error
        return pixels

    def probe(self, entry: ImageEntry) -> tuple[int, int]:
        """Checks that an image opens, from its header only: ``(width, height)``, nothing decoded.

        Why: a zero-byte, non-image or cut-header file found at dataset load is left out before
        training starts instead of failing at some step of a multi-day run. A file whose pixel
        data is cut passes (only decoding finds that). Plain files are opened with ``O_NONBLOCK``
        and ``fstat``-checked like :func:`read_regular_file`; Pillow reads a few KB of them.

        Raises:
            ImageReadError: refused while listing, not a regular file, too large (file or
                pixels), too small, or not an image Pillow can open.
        """
        if entry.problem is not None:
            raise ImageReadError(entry.problem)
        try:
            handle: IO[bytes]
            if entry.member is None:
                raw = _open_regular_file(entry.path, self.max_file_bytes, "list image files only")
                handle = io.BufferedReader(raw)
            else:  # only the member's first bytes are read (SA-1B packs are not read whole)
                handle = self._open_member(entry)
            with warnings.catch_warnings(), handle:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(handle) as image:
                    width, height = image.size
        except ImageReadError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"too large: {error}") from error
        except tarfile.TarError as error:
            raise ImageReadError(f"cannot read: {type(error).__name__}: {error}") from error
        except UnidentifiedImageError as error:  # its message names the file descriptor, not the file
            raise ImageReadError(
                "cannot open: UnidentifiedImageError: not an image format Pillow recognises"
            ) from error
        except (OSError, ValueError, SyntaxError) as error:  # PIL signals bad headers with these
            raise ImageReadError(f"cannot open: {type(error).__name__}: {error}") from error
        self._check_size(width, height)
        return width, height

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.max_image_pixels:
            raise ImageReadError(
                f"too large: {width}x{height} = {width * height} pixels exceeds the limit "
                f"of {self.max_image_pixels} (decompression-bomb guard)"
            )
        if min(width, height) < self.min_image_side:
            raise ImageReadError(f"too small: {width}x{height}, shorter side below {self.min_image_side} px")

    def _read_bytes(self, entry: ImageEntry) -> bytes:
        try:
            if entry.member is None:
                return read_regular_file(entry.path, self.max_file_bytes)
            handle = self._open_member(entry)
            with handle:
                data = handle.read()
            size = self._tars[entry.path][1][str(entry.member)].size
            if len(data) != size:
                raise ImageReadError(f"tar member {entry.member!r} holds {len(data)} of {size} bytes")
            return data
        except (OSError, tarfile.TarError) as error:
            raise ImageReadError(f"cannot read: {type(error).__name__}: {error}") from error

    def _open_member(self, entry: ImageEntry) -> IO[bytes]:
        """The open tar member of ``entry`` (a regular file: scan_tar keeps no links or devices)."""
        tar, members = self._open_tar(entry.path)
        info = members.get(str(entry.member))
        if info is None:
            raise ImageReadError(f"tar member {entry.member!r} not found in {entry.path} (pack changed?)")
        if info.size > self.max_file_bytes:
            raise ImageReadError(
                f"too large: tar member {entry.member!r} holds {info.size} bytes, over the limit of "
                f"{self.max_file_bytes} (max_file_bytes); raise the limit if the file is genuine"
            )
        handle = tar.extractfile(info)
        if handle is None:
            raise ImageReadError(f"tar member {entry.member!r} is not a regular file")
        return handle

    def _open_tar(self, path: str) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
        if path not in self._tars:
            images = scan_tar(Path(path)).images  # getmembers() would raise on a cut pack
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - kept open across reads, closed in close()
            self._tars[path] = (tar, images)
        return self._tars[path]


def _list_input(path: Path, problems: list[InputProblem]) -> Iterable[_Named]:
    if not path.exists():
        raise FileNotFoundError(f"inputs: {path} does not exist")
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            logger.warning("no image files under %s", path)
        return [(p.relative_to(path).as_posix(), str(p.resolve()), None, None) for p in files]
    suffix = path.suffix.lower()
    if suffix in TAR_EXTENSIONS:
        return _list_tar(path, problems)
    if suffix in LIST_EXTENSIONS:
        return _list_file(path, problems)
    if suffix in IMAGE_EXTENSIONS:
        return [(path.name, str(path.resolve()), None, None)]
    accepted = ", ".join(IMAGE_EXTENSIONS + LIST_EXTENSIONS + TAR_EXTENSIONS)
    raise InputListingError(f"inputs: {path} is not a folder and its extension is not one of {accepted}")


def _list_tar(path: Path, problems: list[InputProblem]) -> list[_Named]:
    try:
        scan = scan_tar(path)
    except (tarfile.TarError, OSError) as error:
        raise InputListingError(
            f"inputs: {path} is not a readable tar pack ({error}); re-download it or leave it out"
        ) from error
    problems.extend(scan.problems)
    resolved = str(path.resolve())
    members = [(name, None) for name in scan.images] + scan.bad_images
    members.sort(key=lambda item: _sa1b_number(item[0]))
    if not scan.images:
        logger.warning("no usable sa_N.jpg members in %s", path)
    return [(posixpath.basename(name.replace("\\", "/")), resolved, name, why) for name, why in members]


def read_regular_file(path: str | Path, max_bytes: int, hint: str = "list image files only") -> bytes:
    """Reads a whole file that must be a regular file of at most ``max_bytes`` bytes.

    Why: a listed path may name a FIFO (``open`` would wait forever for a writer), a device such
    as ``/dev/zero`` (``read`` would run out of memory, again at every resume) or a huge file.
    The path is opened with ``O_NONBLOCK`` (a FIFO then opens at once) and checked with
    ``fstat`` on the open descriptor, so a file swapped in after a ``stat`` is caught too; at most
    ``max_bytes + 1`` bytes are ever read.

    Raises:
        ImageReadError: missing, not a regular file, or too large.
    """
    with _open_regular_file(path, max_bytes, hint) as handle:
        status = os.fstat(handle.fileno())
        chunks = []
        # one byte past the stated size catches a file that grew; reads never ask for more
        # than that (an unbuffered read allocates the size it is asked for)
        remaining = min(status.st_size, max_bytes) + 1
        while remaining > 0:
            chunk = handle.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
    if len(data) != status.st_size:  # grew or shrank after fstat (still being written?)
        raise ImageReadError(
            f"changed size while read ({status.st_size} bytes, then {len(data)}); retry later"
        )
    return data


def _open_regular_file(path: str | Path, max_bytes: int, hint: str) -> io.FileIO:
    """Opens a regular file of at most ``max_bytes`` bytes, unbuffered (see :func:`read_regular_file`).

    Raises:
        ImageReadError: missing, not a regular file, or too large.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise ImageReadError(f"cannot read: {type(error).__name__}: {error}") from error
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_size > max_bytes:
        os.close(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ImageReadError(f"not a regular file ({_file_kind(status.st_mode)}); {hint}")
        raise ImageReadError(
            f"too large: {status.st_size} bytes, over the limit of {max_bytes} (max_file_bytes); "
            "raise the limit if the file is genuine"
        )
    return io.FileIO(descriptor, "rb")


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _list_file(path: Path, problems: list[InputProblem]) -> list[_Named]:
    """Lists a list file's paths; a line that is not valid UTF-8 is reported and skipped.

    Raises:
        InputListingError: the list file itself is not a regular file or too large.
    """
    try:
        data = read_regular_file(path, MAX_LIST_FILE_BYTES, hint="give a list file written to disk")
    except ImageReadError as error:
        raise InputListingError(f"inputs: list file {path}: {error.reason}") from error
    listed: list[_Named] = []
    for number, raw_bytes in enumerate(data.splitlines(), start=1):
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"line {number} is not valid UTF-8 ({error}); skipped: write the list in UTF-8"
            problems.append(InputProblem(str(path), None, number, reason))
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            problems.append(InputProblem(str(path), None, number, f"line {number} holds a NUL byte; skipped"))
            continue
        image_path = Path(line) if Path(line).is_absolute() else path.parent / line
        # A listed file that is missing, or not a regular file, is reported when read (skipped).
        listed.append((line, str(image_path.resolve()), None, None))
    return listed


def _sa1b_number(name: str) -> int:
    match = _SA1B_NAME.match(Path(name).name)
    return int(match.group(1)) if match else -1
