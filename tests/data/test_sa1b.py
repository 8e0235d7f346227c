"""Tests of the SA-1B pack reader: both views, hostile input, the links file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from tests.data.fixtures import FixtureImage, jpeg_bytes, sa1b_annotation_json, write_sa1b_tar

from sohes_hf.data.sa1b import (
    ReadReport,
    SA1BFormatError,
    iter_sa1b_images,
    iter_sa1b_records,
    parse_sa1b_json,
    read_links_file,
    select_packs,
)


def test_training_view_yields_every_image_once_without_reading_json(tmp_path: Path) -> None:
    # The JSON of image 2 is garbage: the training view must not read it (human masks unused).
    write_sa1b_tar(tmp_path / "a.tar", [1, 2, 3], masks_per_image=2)
    garbage = tmp_path / "b.tar"
    with tarfile.open(tmp_path / "a.tar") as source, tarfile.open(garbage, "w") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "sa_2.json":
                data = b"{not json"
                info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    report = ReadReport()
    images = list(iter_sa1b_images([str(garbage)], report))
    assert [im.image_id for im in images] == [1, 2, 3]
    assert [im.file_name for im in images] == ["sa_1.jpg", "sa_2.jpg", "sa_3.jpg"]
    assert all((im.width, im.height) == (64, 48) for im in images)
    assert report.total_skipped == 0 and report.num_images == 3
    # The evaluation view does read it, and reports the member by name.
    report = ReadReport()
    records = list(iter_sa1b_records([str(garbage)], report))
    assert [r.image.image_id for r in records] == [1, 3]
    assert report.num_skipped == {"bad_json": 1}
    assert report.issues[0].member == "sa_2.json" and "not valid JSON" in report.issues[0].reason


def test_evaluation_view_masks_match_the_written_ones_with_int_float_mixes(tmp_path: Path) -> None:
    images = write_sa1b_tar(tmp_path / "a.tar", [7, 8], masks_per_image=4, mix_number_types=True)
    records = list(iter_sa1b_records([str(tmp_path / "a.tar")]))
    assert len(records) == 2
    for record, image in zip(records, images, strict=True):
        assert record.image.image_id == image.image_id
        for annotation, mask in zip(record.annotations, image.human_masks, strict=True):
            decoded = mask_utils.decode(
                {
                    "size": annotation.segmentation["size"],
                    "counts": annotation.segmentation["counts"].encode(),
                }
            )
            np.testing.assert_array_equal(decoded.astype(bool), mask)
            assert annotation.area == float(mask.sum())
            assert isinstance(annotation.predicted_iou, float) and isinstance(annotation.bbox[0], float)
        # both the int-written (even index) and float-written records parse to floats
        assert {a.predicted_iou for a in record.annotations} == {1.0, 0.98}


def test_truncated_pack_is_reported_with_member_and_next_pack_is_read(tmp_path: Path) -> None:
    write_sa1b_tar(tmp_path / "a.tar", [1, 2, 3, 4])
    data = (tmp_path / "a.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as archive:
        third = archive.getmember("sa_3.jpg")
    # cut in the middle of sa_3.jpg's data
    (tmp_path / "cut.tar").write_bytes(data[: third.offset_data + third.size // 2])
    write_sa1b_tar(tmp_path / "b.tar", [10, 11])
    report = ReadReport()
    images = list(iter_sa1b_images([str(tmp_path / "cut.tar"), str(tmp_path / "b.tar")], report))
    assert [im.image_id for im in images] == [1, 2, 10, 11]
    assert report.num_truncated_sources == 1
    assert report.issues[0].member == "sa_3.jpg" and report.issues[0].source.endswith("cut.tar")
    assert f"byte {third.offset}" in report.issues[0].reason  # pack, member and offset of the cut


@pytest.mark.parametrize("cut", ["header_boundary", "inside_unread_json"])
def test_silent_tar_truncations_are_detected(tmp_path: Path, cut: str) -> None:
    # tarfile itself ends without error at these cuts; the reader must still report them.
    write_sa1b_tar(tmp_path / "a.tar", [1, 2, 3])
    with tarfile.open(tmp_path / "a.tar") as archive:
        member = archive.getmember("sa_2.jpg" if cut == "header_boundary" else "sa_2.json")
    end = member.offset if cut == "header_boundary" else member.offset_data + member.size // 2
    (tmp_path / "cut.tar").write_bytes((tmp_path / "a.tar").read_bytes()[:end])
    report = ReadReport()
    assert [im.image_id for im in iter_sa1b_images([str(tmp_path / "cut.tar")], report)] == [1, 2][
        : 1 + (cut != "header_boundary")
    ]
    assert report.num_truncated_sources == 1
    assert report.issues[0].member == ("sa_1.json" if cut == "header_boundary" else "sa_2.json")


def test_json_without_image_is_reported_with_member_name(tmp_path: Path) -> None:
    write_sa1b_tar(tmp_path / "a.tar", [1, 2, 3], drop_images=(2,))
    report = ReadReport()
    assert [im.image_id for im in iter_sa1b_images([str(tmp_path / "a.tar")], report)] == [1, 3]
    assert report.num_skipped == {"missing_image": 1} and report.issues[0].member == "sa_2.json"
    report = ReadReport()
    assert [r.image.image_id for r in iter_sa1b_records([str(tmp_path / "a.tar")], report)] == [1, 3]
    assert report.num_skipped == {"missing_image": 1} and report.issues[0].member == "sa_2.json"


def test_hostile_members_are_skipped_and_named(tmp_path: Path) -> None:
    pack = tmp_path / "a.tar"
    extra = [("../../evil.sh", b"rm -rf /"), ("notes.txt", b"x"), ("../sa_7.jpg", jpeg_bytes(48, 64, 7))]
    write_sa1b_tar(pack, [1], extra_members=extra)
    with tarfile.open(pack, "a") as archive:
        link = tarfile.TarInfo("sa_5.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    report = ReadReport()
    assert [im.image_id for im in iter_sa1b_images([str(pack)], report)] == [1]
    assert report.num_skipped == {"unsafe_name": 2, "unexpected_member": 1, "not_a_file": 1}
    assert {issue.member for issue in report.issues} == {
        "../../evil.sh",
        "notes.txt",
        "sa_5.jpg",
        "../sa_7.jpg",
    }
    link_issue = next(issue for issue in report.issues if issue.member == "sa_5.jpg")
    assert "/etc/passwd" in link_issue.reason and "byte" in link_issue.reason
    assert not (tmp_path.parent / "evil.sh").exists()


def test_images_over_the_pixel_limit_are_skipped_as_bombs(tmp_path: Path) -> None:
    write_sa1b_tar(tmp_path / "a.tar", [1, 2], height=48, width=64)
    report = ReadReport()
    assert list(iter_sa1b_images([str(tmp_path / "a.tar")], report, max_image_pixels=48 * 64 - 1)) == []
    assert report.num_skipped == {"bad_image": 2}
    assert "decompression bomb" in report.issues[0].reason and report.issues[0].member == "sa_1.jpg"
    assert len(list(iter_sa1b_images([str(tmp_path / "a.tar")], max_image_pixels=48 * 64))) == 2
    with pytest.raises(ValueError, match="max_image_pixels"):
        list(iter_sa1b_images([str(tmp_path / "a.tar")], max_image_pixels=0))


def test_oversized_members_and_non_jpeg_are_skipped(tmp_path: Path) -> None:
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, format="PNG")
    pack = tmp_path / "a.tar"
    write_sa1b_tar(pack, [1], extra_members=[("sa_9.jpg", png.getvalue())])
    report = ReadReport()
    assert [im.image_id for im in iter_sa1b_images([str(pack)], report)] == [1]
    assert report.num_skipped == {"bad_image": 1} and report.issues[0].member == "sa_9.jpg"
    report = ReadReport()
    assert list(iter_sa1b_images([str(pack)], report, max_member_bytes=10)) == []
    assert report.num_skipped == {"too_large": 3}


def test_schema_errors_name_the_member_and_field() -> None:
    image = FixtureImage(image_id=3, width=64, height=48, human_masks=[np.ones((48, 64), bool)])
    good = sa1b_annotation_json(image, mix_number_types=False)
    info, annotations = parse_sa1b_json(good, "sa_3.json", 3)
    assert (info.width, info.height, len(annotations)) == (64, 48, 1)
    with pytest.raises(SA1BFormatError, match=r"sa_3.json: .*do not match"):
        parse_sa1b_json(good, "sa_3.json", 4)
    broken = good.replace(b'"predicted_iou": 0.98', b'"predicted_iou": "high"')
    with pytest.raises(SA1BFormatError, match=r"sa_3.json: annotations\[0\].predicted_iou must be a number"):
        parse_sa1b_json(broken, "sa_3.json", 3)
    with pytest.raises(SA1BFormatError, match=r"sa_3\.json: top level"):
        parse_sa1b_json(b"[]", "sa_3.json", 3)


def test_json_size_must_match_the_jpeg(tmp_path: Path) -> None:
    image = FixtureImage(image_id=1, width=32, height=48, human_masks=[np.ones((48, 32), bool)])
    pack = tmp_path / "a.tar"
    with tarfile.open(pack, "w") as archive:
        for name, data in (
            ("sa_1.jpg", jpeg_bytes(48, 64, 0)),
            ("sa_1.json", sa1b_annotation_json(image, mix_number_types=False)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    report = ReadReport()
    assert list(iter_sa1b_records([str(pack)], report)) == []
    assert "differs from the JPEG" in report.issues[0].reason


def test_links_file(tmp_path: Path) -> None:
    links = tmp_path / "links.txt"
    links.write_text(
        "file_name\tcdn_link\nsa_000000.tar\thttps://x/sa_000000.tar?sig=1\nsa_000001.tar\thttps://x/1\n"
    )
    packs = read_links_file(links)
    assert [p.file_name for p in packs] == ["sa_000000.tar", "sa_000001.tar"]
    assert select_packs(packs, ["sa_000001.tar"]) == ["https://x/1"]
    with pytest.raises(ValueError, match=r"sa_000002\.tar"):
        select_packs(packs, ["sa_000002.tar"])
    links.write_text("file_name\tcdn_link\nbroken line\n")
    with pytest.raises(ValueError, match="line 2"):
        read_links_file(links)
    with pytest.raises(FileNotFoundError):
        read_links_file(tmp_path / "none.txt")


def test_urls_are_streamed_through_fsspec(tmp_path: Path) -> None:
    # file:// goes through the same fsspec/xopen path as https:// CDN links (no network in tests)
    write_sa1b_tar(tmp_path / "a.tar", [1, 2])
    url = (tmp_path / "a.tar").as_uri()
    assert url.startswith("file://")
    assert [im.image_id for im in iter_sa1b_images([url])] == [1, 2]
    with pytest.raises(FileNotFoundError, match=r"a\.tar\.missing"):
        list(iter_sa1b_images([url + ".missing"]))
