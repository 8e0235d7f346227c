"""Tests of the tar pack scan: cut packs keep their good images, hostile members are reported."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.data.fixtures import add_tar_member

from sohes_hf.data.image_sources import ImageReader, ImageReadError, InputListingError, list_images
from sohes_hf.data.tar_scan import InputProblem, scan_tar


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless, so pixels can be compared
    return buffer.getvalue()


def _pack(path: Path, numbers: tuple[int, ...] = (1, 2, 3)) -> dict[str, tarfile.TarInfo]:
    """sa_N.jpg + sa_N.json pairs; returns the members as tarfile reads the complete pack."""
    with tarfile.open(path, "w") as tar:
        for number in numbers:
            add_tar_member(tar, f"sa_{number}.jpg", _jpeg(number))
            add_tar_member(tar, f"sa_{number}.json", b'{"annotations": []}' * 40)
    with tarfile.open(path) as tar:
        return {info.name: info for info in tar.getmembers()}


def _cut(path: Path, size: int) -> Path:
    cut = path.with_name(f"cut_{size}.tar")
    cut.write_bytes(path.read_bytes()[:size])
    return cut


def _ids(entries: list) -> tuple[list[int], list[int]]:
    good = [e.image_id for e in entries if e.problem is None]
    bad = [e.image_id for e in entries if e.problem is not None]
    return good, bad


@pytest.mark.parametrize(
    ("where", "good", "bad", "cut_member"),
    [
        ("inside sa_2.jpg data", [1], [2], "sa_2.jpg"),
        ("inside sa_2.json data", [1, 2], [], "sa_2.json"),
        ("at the sa_3.jpg header", [1, 2], [], "sa_2.json"),
        ("inside the sa_3.jpg header", [1, 2], [], "sa_2.json"),
        ("before the end-of-archive block", [1, 2, 3], [], "sa_3.json"),
    ],
)
def test_cut_pack_keeps_the_images_before_the_cut(
    tmp_path: Path, where: str, good: list[int], bad: list[int], cut_member: str
) -> None:
    members = _pack(tmp_path / "full.tar")
    size = {
        "inside sa_2.jpg data": members["sa_2.jpg"].offset_data + members["sa_2.jpg"].size // 2,
        "inside sa_2.json data": members["sa_2.json"].offset_data + 10,
        "at the sa_3.jpg header": members["sa_3.jpg"].offset,
        "inside the sa_3.jpg header": members["sa_3.jpg"].offset + 256,
        "before the end-of-archive block": members["sa_3.json"].offset_data + 512 * 2,  # json is 760 bytes
    }[where]
    pack = _cut(tmp_path / "full.tar", size)
    problems: list[InputProblem] = []
    entries = list_images([pack], problems)
    assert _ids(entries) == (good, bad)
    assert len(problems) == 1 and "cut off" in problems[0].reason
    assert (problems[0].source, problems[0].member) == (str(pack), cut_member)
    assert problems[0].offset == members[cut_member].offset
    assert f"byte {size}" in problems[0].reason
    with ImageReader() as reader:
        for entry in entries:
            if entry.problem is None:
                expected = np.array(Image.open(io.BytesIO(_jpeg(entry.image_id))).convert("RGB"))
                np.testing.assert_array_equal(reader.read(entry), expected)
            else:
                with pytest.raises(
                    ImageReadError, match=rf"{entry.member}.*byte {members['sa_2.jpg'].offset}"
                ):
                    reader.read(entry)


def test_complete_pack_has_no_problems(tmp_path: Path) -> None:
    _pack(tmp_path / "full.tar")
    problems: list[InputProblem] = []
    assert _ids(list_images([tmp_path / "full.tar"], problems)) == ([1, 2, 3], [])
    assert problems == []


def test_garbage_after_the_members_is_reported(tmp_path: Path) -> None:
    members = _pack(tmp_path / "full.tar", (1,))
    end = members["sa_1.json"].offset_data + 1024
    data = bytearray((tmp_path / "full.tar").read_bytes())
    data[end : end + 512] = b"\x07" * 512  # a header block that is neither a header nor zeros
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    scan = scan_tar(tmp_path / "bad.tar")
    assert list(scan.images) == ["sa_1.jpg"]
    assert [(p.member, p.offset) for p in scan.problems] == [("sa_1.json", members["sa_1.json"].offset)]
    assert f"byte {end}" in scan.problems[0].reason
    assert "unreadable tar header" in scan.problems[0].reason


def test_links_devices_unsafe_names_and_duplicates_are_skipped_and_reported(tmp_path: Path) -> None:
    pack = tmp_path / "hostile.tar"
    with tarfile.open(pack, "w") as tar:
        add_tar_member(tar, "sa_1.jpg", _jpeg(1))
        add_tar_member(tar, "sa_2.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add_tar_member(tar, "sa_3.jpg", kind=tarfile.LNKTYPE, link="sa_1.jpg")
        add_tar_member(tar, "sa_4.jpg", kind=tarfile.CHRTYPE)
        add_tar_member(tar, "sa_5.jpg", kind=tarfile.FIFOTYPE)
        add_tar_member(tar, "../sa_6.jpg", _jpeg(6))
        add_tar_member(tar, "/abs/sa_7.jpg", _jpeg(7))
        add_tar_member(tar, "sa_8.jpg", _jpeg(8))
        add_tar_member(tar, "sub/sa_8.jpg", _jpeg(9))
        add_tar_member(tar, "../../evil.sh", b"rm -rf /")
        add_tar_member(tar, "link_out", kind=tarfile.SYMTYPE, link="../../../etc/shadow")
        add_tar_member(tar, "sa_1.json", b"{}")
    problems: list[InputProblem] = []
    entries = list_images([pack], problems)
    assert _ids(entries) == ([1], [2, 3, 4, 5, 6, 7, 8])
    reasons = {e.image_id: e.problem for e in entries if e.problem}
    for image_id, needle in {2: "symbolic link", 3: "hard link", 4: "device", 5: "FIFO", 6: "'..'",
                             7: "absolute", 8: "2 times"}.items():  # fmt: skip
        assert needle in reasons[image_id] and str(pack) in reasons[image_id]
    reported = {p.member for p in problems}
    assert reported == {"sa_2.jpg", "sa_3.jpg", "sa_4.jpg", "sa_5.jpg", "../sa_6.jpg", "/abs/sa_7.jpg",
                        "sa_8.jpg", "../../evil.sh", "link_out"}  # fmt: skip
    assert all(p.offset is not None and p.source == str(pack) for p in problems)
    with ImageReader() as reader:
        assert reader.read(entries[0]).shape == (16, 24, 3)
        with pytest.raises(ImageReadError, match="symbolic link"):
            reader.read(entries[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"]


def test_not_a_tar_pack_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sa_000001.tar").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(InputListingError, match=r"sa_000001.tar is not a readable tar pack.*re-download"):
        list_images([tmp_path / "sa_000001.tar"])
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(InputListingError, match=r"empty\.tar"):
        list_images([tmp_path / "empty.tar"])
