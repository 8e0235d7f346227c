"""Tests of the datasets builders joining images with pseudo-labels."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets.distributed import split_dataset_by_node
from PIL import Image
from tests.data.fixtures import FixtureImage, jpeg_bytes, write_pseudo_labels, write_sa1b_tar

from sohes_hf.cli import data as data_cli
from sohes_hf.data.builder import ImageFolderPseudoLabelBuilder, SA1BPseudoLabelBuilder, example_targets
from sohes_hf.data.pseudo_label_store import convert_pseudo_labels


def _expected(labels_file: Path) -> dict[int, dict[str, Any]]:
    """Per image id: masks and in-list parents computed from the raw pseudo-label JSON."""
    data = json.loads(labels_file.read_text())
    result: dict[int, dict[str, Any]] = {
        im["id"]: {"masks": [], "ids": [], "parent_ids": []} for im in data["images"]
    }
    for annotation in data["annotations"]:
        entry = result[annotation["image_id"]]
        entry["masks"].append(annotation["segmentation"])
        entry["ids"].append(annotation["id"])
        entry["parent_ids"].append(annotation["parent_id"])
    for entry in result.values():
        entry["parents"] = [-1 if p is None else entry["ids"].index(p) for p in entry["parent_ids"]]
    return result


@pytest.fixture
def packs(tmp_path: Path) -> tuple[list[str], Path, list[FixtureImage]]:
    images = write_sa1b_tar(tmp_path / "sa_000000.tar", [1, 2, 3, 4])
    images += write_sa1b_tar(tmp_path / "sa_000001.tar", [5, 6, 7, 8])
    labelled = [im for im in images if im.image_id not in (3, 6)]
    write_pseudo_labels(tmp_path / "labels.json", labelled)
    return (
        [str(tmp_path / "sa_000000.tar"), str(tmp_path / "sa_000001.tar")],
        tmp_path / "labels.json",
        images,
    )


def test_streaming_yields_each_labelled_image_once_and_counts_the_rest(packs: Any, tmp_path: Path) -> None:
    tars, labels, _ = packs
    builder = SA1BPseudoLabelBuilder(
        tar_files=tars, pseudo_labels=str(labels), cache_dir=str(tmp_path / "cache")
    )
    stream = builder.as_streaming_dataset(split="train")
    expected = _expected(labels)
    seen = []
    for example in stream:
        seen.append(example["image_id"])
        reference = np.asarray(Image.open(io.BytesIO(jpeg_bytes(48, 64, seed=example["image_id"]))))
        np.testing.assert_array_equal(np.asarray(example["image"]), reference)
        targets = example_targets(example)
        assert targets["masks"] == expected[example["image_id"]]["masks"]
        assert targets["parents"] == expected[example["image_id"]]["parents"]
        assert example["pseudo_labels"]["parent_id"] == expected[example["image_id"]]["parent_ids"]
        assert example["file_name"] == f"sa_{example['image_id']}.jpg"
    assert seen == [1, 2, 4, 5, 7, 8]
    assert builder.stats.num_yielded == 6 and builder.stats.num_without_pseudo_labels == 2


def test_prepared_dataset_matches_the_stream_with_a_parquet_store(packs: Any, tmp_path: Path) -> None:
    tars, labels, _ = packs
    convert_pseudo_labels(labels, tmp_path / "labels.parquet", rows_per_group=2)
    builder = SA1BPseudoLabelBuilder(
        tar_files=tars, pseudo_labels=str(tmp_path / "labels.parquet"), cache_dir=str(tmp_path / "cache")
    )
    builder.download_and_prepare()
    prepared = builder.as_dataset(split="train")
    assert builder.stats.num_without_pseudo_labels == 2
    expected = _expected(labels)
    assert sorted(prepared["image_id"]) == [1, 2, 4, 5, 7, 8]
    for example in prepared:
        assert example_targets(example)["parents"] == expected[example["image_id"]]["parents"]
        assert example_targets(example)["masks"] == expected[example["image_id"]]["masks"]
        assert example["image"].size == (64, 48)


@pytest.mark.parametrize("num_packs", [2, 3])
def test_two_ranks_split_without_overlap_or_loss(tmp_path: Path, num_packs: int) -> None:
    # 2 packs: datasets gives each rank one pack; 3 packs: every other example.
    tars, images = [], []
    for pack in range(num_packs):
        ids = list(range(10 * pack + 1, 10 * pack + 4))
        images += write_sa1b_tar(tmp_path / f"sa_{pack:06d}.tar", ids)
        tars.append(str(tmp_path / f"sa_{pack:06d}.tar"))
    write_pseudo_labels(tmp_path / "labels.json", images)
    stream = SA1BPseudoLabelBuilder(
        tar_files=tars, pseudo_labels=str(tmp_path / "labels.json")
    ).as_streaming_dataset(split="train")
    per_rank = [
        [ex["image_id"] for ex in split_dataset_by_node(stream, rank=r, world_size=2)] for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(im.image_id for im in images)
    assert all(per_rank)


def test_truncated_pack_is_counted_and_the_join_goes_on(packs: Any, tmp_path: Path) -> None:
    tars, labels, _ = packs
    data = Path(tars[0]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    builder = SA1BPseudoLabelBuilder(tar_files=[str(cut), tars[1]], pseudo_labels=str(labels))
    ids = [ex["image_id"] for ex in builder.as_streaming_dataset(split="train")]
    assert ids[-3:] == [5, 7, 8] and set(ids) <= {1, 2, 4, 5, 7, 8}
    assert builder.stats.read.num_truncated_sources == 1
    assert builder.stats.read.issues[0].source.endswith("cut.tar")


def test_image_folder_builder_joins_by_relative_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    images = []
    for number, name in enumerate(["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg"]):
        (folder / name).write_bytes(jpeg_bytes(48, 64, seed=number))
        # c.jpg: labels made for another size (consistent in themselves: 48x32 masks)
        images.append(FixtureImage(image_id=number + 1, width=32 if name == "c.jpg" else 64, height=48))
    data = write_pseudo_labels(tmp_path / "labels.json", images[:3])
    for entry, name in zip(data["images"], ["a.jpg", "sub/b.jpg", "c.jpg"], strict=True):
        entry["file_name"] = name
    (tmp_path / "labels.json").write_text(json.dumps(data))
    builder = ImageFolderPseudoLabelBuilder(
        image_dir=str(folder), pseudo_labels=str(tmp_path / "labels.json"), num_shards=2
    )
    stream = builder.as_streaming_dataset(split="train")
    assert stream.num_shards == 2
    assert sorted((ex["image_id"], ex["file_name"]) for ex in stream) == [(1, "a.jpg"), (2, "sub/b.jpg")]
    assert builder.stats.num_without_pseudo_labels == 1 and builder.stats.num_size_mismatch == 1


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tar_files"):
        SA1BPseudoLabelBuilder(tar_files=[], pseudo_labels="x.json")
    with pytest.raises(ValueError, match="pseudo_labels"):
        SA1BPseudoLabelBuilder(tar_files=["a.tar"])
    with pytest.raises(ValueError, match="max_image_pixels"):
        SA1BPseudoLabelBuilder(tar_files=["a.tar"], pseudo_labels="x.json", max_image_pixels=0)
    with pytest.raises(ValueError, match="image_dir"):
        ImageFolderPseudoLabelBuilder(image_dir=str(tmp_path / "none"), pseudo_labels="x.json")


def test_cli_check_prints_the_join_counts(packs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tars, labels, _ = packs
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "check", "--tar", *tars, "--pseudo-labels", str(labels)])
    assert args.func(args) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert lines["examples"] == "6" and lines["without_pseudo_labels"] == "2" and lines["masks"] == str(6 * 4)


def test_missing_pack_fails_with_its_name(tmp_path: Path) -> None:
    write_pseudo_labels(tmp_path / "labels.json", [])
    builder = SA1BPseudoLabelBuilder(
        tar_files=[str(tmp_path / "absent.tar")], pseudo_labels=str(tmp_path / "labels.json")
    )
    with pytest.raises(FileNotFoundError, match=r"absent\.tar"):
        list(builder.as_streaming_dataset(split="train"))
    shutil.rmtree(tmp_path)


def test_package_exports_resolve_lazily() -> None:
    code = (
        "import sys, sohes_hf.data as d\n"
        "assert 'datasets' not in sys.modules and 'pyarrow' not in sys.modules\n"
        "assert all(getattr(d, name) is not None for name in d.__all__)\n"
        "assert 'datasets' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pickled_builder_reopens_its_store(packs: Any) -> None:
    tars, labels, _ = packs
    builder = SA1BPseudoLabelBuilder(tar_files=tars, pseudo_labels=str(labels))
    assert len(builder.pseudo_label_store()) == 6
    copy = pickle.loads(pickle.dumps(builder))
    assert copy._store is None and builder._store is not None
    ids = sorted(
        ex["image_id"] for ex in copy.as_streaming_dataset(split="train").select_columns(["image_id"])
    )
    assert ids == [1, 2, 4, 5, 7, 8]
