"""Atomic writes: complete files or the old file, never a torn one, and no temporary litter."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from sohes_hf.atomic_io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_create_folders_and_replace_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert write_text_atomic(tmp_path / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"kept": True})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"bad": math.nan})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
