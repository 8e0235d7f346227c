"""The exploration job's journal: append-only JSONL of finished images, and its resume index.

Paper section 3.1 labels each image independently, so a job over SA-1B (section 4) can stop and
resume at any image. :class:`Journal` appends one complete JSON line per finished (or skipped)
image, fsync'ed every ``checkpoint_every`` images and when the job stops, and records the byte
offset of each line; :func:`index_journal` rebuilds that key -> offset index on resume, reading
line by line and dropping a torn last line. Neither holds records in memory beyond the lines
waiting for the next flush, so the journal is the job's only store of finished work (see
:mod:`.explore_job`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sohes_hf.atomic_io import write_text_atomic
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)


class Journal:
    """Append-only JSONL file; buffered lines are written, flushed and fsync'ed every N images.

    Use as a context manager: entering writes the header line to a new (or empty) journal,
    leaving flushes what is pending, also on errors and Ctrl-C.

    Args:
        path: the ``.jsonl`` journal file.
        header: the job's configuration, written as the first line (``"type": "header"``).
        checkpoint_every: lines buffered between two flushes (fsync).
        offsets: image key -> byte offset of its line; updated once a line is on disk, so the
            assembly can seek to any finished image without holding records in memory.
    """

    def __init__(
        self, path: Path, header: Mapping[str, Any], checkpoint_every: int, offsets: dict[str, int]
    ) -> None:
        self.path = path
        self.header = header
        self.checkpoint_every = checkpoint_every
        self.offsets = offsets
        self.pending: list[tuple[str, bytes]] = []

    def __enter__(self) -> Journal:
        if not self.path.exists() or self.path.stat().st_size == 0:
            write_text_atomic(self.path, json.dumps({"type": "header", **self.header}, sort_keys=True) + "\n")
        return self

    def append(self, key: str, record: Mapping[str, Any]) -> None:
        """Queues one image's record (a JSON object) as a line; flushes every N records."""
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        self.pending.append((key, line.encode("utf-8")))
        if len(self.pending) >= self.checkpoint_every:
            self.flush()

    def flush(self) -> None:
        """Appends the queued lines, fsyncs, then records their offsets."""
        if not self.pending:
            return
        with open(self.path, "ab") as handle:
            position = handle.seek(0, os.SEEK_END)
            handle.writelines(line for _, line in self.pending)
            handle.flush()
            os.fsync(handle.fileno())
        for key, line in self.pending:
            self.offsets[key] = position
            position += len(line)
        logger.debug("checkpoint: %d images appended to %s", len(self.pending), self.path)
        self.pending.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.flush()  # also on errors and Ctrl-C: finished images are never lost


def index_journal(path: Path, header: Mapping[str, Any]) -> dict[str, int]:
    """Byte offset of each finished image's line, by image key; drops a torn last line.

    Reads the journal line by line (one record in memory at a time) and checks its header.
    Every record is written as one complete line ending in a newline, so bytes after the last
    newline can only be a write cut short by a hard kill: they are truncated away.
    """
    offsets: dict[str, int] = {}
    if not path.exists():
        return offsets
    position = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                logger.warning("journal %s: dropping a torn last line (the job was killed mid-write)", path)
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"output: journal {path} is corrupt at line {number}: {error}") from error
            if record.get("type") == "header":
                check_header(path, record, header)
            else:
                offsets[record["key"]] = position
            position += len(line)
    if position < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(position)
    return offsets


def check_header(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raises ValueError naming the header fields in which the journal differs from this job."""
    different = sorted(key for key in expected if found.get(key) != expected[key])
    if different:
        raise ValueError(
            f"output: {path} was written by a different job configuration (differs in: "
            f"{', '.join(different)}); use another --output folder to start afresh"
        )
