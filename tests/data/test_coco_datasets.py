"""Tests of the class-agnostic COCO loaders and the converters (SA-1B split, ADE20K)."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from tests.data.fixtures import write_sa1b_tar

from sohes_hf.cli import data as data_cli
from sohes_hf.data.coco_datasets import load_coco_ground_truth
from sohes_hf.data.converters import ade20k_instances_to_coco, make_sa1b_eval_split


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_make_sa1b_split_loads_in_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_sa1b_tar(tmp_path / "sa_000999.tar", [4, 5, 6], masks_per_image=3)
    assert (
        _run_cli(
            [
                "data",
                "make-sa1b-split",
                str(tmp_path / "sa_000999.tar"),
                "--output",
                str(tmp_path / "out"),
                "--num-images",
                "2",
            ]
        )
        == 0
    )
    assert "images\t2" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert sorted(coco.getImgIds()) == [4, 5]
    for image in images[:2]:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image.image_id]))
        assert len(annotations) == 3
        for annotation, mask in zip(annotations, image.human_masks, strict=True):
            np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
            assert coco.loadImgs(image.image_id)[0]["file_name"] == image.file_name
        assert (tmp_path / "out" / "images" / image.file_name).is_file()
    ground_truth = load_coco_ground_truth(tmp_path / "out" / "annotations.json", tmp_path / "out" / "images")
    assert [g.image_id for g in ground_truth] == [4, 5] and ground_truth[0].iscrowd == (False,) * 3


def test_make_sa1b_split_names_images_from_ids_not_members(tmp_path: Path) -> None:
    # a member named with a path prefix never steers where an image is written: it is skipped
    # and reported (issue 15: '..' members are not what SA-1B holds), the others are used
    pack = tmp_path / "pack.tar"
    write_sa1b_tar(tmp_path / "plain.tar", [7, 8])
    with tarfile.open(tmp_path / "plain.tar") as source, tarfile.open(pack, "w") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name.startswith("sa_7"):
                info.name = "../../" + info.name
            target.addfile(info, io.BytesIO(data))
    summary = make_sa1b_eval_split(str(pack), tmp_path / "deep" / "out")
    assert summary.num_images == 1
    assert summary.report is not None and summary.report.num_skipped == {"unsafe_name": 2}
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("sa_*.jpg"))
    assert written == [Path("deep/out/images/sa_8.jpg")]


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    from sohes_hf.cli.main import CliError

    write_sa1b_tar(tmp_path / "a.tar", [1])
    with pytest.raises(CliError, match="--num-images"):
        _run_cli(
            [
                "data",
                "make-sa1b-split",
                str(tmp_path / "a.tar"),
                "--output",
                str(tmp_path),
                "--num-images",
                "0",
            ]
        )
    with pytest.raises(CliError, match="PACK"):
        _run_cli(["data", "make-sa1b-split", str(tmp_path / "none.tar"), "--output", str(tmp_path)])
    with pytest.raises(CliError, match="--output"):
        _run_cli(["data", "convert-labels", str(tmp_path), "--output", str(tmp_path / "x.json")])


def test_polygons_uncompressed_rle_crowd_and_lvis_urls(tmp_path: Path) -> None:
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "val2017" / "000000000001.jpg")
    crowd = np.zeros((30, 40), dtype=bool)
    crowd[5:20, 10:30] = True
    uncompressed_counts = []  # column-major run lengths, written by hand
    flat = crowd.flatten(order="F")
    value, run = False, 0
    for pixel in flat:
        if pixel != value:
            uncompressed_counts.append(run)
            value, run = pixel, 0
        run += 1
    uncompressed_counts.append(run)
    polygon = [[2.0, 2.0, 12.0, 2.0, 12.0, 9.0, 2.0, 9.0]]
    data = {
        "images": [
            {
                "id": 1,
                "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg",
                "width": 40,
                "height": 30,
            }
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 3, "segmentation": polygon, "iscrowd": 0},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 9,
                "segmentation": {"size": [30, 40], "counts": uncompressed_counts},
                "iscrowd": 1,
            },
            {"id": 13, "image_id": 1, "category_id": 9, "segmentation": [[1.0, 1.0, 2.0, 2.0]], "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}],
    }
    (tmp_path / "lvis.json").write_text(json.dumps(data))
    ground_truth = load_coco_ground_truth(tmp_path / "lvis.json", tmp_path)
    (image,) = ground_truth
    assert image.file_name == "val2017/000000000001.jpg" and image.image_path.is_file()
    assert image.iscrowd == (False, True) and image.annotation_ids == (11, 12)
    assert ground_truth.num_skipped_annotations == 1
    reference = COCO()
    reference.dataset = data
    reference.createIndex()
    np.testing.assert_array_equal(
        _decode(image.masks[0]), reference.annToMask(reference.anns[11]).astype(bool)
    )
    np.testing.assert_array_equal(_decode(image.masks[1]), crowd)
    converted = ground_truth.to_coco_dict()
    assert {a["category_id"] for a in converted["annotations"]} == {1}
    assert [a["area"] for a in converted["annotations"]] == [
        int(reference.annToMask(reference.anns[11]).sum()),
        int(crowd.sum()),
    ]


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}], "annotations": []})
    )
    with pytest.raises(FileNotFoundError, match=r"x\.jpg"):
        load_coco_ground_truth(tmp_path / "a.json", tmp_path)
    assert len(load_coco_ground_truth(tmp_path / "a.json", tmp_path, check_images_exist=False)) == 1
    (tmp_path / "b.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
                "annotations": [{"id": 1, "image_id": 1, "segmentation": {"size": [5, 4], "counts": "0"}}],
            }
        )
    )
    with pytest.raises(ValueError, match=r"b.json: annotations\[0\] \(id 1\): RLE size"):
        load_coco_ground_truth(tmp_path / "b.json", tmp_path, check_images_exist=False)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_coco_ground_truth(tmp_path / "missing.json", tmp_path)


def test_ade20k_instance_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "instances").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "ADE_val_1.jpg")
    instance_map = np.zeros((10, 20, 3), dtype=np.uint8)
    instance_map[0:5, 0:10] = (7, 1, 0)  # category 7, instance 1
    instance_map[5:10, 0:10] = (7, 2, 0)  # category 7, instance 2
    instance_map[:, 15:20] = (3, 1, 0)  # category 3, instance 1
    instance_map[:, 10:15] = (4, 0, 0)  # stuff without instance id: not a mask
    Image.fromarray(instance_map).save(tmp_path / "instances" / "ADE_val_1.png")
    assert (
        _run_cli(
            [
                "data",
                "ade20k-to-coco",
                "--images",
                str(tmp_path / "images"),
                "--instances",
                str(tmp_path / "instances"),
                "--output",
                str(tmp_path / "ade.json"),
            ]
        )
        == 0
    )
    assert "masks\t3" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "ade.json"))
    masks = {coco.annToMask(a).astype(bool).tobytes() for a in coco.loadAnns(coco.getAnnIds())}
    red, green = instance_map[..., 0], instance_map[..., 1]
    expected = {
        (red == 3).tobytes(),
        ((red == 7) & (green == 1)).tobytes(),
        ((red == 7) & (green == 2)).tobytes(),
    }
    assert masks == expected
    with pytest.raises(ValueError, match=r"no \.png"):
        ade20k_instances_to_coco(tmp_path / "images", tmp_path / "images", tmp_path / "x.json")
