"""One writer per exploration shard: an OS lock on ``<shard>.lock`` held while the shard runs.

Two ``sohes explore`` processes on one shard (a command started twice, a relaunched node whose
old process still runs) would both append to its journal: every image twice, and a resume index
pointing into the other process's lines. :func:`hold_shard_lock` takes an exclusive ``flock``
on the shard's lock file for the whole run; a second process fails at once with
:class:`ShardBusyError` naming the PID written in the file. The kernel releases a ``flock`` when
its process ends, however it ends (SIGKILL too), so a killed run never leaves a stale lock; the
lock file itself is removed on a normal exit and harmless when left behind.

While the lock is held no other process writes the shard's files, so any temporary file of
theirs (:func:`~sohes_hf.atomic_io.stale_temporary_files`) is a leftover of a killed run and is
removed at start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sohes_hf.atomic_io import stale_temporary_files
from sohes_hf.logging_utils import get_logger
from sohes_hf.pseudo_labeling.explore_journal import ExploreOutputError

logger = get_logger(__name__)


class ShardBusyError(ExploreOutputError):
    """Another living process holds the shard's lock."""


@contextmanager
def hold_shard_lock(lock_path: Path, shard_files: Sequence[Path] = ()) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` (PID inside) and sweeps the shard's stale temp files.

    Args:
        lock_path: the shard's ``.lock`` file (created if needed).
        shard_files: the files only the lock holder writes; their leftover temporary files
            are deleted once the lock is taken.

    Raises:
        ShardBusyError: another process holds the lock (the message names its PID).
    """
    if sys.platform == "win32":  # no flock: run unguarded rather than refuse
        logger.warning("no shard lock on Windows: do not run two jobs on %s at once", lock_path.parent)
        yield
        return
    import fcntl

    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown (starting)"
            os.close(fd)
            raise ShardBusyError(
                f"output: {lock_path.parent} is being written by another `sohes explore` process "
                f"(PID {holder}, lock file {lock_path.name}); wait for it to finish or stop it, "
                "then re-run to resume"
            ) from None
        # The previous holder may have removed the file between our open and flock: then the
        # lock is on an orphaned inode and a third process could lock a new file. Retry.
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        _sweep(shard_files)
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still locked, so no one locks a doomed file
        os.close(fd)


def _sweep(shard_files: Sequence[Path]) -> None:
    """Deletes the temporary files left beside ``shard_files`` by a killed run (we hold the lock)."""
    removed = [temporary for path in shard_files for temporary in stale_temporary_files(path)]
    total = 0
    for temporary in removed:
        try:
            total += temporary.stat().st_size
            temporary.unlink()
        except FileNotFoundError:
            pass
    if removed:
        logger.warning(
            "removed %d temporary files (%.1f MB) left by an interrupted run in %s",
            len(removed),
            total / 1e6,
            removed[0].parent,
        )
