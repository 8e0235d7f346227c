"""Journal faults: disk full mid-flush, missing header, NUL blocks and damaged lines (issue 15)."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sohes_hf.pseudo_labeling import explore_journal
from sohes_hf.pseudo_labeling.explore_journal import Journal, index_journal

HEADER = {"num_shards": 1, "shard_index": 0}
KEYS = [f"img{i}" for i in range(7)]


def _record(key: str) -> dict[str, Any]:
    return {"type": "image", "key": key, "value": key * 3}


def _records(path: Path, offsets: dict[str, int]) -> list[dict[str, Any]]:
    """Reads every key's record at its offset, in KEYS order (as the job's assembly does)."""
    with open(path, "rb") as handle:
        out = []
        for key in KEYS:
            handle.seek(offsets[key])
            out.append(json.loads(handle.readline()))
        return out


def _run(path: Path, checkpoint_every: int = 2) -> dict[str, int]:
    """One job: indexes the journal, journals the missing keys, returns the final index."""
    offsets = index_journal(path, HEADER)
    with Journal(path, HEADER, checkpoint_every, offsets) as journal:
        for key in KEYS:
            if key not in offsets:
                journal.append(key, _record(key))
    return offsets


class _FullDisk:
    """A binary file whose write stores 3/4 of the bytes, then raises ENOSPC."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) * 3 // 4])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


@pytest.mark.parametrize("truncate_fails", [False, True])
def test_disk_full_mid_flush_leaves_a_resumable_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncate_fails: bool
) -> None:
    reference = tmp_path / "reference.jsonl"
    expected = _records(reference, _run(reference))
    path = tmp_path / "journal.jsonl"
    calls = {"n": 0}

    def full_after_one_flush(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned open)
        if "a" in mode:
            calls["n"] += 1
            if calls["n"] >= 2:
                return _FullDisk(handle)
        return handle

    def no_truncate(*args: Any) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(explore_journal, "open", full_after_one_flush, raising=False)
    if truncate_fails:
        monkeypatch.setattr(explore_journal.os, "truncate", no_truncate)
    with pytest.raises(OSError, match="No space"):
        _run(path)
    assert calls["n"] == 2  # __exit__ did not flush again after the failure
    monkeypatch.undo()
    size = path.stat().st_size
    lines = path.read_bytes().split(b"\n")
    if truncate_fails:  # the half write stays: complete lines of it are kept, its torn tail dropped
        assert lines[-1] != b"" and size > 0
    else:  # truncated back to header + the first flush
        assert len(lines) - 1 == 1 + 2 and lines[-1] == b""
    offsets = _run(path)
    assert _records(path, offsets) == expected
    assert path.read_bytes().count(b"\n") == 1 + len(KEYS)


def test_a_journal_without_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps(_record("img0")) + "\n")
    with pytest.raises(ValueError, match=r"journal .*journal.jsonl has no header line .*delete it"):
        index_journal(path, HEADER)


def test_a_header_of_another_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    _run(path)
    with pytest.raises(ValueError, match="shard_index: the journal has 0, this run has 1"):
        index_journal(path, {**HEADER, "shard_index": 1})


@pytest.mark.parametrize(
    "damage", [b"\x00" * 4096 + b"\n", b"\xff\xfe not utf-8\n", b'{"type": "image", "ke\n', b"[1, 2]\n"]
)
def test_damaged_middle_lines_are_dropped_and_their_images_redone(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    reference = tmp_path / "reference.jsonl"
    expected = _records(reference, _run(reference))
    path = tmp_path / "journal.jsonl"
    lines = reference.read_bytes().splitlines(keepends=True)
    lines[3] = damage  # img2's record is destroyed
    path.write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING):
        offsets = index_journal(path, HEADER)
    assert sorted(offsets) == sorted(set(KEYS) - {"img2"})
    assert f"journal {path}: line 4 is damaged" in caplog.text
    offsets = _run(path)  # redoes img2
    assert _records(path, offsets) == expected


def test_a_damaged_last_line_is_truncated_as_torn(tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    expected = _records(reference, _run(reference))
    path = tmp_path / "journal.jsonl"
    path.write_bytes(reference.read_bytes()[:-20] + b"\x00" * 100 + b"\n")  # NUL block at the tail
    offsets = index_journal(path, HEADER)
    assert "img6" not in offsets and path.read_bytes().count(b"\n") == len(KEYS)
    assert _records(path, _run(path)) == expected
