"""Lists the image members of a tar pack that may be cut off or hold hostile members.

An interrupted download is the most common SA-1B fault, so a pack is scanned header by header
and everything readable before the cut is kept: ``tarfile``'s ``getmembers()`` would raise on
the cut (losing every good image before it) and, for a cut at a header boundary, would end
silently without saying that images are missing. The scan instead checks that each member's
data lies inside the file and that the archive ends with its end-of-archive zero block.

Members that are not used, each reported with pack, member and byte offset:

* symbolic and hard links, devices and FIFOs: links are never followed (a link could point out
  of the pack, or to another member under a second name);
* names that are absolute or hold a ``..`` component (nothing is extracted by name, but such a
  member is not what an SA-1B pack holds and is a sign of a crafted file);
* image names that occur more than once in the pack (which copy is meant is unknown);
* the member the pack is cut in, and the fact that members after the cut are missing.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

SA1B_IMAGE_NAME = re.compile(r"^sa_(\d+)\.jpg$")
_BLOCK = tarfile.BLOCKSIZE
_CUT = "the members after it are missing (interrupted download?): re-download the pack"
_LOST = "the members after it are not read: re-download the pack"


@dataclass(frozen=True)
class InputProblem:
    """A part of an input that is not used: where it is and why (the skip report's ``inputs``).

    Attributes:
        source: the pack (or list file) it belongs to.
        member: the tar member name or list-file line, or None for the whole pack.
        offset: byte offset of the member's header in the pack (list files: the line number);
            where the pack is cut or unreadable is said in ``reason``.
        reason: what is wrong and what to do.
    """

    source: str
    member: str | None
    offset: int | None
    reason: str


@dataclass
class TarScan:
    """The outcome of :func:`scan_tar`.

    Attributes:
        images: usable ``sa_N.jpg`` members, by member name.
        bad_images: ``(member name, reason)`` of image members that are not used; each is still
            listed (as a skipped image) so it shows in the skip report under its image id.
        problems: every unused member and the cut, for the skip report's ``inputs`` section.
    """

    images: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)


def _unsafe_name(name: str) -> bool:
    posix = name.replace("\\", "/")
    return posix.startswith("/") or ".." in posix.split("/") or re.match(r"^[A-Za-z]:", posix) is not None


def _kind(info: tarfile.TarInfo) -> str | None:
    """Why a member is not a plain file, or None when it is one."""
    if info.issym():
        return f"a symbolic link (to {info.linkname!r}); links are not followed"
    if info.islnk():
        return f"a hard link (to {info.linkname!r}); links are not followed"
    if info.ischr() or info.isblk():
        return "a device file"
    if info.isfifo():
        return "a FIFO"
    if not info.isreg():
        return f"not a regular file (tar type {info.type!r})"
    return None


def _headers(path: Path, scan: TarScan) -> list[tarfile.TarInfo]:
    """Reads the member headers up to the end of the archive or the cut; records the cut.

    Raises:
        tarfile.ReadError: the first header is unreadable (not a tar pack at all).
    """
    source = str(path)
    size = path.stat().st_size
    infos: list[tarfile.TarInfo] = []
    with tarfile.open(path, mode="r:") as tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError) as error:
                last, last_offset = (infos[-1].name, infos[-1].offset) if infos else (None, 0)
                reason = f"unreadable tar data at byte {tar.offset}, after this member ({error}); {_LOST}"
                scan.problems.append(InputProblem(source, last, last_offset, reason))
                return infos
            if info is None:
                break
            infos.append(info)
            end = info.offset_data + (info.size if info.isreg() else 0)
            if end > size:
                reason = (
                    f"the pack is cut off: it ends at byte {size} inside this member, whose data runs "
                    f"to byte {end}; {_CUT}"
                )
                scan.problems.append(InputProblem(source, info.name, info.offset, reason))
                return infos
        end_of_members = tar.offset
    with open(path, "rb") as handle:
        handle.seek(end_of_members)
        block = handle.read(_BLOCK)
    last, last_offset = (infos[-1].name, infos[-1].offset) if infos else (None, 0)
    if len(block) < _BLOCK:
        reason = (
            f"the pack is cut off: it ends at byte {size}, after this member, with no "
            f"end-of-archive block; {_CUT}"
        )
        scan.problems.append(InputProblem(source, last, last_offset, reason))
    elif block.count(0) != _BLOCK:
        reason = f"unreadable tar header at byte {end_of_members}, after this member; {_LOST}"
        scan.problems.append(InputProblem(source, last, last_offset, reason))
    return infos


def scan_tar(path: Path) -> TarScan:
    """Lists the ``sa_N.jpg`` members of a pack and everything in it that is not used.

    Raises:
        tarfile.ReadError: not a tar pack (its first header is unreadable).
    """
    scan = TarScan()
    size = path.stat().st_size
    source = str(path)
    by_image: dict[str, list[tarfile.TarInfo]] = {}
    for info in _headers(path, scan):
        if info.isdir():
            continue
        image_name = SA1B_IMAGE_NAME.match(posixpath.basename(info.name.replace("\\", "/")))
        reason = _kind(info)
        if reason is None and _unsafe_name(info.name):
            reason = "an absolute or '..' member name (an SA-1B pack holds plain sa_N.jpg/json names)"
        if reason is not None:
            scan.problems.append(InputProblem(source, info.name, info.offset, f"skipped: {reason}"))
        if image_name is not None:
            by_image.setdefault(image_name.group(0), []).append(info)
    for infos in by_image.values():
        first = infos[0]
        if len(infos) > 1:
            where = ", ".join(f"{i.name!r} at byte {i.offset}" for i in infos)
            reason = (
                f"image name occurs {len(infos)} times in the pack ({where}); which copy is meant is unknown"
            )
            scan.problems.append(InputProblem(source, first.name, first.offset, f"skipped: {reason}"))
            scan.bad_images.append((first.name, f"{path}: {reason}"))
            continue
        reason = _kind(first)
        if reason is None and _unsafe_name(first.name):
            reason = "an absolute or '..' member name"
        if reason is None and first.offset_data + first.size > size:
            reason = (
                f"cut off by the end of the pack at byte {size} (its data runs to byte "
                f"{first.offset_data + first.size}): re-download the pack"
            )
        if reason is not None:
            where = f"{path}: member {first.name!r} at byte {first.offset}"
            scan.bad_images.append((first.name, f"{where}: {reason}"))
        else:
            scan.images[first.name] = first
    return scan
