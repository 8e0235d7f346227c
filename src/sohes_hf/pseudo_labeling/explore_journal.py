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


class ExploreOutputError(ValueError):
    """The output folder cannot be used as it is (another job's journal, a busy shard).

    A user error, not a bug: the CLI shows its message as one line. A ``ValueError`` so that
    callers catching the configuration errors of the job keep working.
    """


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
        self.good_size = 0  # bytes known complete on disk: a failed write is truncated back to it
        self.failed = False

    def __enter__(self) -> Journal:
        if not self.path.exists() or self.path.stat().st_size == 0:
            write_text_atomic(self.path, json.dumps({"type": "header", **self.header}, sort_keys=True) + "\n")
        self.good_size = self.path.stat().st_size
        return self

    def append(self, key: str, record: Mapping[str, Any]) -> None:
        """Queues one image's record (a JSON object) as a line; flushes every N records."""
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        self.pending.append((key, line.encode("utf-8")))
        if len(self.pending) >= self.checkpoint_every:
            self.flush()

    def flush(self) -> None:
        """Appends the queued lines, fsyncs, then records their offsets.

        A failed write (disk full) is truncated back to the last good size, so the journal stays
        resumable, and no later flush appends after it; if even the truncation fails, the next
        load drops the torn tail (:func:`index_journal`).
        """
        if not self.pending or self.failed:
            return
        position = self.good_size
        try:
            with open(self.path, "ab") as handle:
                handle.write(b"".join(line for _, line in self.pending))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException as failure:
            self.failed = True
            try:
                os.truncate(self.path, self.good_size)
            except OSError as error:
                logger.warning("journal %s: could not truncate a failed write (%s)", self.path, error)
            if isinstance(failure, OSError) and failure.filename is None:  # name the file (disk full)
                raise OSError(failure.errno, failure.strerror, str(self.path)) from failure
            raise
        for key, line in self.pending:
            self.offsets[key] = position
            position += len(line)
        self.good_size = position
        logger.debug("checkpoint: %d images appended to %s", len(self.pending), self.path)
        self.pending.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.flush()  # also on errors and Ctrl-C: finished images are never lost


def index_journal(path: Path, header: Mapping[str, Any]) -> dict[str, int]:
    """Byte offset of each finished image's line, by image key; recovers a damaged journal.

    Reads the journal line by line (one record in memory at a time). Refused: a first line that
    is not this job's header (another job's journal, or not a journal). Recovered: a torn tail
    (bytes after the last newline, or unreadable last lines: a hard kill or a full disk) is
    truncated away; an unreadable middle line (NUL block, invalid UTF-8, bad JSON) is skipped
    with a warning naming file and line. The images of dropped lines are not in the index, so the
    job redoes them.
    """
    offsets: dict[str, int] = {}
    if not path.exists():
        return offsets
    position = 0
    good_end = 0  # end of the last readable line
    damaged: list[tuple[int, str]] = []  # unreadable lines since the last readable one
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                logger.warning("journal %s: dropping a torn last line %d (a write cut short)", path, number)
                break
            record, problem = _parse(line)
            if number == 1:
                if record is None or record.get("type") != "header":
                    raise ExploreOutputError(
                        f"output: journal {path} has no header line (line 1: {problem or 'not a header'}); "
                        "it was not written by `sohes explore`: delete it or use another --output folder"
                    )
                check_header(path, record, header)
            elif record is None:
                damaged.append((number, problem))
            else:
                for bad, reason in damaged:
                    logger.warning(
                        "journal %s: line %d is damaged (%s); dropping it, its image is redone",
                        path,
                        bad,
                        reason,
                    )
                damaged.clear()
                if record.get("type") == "header":
                    check_header(path, record, header)
                else:
                    offsets[record["key"]] = position
            position += len(line)
            if record is not None:
                good_end = position
    for bad, reason in damaged:
        logger.warning("journal %s: dropping a damaged last line %d (%s)", path, bad, reason)
    if good_end < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return offsets


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The line's JSON record (a header or one with a string ``key``), or None and why not."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 text at byte {error.start}"
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if record.get("type") != "header" and not isinstance(record.get("key"), str):
        return None, "no image key"
    return record, ""


def check_header(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raises ExploreOutputError naming each field in which the journal differs, with both values.

    Nested settings are named by their dotted path (``self_exploration.image_size``), so the user
    sees which flag changed, not only its group.
    """
    different = _differences(found, expected, "")
    if different:
        raise ExploreOutputError(
            f"output: {path} was written with other settings ({'; '.join(different)}); resume with the "
            "settings of the first run, or use another --output folder to start afresh"
        )


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any], prefix: str) -> list[str]:
    """ "name: journal has X, this run has Y" for each field of ``expected`` that ``found`` differs in."""
    lines = []
    for key in sorted(expected):
        name, old, new = f"{prefix}{key}", found.get(key), expected[key]
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            lines.extend(_differences(old, new, f"{name}."))
        elif key == "images_sha256":
            lines.append(f"{name}: the list of input images differs (other inputs, or moved or new images)")
        else:
            lines.append(f"{name}: the journal has {json.dumps(old)}, this run has {json.dumps(new)}")
    return lines
