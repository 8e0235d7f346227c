"""Broken SA-1B packs and hostile list files through the real ``sohes explore`` (issue 15, items 4, 5).

Each test builds its fault itself and runs the command in a subprocess, with a timeout, as a
user would meet it: the job must label what is readable, name each bad part in the skip report
and exit 0, never hang on a FIFO or run out of memory on ``/dev/zero``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.fixtures import add_tar_member
from tests.test_bad_inputs_cli import _assert_clean_refusal, _sohes

from sohes_hf.modeling.testing_utils import tiny_dino_vit


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny-dino"
    tiny_dino_vit().save_pretrained(path)
    return path


def _jpeg(seed: int) -> bytes:
    pixels = np.full((64, 64, 3), 40 * seed % 256, dtype=np.uint8)
    pixels[10:40, 12:50] = (200, 30, 90)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _explore(vit_dir: Path, output: Path, *inputs: Path) -> Any:
    return _sohes("explore", *map(str, inputs), "--output", str(output), "--backbone", str(vit_dir),
                  "--refiner", "none", "--image-size", "64", "--no-progress", "--device", "cpu")  # fmt: skip


def _shard(output: Path, suffix: str) -> Any:
    return json.loads((output / f"pseudo_labels.shard-00000-of-00001.{suffix}").read_text())


def test_cut_pack_with_hostile_members_labels_what_is_readable(vit_dir: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.tar"
    with tarfile.open(full, "w") as tar:
        add_tar_member(tar, "sa_1.jpg", _jpeg(1))
        add_tar_member(tar, "sa_2.jpg", kind=tarfile.SYMTYPE, link="../../../etc/passwd")
        add_tar_member(tar, "../sa_3.jpg", _jpeg(3))
        add_tar_member(tar, "sa_4.jpg", _jpeg(4))
        add_tar_member(tar, "sa_4.jpg", _jpeg(5))  # a duplicate name
        add_tar_member(tar, "sa_6.jpg", _jpeg(6))
        add_tar_member(tar, "sa_7.jpg", _jpeg(7))
        add_tar_member(tar, "sa_8.jpg", _jpeg(8))
    with tarfile.open(full) as tar:
        cut_member = tar.getmember("sa_7.jpg")
    pack = tmp_path / "sa_000000.tar"  # an interrupted download: cut inside sa_7.jpg
    pack.write_bytes(full.read_bytes()[: cut_member.offset_data + cut_member.size // 2])
    result = _explore(vit_dir, tmp_path / "out", pack)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    coco = _shard(tmp_path / "out", "json")
    assert [image["id"] for image in coco["images"]] == [1, 6]  # the good images before the cut
    assert {a["image_id"] for a in coco["annotations"]} == {1, 6}
    report = _shard(tmp_path / "out", "skipped.json")
    skipped = {item["image_id"]: item["reason"] for item in report["skipped"]}
    assert sorted(skipped) == [2, 3, 4, 7]
    assert "symbolic link" in skipped[2] and "'..'" in skipped[3] and "2 times" in skipped[4]
    assert f"byte {cut_member.offset}" in skipped[7] and "re-download" in skipped[7]
    cut = [p for p in report["inputs"] if "cut off" in p["reason"]]
    assert cut == [{"source": str(pack), "member": "sa_7.jpg", "offset": cut_member.offset,
                    "reason": cut[0]["reason"]}]  # fmt: skip
    assert f"byte {pack.stat().st_size}" in cut[0]["reason"]
    assert {p["member"] for p in report["inputs"]} == {"sa_2.jpg", "../sa_3.jpg", "sa_4.jpg", "sa_7.jpg"}
    assert _shard(tmp_path / "out", "summary.json")["num_skipped"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tar", "out", "sa_000000.tar"]  # no extraction


def test_file_that_is_not_a_tar_pack_is_one_line_error(vit_dir: Path, tmp_path: Path) -> None:
    pack = tmp_path / "sa_000001.tar"
    pack.write_bytes(b"<html>502 Bad Gateway</html>")
    result = _explore(vit_dir, tmp_path / "out", pack)
    _assert_clean_refusal(result, str(pack), "not a readable tar pack", "re-download")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs POSIX")
def test_list_file_fifo_device_and_huge_file_are_skipped_not_hung(vit_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "good.jpg").write_bytes(_jpeg(1))
    os.mkfifo(tmp_path / "pipe.jpg")  # no writer: a plain open() waits forever
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    with open(tmp_path / "huge.jpg", "wb") as handle:  # sparse: 300 MiB claimed, nothing written
        handle.truncate(300 * 1024 * 1024)
    listing = tmp_path / "list.txt"
    listing.write_text(f"good.jpg\npipe.jpg\n/dev/zero\nzero.jpg\nhuge.jpg\n{tmp_path}\n")
    for attempt in range(2):  # the second run resumes: the bad entries must not fail again
        result = _explore(vit_dir, tmp_path / "out", listing)
        assert result.returncode == 0, (attempt, result.stderr[-3000:])
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert [image["file_name"] for image in _shard(tmp_path / "out", "json")["images"]] == ["good.jpg"]
    skipped = {
        item["file_name"]: item["reason"] for item in _shard(tmp_path / "out", "skipped.json")["skipped"]
    }
    assert "FIFO" in skipped["pipe.jpg"]
    assert "character device" in skipped["/dev/zero"]
    inputs = _shard(tmp_path / "out", "skipped.json")["inputs"]  # zero.jpg is a link to /dev/zero
    assert [(p["source"], "same file as '/dev/zero'" in p["reason"]) for p in inputs] == [("/dev/zero", True)]
    assert "too large" in skipped["huge.jpg"] and "max_file_bytes" in skipped["huge.jpg"]
    assert "folder" in skipped[str(tmp_path)]


def test_list_file_that_is_a_fifo_is_refused(vit_dir: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "list.txt")
    result = _explore(vit_dir, tmp_path / "out", tmp_path / "list.txt")
    _assert_clean_refusal(result, str(tmp_path / "list.txt"), "FIFO")
