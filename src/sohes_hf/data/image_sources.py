"""Unlabeled image inputs of self-exploration: folders, list files and SA-1B tar packs.

Inputs (paper section 3.1 works on raw images only):

* a folder: every image file below it (recursive), sorted by relative path;
* a list file (``.txt``/``.lst``): one image path per line, relative to the list file's folder
  unless absolute; blank lines and lines starting with ``#`` are ignored;
* an SA-1B tar pack (``.tar``): its ``sa_N.jpg`` members, read in memory with
  ``TarFile.extractfile`` (nothing is ever extracted to disk by member name, so a hostile member
  name such as ``../../x`` cannot write anywhere); other members (the ``sa_N.json`` annotations)
  are ignored;
* a single image file.

Image ids: a file named ``sa_N.jpg`` (SA-1B) gets id N; any other file gets its 1-based position
in the full listing of all inputs. Two images with one id raise ``ValueError``.

Pixels are decoded with Pillow in their stored orientation (EXIF rotation is not applied, as in
pycocotools/SA-1B annotations). Images over :data:`DEFAULT_MAX_IMAGE_PIXELS` pixels are refused
before decoding (decompression-bomb guard), as are images whose shorter side is too small.
"""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIST_EXTENSIONS = (".txt", ".lst")
TAR_EXTENSIONS = (".tar",)
# 100 megapixels: 30x an SA-1B image (~1500 x 2250); larger files are refused unread because a
# decoded 8-bit RGB image takes 3 bytes per pixel (a "bomb" of a few KB can claim gigabytes).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
_SA1B_NAME = re.compile(r"^sa_(\d+)\.jpg$")


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
    """

    image_id: int
    file_name: str
    path: str
    member: str | None = None

    @property
    def key(self) -> str:
        """Unique, stable identity of the image (used by resume bookkeeping)."""
        return f"{self.path}::{self.member}" if self.member is not None else self.path


def list_images(inputs: Sequence[str | Path]) -> list[ImageEntry]:
    """Lists the images of folders, list files, tar packs and image files, in a stable order.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: an input is of an unknown kind or two images share an id.
    """
    if len(inputs) == 0:
        raise ValueError("inputs: no image inputs given")
    named: list[tuple[str, str, str | None]] = []  # (file_name, path, member)
    for item in inputs:
        named.extend(_list_input(Path(item)))
    entries = []
    owners: dict[int, str] = {}
    for position, (file_name, path, member) in enumerate(named, start=1):
        match = _SA1B_NAME.match(Path(file_name).name)
        image_id = int(match.group(1)) if match else position
        entry = ImageEntry(image_id=image_id, file_name=file_name, path=path, member=member)
        if image_id in owners:
            raise ValueError(f"inputs: image id {image_id} given to both {owners[image_id]} and {entry.key}")
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
    """

    def __init__(self, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_image_side: int = 1) -> None:
        if (
            isinstance(max_image_pixels, bool)
            or not isinstance(max_image_pixels, int)
            or max_image_pixels < 1
        ):
            raise ValueError(f"max_image_pixels: must be a positive integer, got {max_image_pixels!r}")
        if isinstance(min_image_side, bool) or not isinstance(min_image_side, int) or min_image_side < 1:
            raise ValueError(f"min_image_side: must be a positive integer, got {min_image_side!r}")
        self.max_image_pixels = max_image_pixels
        self.min_image_side = min_image_side
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
            ImageReadError: unreadable, corrupt, too large (bomb guard) or too small.
        """
        data = self._read_bytes(entry)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size  # header only: nothing decoded yet
                    if width * height > self.max_image_pixels:
                        raise ImageReadError(
                            f"too large: {width}x{height} = {width * height} pixels exceeds the limit "
                            f"of {self.max_image_pixels} (decompression-bomb guard)"
                        )
                    if min(width, height) < self.min_image_side:
                        raise ImageReadError(
                            f"too small: {width}x{height}, shorter side below {self.min_image_side} px"
                        )
                    pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        except ImageReadError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"too large: {error}") from error
        except (OSError, ValueError, SyntaxError) as error:  # PIL signals corrupt data with these
            raise ImageReadError(f"cannot decode: {type(error).__name__}: {error}") from error
        return pixels

    def _read_bytes(self, entry: ImageEntry) -> bytes:
        try:
            if entry.member is None:
                return Path(entry.path).read_bytes()
            tar, members = self._open_tar(entry.path)
            info = members.get(entry.member)
            if info is None:
                raise ImageReadError(f"tar member {entry.member!r} not found in {entry.path}")
            handle = tar.extractfile(info)
            if handle is None:
                raise ImageReadError(f"tar member {entry.member!r} is not a regular file")
            with handle:
                return handle.read()
        except (OSError, tarfile.TarError) as error:
            raise ImageReadError(f"cannot read: {type(error).__name__}: {error}") from error

    def _open_tar(self, path: str) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
        if path not in self._tars:
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - kept open across reads, closed in close()
            self._tars[path] = (tar, {info.name: info for info in tar.getmembers() if info.isfile()})
        return self._tars[path]


def _list_input(path: Path) -> Iterable[tuple[str, str, str | None]]:
    if not path.exists():
        raise FileNotFoundError(f"inputs: {path} does not exist")
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            logger.warning("no image files under %s", path)
        return [(p.relative_to(path).as_posix(), str(p.resolve()), None) for p in files]
    suffix = path.suffix.lower()
    if suffix in TAR_EXTENSIONS:
        return _list_tar(path)
    if suffix in LIST_EXTENSIONS:
        return _list_file(path)
    if suffix in IMAGE_EXTENSIONS:
        return [(path.name, str(path.resolve()), None)]
    accepted = ", ".join(IMAGE_EXTENSIONS + LIST_EXTENSIONS + TAR_EXTENSIONS)
    raise ValueError(f"inputs: {path} is not a folder and its extension is not one of {accepted}")


def _list_tar(path: Path) -> list[tuple[str, str, str | None]]:
    try:
        with tarfile.open(path, mode="r:") as tar:
            names = [info.name for info in tar.getmembers() if info.isfile()]
    except tarfile.TarError as error:
        raise ValueError(f"inputs: {path} is not a readable tar pack: {error}") from error
    members = sorted((n for n in names if _SA1B_NAME.match(Path(n).name)), key=_sa1b_number)
    if not members:
        logger.warning("no sa_N.jpg members in %s", path)
    resolved = str(path.resolve())
    return [(Path(name).name, resolved, name) for name in members]


def _list_file(path: Path) -> list[tuple[str, str, str | None]]:
    listed: list[tuple[str, str, str | None]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        image_path = Path(line) if Path(line).is_absolute() else path.parent / line
        # A listed file that is missing is reported when read (skipped), not fatal for the job.
        listed.append((line, str(image_path.resolve()), None))
    return listed


def _sa1b_number(name: str) -> int:
    match = _SA1B_NAME.match(Path(name).name)
    return int(match.group(1)) if match else -1
