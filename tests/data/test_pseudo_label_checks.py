"""Invalid pseudo-labels are refused when loaded, naming image and annotation (issue 15, item 8)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from tests.data.fixtures import FixtureImage, pseudo_label_coco

from sohes_hf.data.pseudo_label_checks import PseudoLabelError
from sohes_hf.data.pseudo_label_store import (
    ArrowPseudoLabelStore,
    JsonPseudoLabelStore,
    ParquetPseudoLabelStore,
    convert_pseudo_labels,
)


def _labels() -> dict[str, Any]:
    return pseudo_label_coco([FixtureImage(image_id=n, width=40, height=30) for n in (1, 2, 3)])


def _counts(height: int, width: int, runs: list[int]) -> str:
    """Compressed counts of arbitrary runs, written with pycocotools (independent of the checker)."""
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return rle["counts"].decode("ascii")


def _set(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["annotations"][index][key] = value

    return edit


def _counts_of(index: int, counts: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["annotations"][index]["segmentation"]["counts"] = counts

    return edit


BAD = {
    "garbage RLE": (_counts_of(5, "garbage!!"), "do not describe 30x40"),
    "short RLE": (_counts_of(5, _counts(30, 40, [100, 20])), "do not describe 30x40"),
    "long RLE": (_counts_of(5, _counts(30, 40, [1000, 300, 5])), "do not describe 30x40"),
    "empty RLE": (_counts_of(5, ""), "do not describe 30x40"),
    "NaN score": (_set(5, "score", float("nan")), "not a finite number"),
    "inf score": (_set(5, "score", float("inf")), "not a finite number"),
    "score > 1": (_set(5, "score", 1.5), "outside [0, 1]"),
    "dangling parent": (_set(5, "parent_id", 999), "not an earlier annotation"),
    "self parent": (_set(5, "parent_id", 6), "its own parent"),
    "child before parent": (_set(4, "parent_id", 6), "not an earlier annotation"),
    "parent in another image": (_set(5, "parent_id", 1), "not an earlier annotation"),
    "wrong depth": (_set(5, "depth", 3), "depth"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("store", ["json", ".arrow", ".parquet"])
def test_invalid_label_is_refused_at_load_naming_image_and_annotation(
    tmp_path: Path, kind: str, store: str
) -> None:
    data = _labels()
    edit, reason = BAD[kind]
    edit(data)
    bad = data["annotations"][5 if kind != "child before parent" else 4]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))  # json writes NaN/Infinity literals, as Python's json reads them
    needles = [
        str(path),
        f"image {bad['image_id']} (sa_{bad['image_id']}.jpg)",
        f"annotation {bad['id']}",
        reason,
    ]
    if store == "json":
        with pytest.raises(PseudoLabelError) as error:
            JsonPseudoLabelStore.from_files(path)
    else:
        # a table written without validation (an older sohes-hf, another tool): refused on opening
        good = tmp_path / "good.json"
        good.write_text(json.dumps(_labels()))
        table_path = tmp_path / f"labels{store}"
        convert_pseudo_labels(good, table_path)
        _rewrite_table(table_path, data)
        needles[0] = str(table_path)
        opener = ArrowPseudoLabelStore if store == ".arrow" else ParquetPseudoLabelStore
        with pytest.raises(PseudoLabelError) as error:
            opener(table_path)
    for needle in needles:
        assert needle in str(error.value), str(error.value)
    assert "1 invalid" in str(error.value) or kind in ("child before parent", "self parent", "wrong depth")


def _rewrite_table(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data``'s labels into the table at ``path`` with pyarrow directly, bypassing checks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sohes_hf.data.pseudo_label_store import _TABLE_SCHEMA

    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
    for annotation in data["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    rows = sorted(data["images"], key=lambda im: im["id"])
    columns = {
        "image_id": [im["id"] for im in rows],
        "file_name": [im["file_name"] for im in rows],
        "width": [im["width"] for im in rows],
        "height": [im["height"] for im in rows],
        "label_id": [[a["id"] for a in by_image[im["id"]]] for im in rows],
        "counts": [[a["segmentation"]["counts"] for a in by_image[im["id"]]] for im in rows],
        "score": [[a["score"] for a in by_image[im["id"]]] for im in rows],
        "parent_id": [
            [-1 if a["parent_id"] is None else a["parent_id"] for a in by_image[im["id"]]] for im in rows
        ],
        "depth": [[a["depth"] for a in by_image[im["id"]]] for im in rows],
    }
    table = pa.table(columns, schema=_TABLE_SCHEMA)
    if path.suffix == ".parquet":
        pq.write_table(table, str(path), row_group_size=2)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _TABLE_SCHEMA) as writer:
            writer.write_table(table, max_chunksize=2)


def test_valid_labels_pass_every_store(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(_labels()))
    assert len(JsonPseudoLabelStore.from_files(path)) == 3
    for suffix in (".arrow", ".parquet"):
        convert_pseudo_labels(path, tmp_path / f"labels{suffix}")
    assert len(ArrowPseudoLabelStore(tmp_path / "labels.arrow")) == 3
    assert len(ParquetPseudoLabelStore(tmp_path / "labels.parquet")) == 3


def test_all_bad_annotations_are_counted(tmp_path: Path) -> None:
    data = _labels()
    for index in (1, 2, 9):
        data["annotations"][index]["score"] = float("nan")
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PseudoLabelError, match=r"3 invalid pseudo-label annotation\(s\) in 2 image\(s\)"):
        JsonPseudoLabelStore.from_files(path)


@pytest.mark.parametrize("value", ["7", 2.5, None, [1]])
def test_non_integer_ids_are_refused_naming_the_annotation(tmp_path: Path, value: Any) -> None:
    data = _labels()
    data["annotations"][3]["id"] = value
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PseudoLabelError, match=r"annotations\[3\]"):
        JsonPseudoLabelStore.from_files(path)


def test_mask_checker_agrees_with_pycocotools_on_valid_masks() -> None:
    from sohes_hf.modeling.masks import compressed_rle_pixels

    rng = np.random.default_rng(0)
    masks = rng.random((50, 30, 40)) < rng.random((50, 1, 1))
    counts = [coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    np.testing.assert_array_equal(compressed_rle_pixels(counts, np.full(50, 1200)), np.full(50, 1200))


def test_convert_labels_cli_refuses_bad_labels_in_one_line(tmp_path: Path) -> None:
    from tests.test_bad_inputs_cli import _assert_clean_refusal, _sohes

    data = _labels()
    data["annotations"][5]["segmentation"]["counts"] = "garbage!!"
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    result = _sohes("data", "convert-labels", str(path), "--output", str(tmp_path / "labels.arrow"))
    _assert_clean_refusal(result, str(path), "image 2 (sa_2.jpg)", "annotation 6", "do not describe 30x40")
    assert not (tmp_path / "labels.arrow").exists()


def test_training_images_log_what_they_drop_and_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.data.fixtures import jpeg_bytes

    from sohes_hf.training.datasets import PseudoLabelledImages

    data = pseudo_label_coco([FixtureImage(image_id=n, width=40, height=30) for n in (1, 2, 3, 4)])
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]  # sa_2: no annotation
    (tmp_path / "labels.json").write_text(json.dumps(data))
    folder = tmp_path / "images"
    folder.mkdir()
    for number in (1, 2, 3, 5):  # sa_4.jpg is missing; sa_5.jpg has no entry in the labels
        (folder / f"sa_{number}.jpg").write_bytes(jpeg_bytes(30, 40, seed=number))
    with caplog.at_level("WARNING"):
        images = PseudoLabelledImages(str(tmp_path / "labels.json"), str(folder))
    assert [entry.file_name for entry, _ in images.entries] == ["sa_1.jpg", "sa_3.jpg"]
    assert images.num_dropped == {
        "no pseudo-label annotation": 1,
        "listed under image_root but absent from the pseudo-label file": 1,
        "in the pseudo-label file but no such file under image_root": 1,
    }
    assert "sa_2.jpg" in caplog.text and "sa_5.jpg" in caplog.text


def test_a_file_without_depth_gets_it_from_the_parent_links(tmp_path: Path) -> None:
    """``depth`` is redundant with ``parent_id``: derived when absent, in every store."""
    data = _labels()
    depth_of: dict[int, int] = {}
    for annotation in data["annotations"]:  # the fixture's own depths, recomputed independently
        parent = annotation.get("parent_id")
        depth_of[annotation["id"]] = 0 if parent is None else depth_of[parent] + 1
        del annotation["depth"]
    assert max(depth_of.values()) >= 1, "the fixture must have children"
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    stores = [JsonPseudoLabelStore.from_files(path)]
    for suffix, store in ((".arrow", ArrowPseudoLabelStore), (".parquet", ParquetPseudoLabelStore)):
        convert_pseudo_labels(path, tmp_path / f"labels{suffix}")
        stores.append(store(tmp_path / f"labels{suffix}"))
    for store in stores:
        for image_id in (1, 2, 3):
            image = store.get(image_id)
            assert image is not None
            assert {label.id: label.depth for label in image.labels} == {
                a["id"]: depth_of[a["id"]] for a in data["annotations"] if a["image_id"] == image_id
            }
