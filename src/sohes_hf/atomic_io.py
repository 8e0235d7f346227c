"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one.

Every long job in sohes-hf (exploration shards, training records, evaluation results, converted
datasets) writes through these helpers: data go to a temporary file in the target's folder, are
flushed to disk, and the file is renamed onto the target with ``os.replace``, which is atomic
on POSIX and Windows when both paths are on one file system.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` when the block succeeds.

    For writers that want a file name rather than bytes (pyarrow, PIL, cv2). On an exception the
    temporary file is removed and ``path`` is untouched. The result gets the usual permissions
    (0o666 minus the umask), not ``mkstemp``'s 0o600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (flushed to disk first); returns the path."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(
    path: str | os.PathLike[str],
    payload: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Writes ``payload`` as JSON to ``path`` atomically; returns the path.

    NaN and infinity are refused (they are not JSON): convert undefined values to None first.
    """
    text = json.dumps(payload, indent=indent, allow_nan=False, default=default)
    return write_text_atomic(path, text + "\n")


_TEMPORARY_TAIL = re.compile(r"^\.[a-z0-9_]{8}\.tmp$")  # what mkstemp adds after ``.{name}``


def stale_temporary_files(target: str | os.PathLike[str]) -> list[Path]:
    """The temporary files that :func:`atomic_path` made for ``target`` and did not remove.

    A process killed (SIGKILL, power loss) between creating its temporary file and the rename
    leaves ``.{name}.XXXXXXXX.tmp`` beside the target, as large as what it was writing. Only the
    caller can tell that none is still being written (e.g. it holds the lock of every writer of
    ``target``), so this only lists them, by this module's exact naming pattern.
    """
    path = Path(target)
    head = f".{path.name}"
    if not path.parent.is_dir():
        return []
    return sorted(
        candidate
        for candidate in path.parent.iterdir()
        if candidate.name.startswith(head)
        and _TEMPORARY_TAIL.match(candidate.name[len(head) :])
        and candidate.is_file()
    )
