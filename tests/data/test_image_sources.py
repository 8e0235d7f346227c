"""Tests of the self-exploration image inputs (folders, list files, SA-1B tars)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sohes_hf.data.image_sources import (
    ImageEntry,
    ImageReader,
    ImageReadError,
    list_images,
    shard_entries,
)
from sohes_hf.data.tar_scan import InputProblem


def _png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_is_listed_recursively_in_stable_order(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("z.png", "b/c/a.png", "b/x.png"):
        (tmp_path / name).write_bytes(_png_bytes(_pattern(8, 8, 0)))
    (tmp_path / "notes.txt").write_text("not an image")
    entries = list_images([tmp_path])
    assert [e.file_name for e in entries] == ["b/c/a.png", "b/x.png", "z.png"]
    assert [e.image_id for e in entries] == [1, 2, 3]
    assert all(e.member is None and Path(e.path).is_absolute() for e in entries)


def test_tar_pack_is_read_in_memory_with_sa1b_ids(tmp_path: Path) -> None:
    images = {7: _pattern(12, 16, 1), 3: _pattern(10, 10, 2)}
    members = {f"sa_{n}.jpg": _png_bytes(a) for n, a in images.items()}
    members["sa_7.json"] = b"{}"
    members["../../evil.jpg"] = _png_bytes(_pattern(8, 8, 3))  # ignored: not an sa_N.jpg member name
    _write_tar(tmp_path / "pack.tar", members)
    entries = list_images([tmp_path / "pack.tar"])
    assert [(e.image_id, e.file_name, e.member) for e in entries] == [
        (3, "sa_3.jpg", "sa_3.jpg"),
        (7, "sa_7.jpg", "sa_7.jpg"),
    ]
    with ImageReader() as reader:
        for entry in entries:
            np.testing.assert_array_equal(reader.read(entry), images[entry.image_id])  # PNG data is lossless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack.tar"]  # nothing was extracted


def test_list_file_paths_are_relative_to_the_list(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "sa_42.jpg").write_bytes(_png_bytes(_pattern(8, 8, 4)))
    (tmp_path / "other.png").write_bytes(_png_bytes(_pattern(8, 8, 5)))
    (tmp_path / "list.txt").write_text("# comment\nimgs/sa_42.jpg\n\nother.png\nmissing.png\n")
    entries = list_images([tmp_path / "list.txt"])
    assert [(e.image_id, e.file_name) for e in entries] == [
        (42, "imgs/sa_42.jpg"),
        (2, "other.png"),
        (3, "missing.png"),
    ]
    with ImageReader() as reader, pytest.raises(ImageReadError, match="cannot read"):
        reader.read(entries[2])


def test_duplicate_ids_and_bad_inputs_raise(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "sa_1.jpg").write_bytes(_png_bytes(_pattern(8, 8, 6)))
    with pytest.raises(ValueError, match="image id 1"):
        list_images([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images([tmp_path / "nope"])
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="extension"):
        list_images([tmp_path / "weights.bin"])
    with pytest.raises(ValueError, match="inputs"):
        list_images([])


def test_reader_skips_corrupt_tiny_and_oversized_images(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(_png_bytes(_pattern(4, 40, 7)))
    big = tmp_path / "big.png"
    big.write_bytes(_png_bytes(np.zeros((200, 300, 3), dtype=np.uint8)))
    with ImageReader(max_image_pixels=50_000, min_image_side=8) as reader:
        with pytest.raises(ImageReadError, match="cannot decode"):
            reader.read(ImageEntry(1, "corrupt.jpg", str(corrupt)))
        with pytest.raises(ImageReadError, match="too small"):
            reader.read(ImageEntry(2, "tiny.png", str(tiny)))
        with pytest.raises(ImageReadError, match=r"too large.*60000"):
            reader.read(ImageEntry(3, "big.png", str(big)))
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((9, 9), 77, dtype=np.uint8)).save(gray)
    pixels = ImageReader().read(ImageEntry(4, "gray.png", str(gray)))
    assert pixels.shape == (9, 9, 3) and pixels.dtype == np.uint8 and (pixels == 77).all()


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_partition_the_listing(num_shards: int) -> None:
    entries = [ImageEntry(i, f"{i}.jpg", f"/x/{i}.jpg") for i in range(1, 11)]
    shards = [shard_entries(entries, num_shards, k) for k in range(num_shards)]
    keys = [e.key for shard in shards for e in shard]
    assert sorted(keys) == sorted(e.key for e in entries) and len(keys) == len(set(keys))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="shard_index"):
        shard_entries(entries, num_shards, num_shards)
    with pytest.raises(ValueError, match="num_shards"):
        shard_entries(entries, 0, 0)


def test_list_file_lines_that_are_not_files_are_refused_when_read(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png_bytes(_pattern(8, 8, 8)))
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "list.txt").write_bytes(b"a.png\npipe.png\n\xff\xfe.png\n/dev/zero\na.png\n")
    problems: list[InputProblem] = []
    entries = list_images([tmp_path / "list.txt"], problems)
    assert [e.file_name for e in entries] == ["a.png", "pipe.png", "/dev/zero"]
    assert [(p.offset, "UTF-8" in p.reason) for p in problems if p.offset is not None] == [(3, True)]
    assert any("same file" in p.reason for p in problems)  # a.png listed twice is used once
    with ImageReader(max_file_bytes=64) as reader:
        with pytest.raises(ImageReadError, match=r"too large: \d+ bytes, over the limit of 64"):
            reader.read(entries[0])
        with pytest.raises(ImageReadError, match="FIFO"):
            reader.read(entries[1])  # returns at once: opened with O_NONBLOCK, refused by fstat
        with pytest.raises(ImageReadError, match="character device"):
            reader.read(entries[2])
    assert ImageReader().read(entries[0]).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="max_file_bytes"):
        ImageReader(max_file_bytes=0)
