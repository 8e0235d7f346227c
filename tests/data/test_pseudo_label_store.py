"""Tests of the pseudo-label stores and the training-target conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.data.fixtures import FixtureImage, pseudo_label_coco, write_pseudo_labels

from sohes_hf.data.pseudo_label_store import (
    ArrowPseudoLabelStore,
    JsonPseudoLabelStore,
    ParquetPseudoLabelStore,
    PseudoLabel,
    convert_pseudo_labels,
    open_pseudo_label_store,
    targets_for_image,
)


def _label(label_id: int, parent_id: int | None) -> PseudoLabel:
    return PseudoLabel(label_id, {"size": [2, 2], "counts": "04"}, 0.5, parent_id, 0)


def test_targets_for_image_maps_parent_ids_to_indices() -> None:
    # ids 10 > 11 > 12 and 10 > 13; 20 is a second root with child 21
    labels = [
        _label(10, None),
        _label(11, 10),
        _label(20, None),
        _label(12, 11),
        _label(13, 10),
        _label(21, 20),
    ]
    targets = targets_for_image(labels)
    # brute force: for each label, search the list for the parent's position
    expected = [next((j for j, o in enumerate(labels) if o.id == lb.parent_id), -1) for lb in labels]
    assert targets["parents"] == expected == [-1, 0, -1, 1, 0, 2]
    assert targets["masks"] == [lb.segmentation for lb in labels]


def test_targets_for_image_rejects_children_before_parents() -> None:
    with pytest.raises(ValueError, match="annotation 11: parent_id 12"):
        targets_for_image([_label(11, 12), _label(12, None)])
    with pytest.raises(ValueError, match="parent_id 99"):
        targets_for_image([_label(11, 99)])


def _images(count: int) -> list[FixtureImage]:
    return [FixtureImage(image_id=100 + i, width=32 + i, height=24) for i in range(count)]


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_json_and_table_stores_agree(tmp_path: Path, suffix: str) -> None:
    images = _images(9)
    write_pseudo_labels(tmp_path / "shard0.json", images[:5], seed=1)
    write_pseudo_labels(tmp_path / "shard1.json", images[5:], seed=2)
    shard1 = json.loads((tmp_path / "shard1.json").read_text())
    json_store = JsonPseudoLabelStore.from_files(tmp_path)
    assert convert_pseudo_labels(tmp_path, tmp_path / f"labels{suffix}", rows_per_group=2) == 9
    table_store = open_pseudo_label_store(tmp_path / f"labels{suffix}")
    assert isinstance(table_store, ArrowPseudoLabelStore if suffix == ".arrow" else ParquetPseudoLabelStore)
    assert len(table_store) == len(json_store) == 9
    for image in reversed(images):  # random-ish order crosses row groups and the cache
        from_json, from_table = json_store.get(image.image_id), table_store.get(image.image_id)
        assert from_json is not None and from_table is not None
        assert [lb.score for lb in from_json.labels] == pytest.approx(
            [lb.score for lb in from_table.labels], rel=1e-6
        )
        assert [(lb.id, lb.segmentation, lb.parent_id, lb.depth) for lb in from_json.labels] == [
            (lb.id, lb.segmentation, lb.parent_id, lb.depth) for lb in from_table.labels
        ]
        assert (from_table.image_id, from_table.width, from_table.height) == (image.image_id, image.width, 24)
        assert from_table.file_name == image.file_name
        assert table_store.image_id_for_file_name(image.file_name) == image.image_id
        # the size lookup (no labels converted) agrees with the written image record
        expected = (24, image.width)
        assert table_store.image_size(image.image_id) == json_store.image_size(image.image_id) == expected
        # the label count (no labels converted) agrees with the converted labels
        assert table_store.num_labels(image.image_id) == json_store.num_labels(image.image_id)
        assert table_store.num_labels(image.image_id) == len(from_table.labels) == len(from_json.labels)
    assert table_store.image_size(999) is None and json_store.image_size(999) is None
    assert table_store.num_labels(999) is None and json_store.num_labels(999) is None
    # an annotation of the second shard, compared with the raw file
    raw = shard1["annotations"][1]
    label = json_store.get(raw["image_id"]).labels[1]  # type: ignore[union-attr]
    assert (label.id, label.parent_id, label.depth, label.segmentation) == (
        raw["id"],
        raw["parent_id"],
        raw["depth"],
        raw["segmentation"],
    )
    assert json_store.get(1) is None and table_store.get(1) is None


def test_bad_files_are_named(tmp_path: Path) -> None:
    data = pseudo_label_coco(_images(1))
    data["annotations"][0]["image_id"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json: annotations\[0\]: image_id 5"):
        JsonPseudoLabelStore.from_files(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing"):
        JsonPseudoLabelStore.from_files(tmp_path / "missing")
    write_pseudo_labels(tmp_path / "a.json", _images(1))
    write_pseudo_labels(tmp_path / "b.json", _images(1))
    with pytest.raises(ValueError, match="image id 100"):
        JsonPseudoLabelStore.from_files([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(ValueError, match="rows_per_group"):
        convert_pseudo_labels(tmp_path / "a.json", tmp_path / "x.parquet", rows_per_group=0)
    with pytest.raises(ValueError, match="must end with"):
        convert_pseudo_labels(tmp_path / "a.json", tmp_path / "x.json")
    (tmp_path / "other.arrow").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"other\.arrow is not a readable Arrow IPC file"):
        ArrowPseudoLabelStore(tmp_path / "other.arrow")
    (tmp_path / "other.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"other\.parquet is not a readable Parquet file"):
        ParquetPseudoLabelStore(tmp_path / "other.parquet")
