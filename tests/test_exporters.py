"""SAM records and COCO results from sohes_hf.exporters, checked with pycocotools and scipy."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from sohes_hf.exporters import (
    as_entity_records,
    to_coco_results,
    to_sam_records,
    uncompressed_rle,
    write_json,
)
from sohes_hf.masks import encode_mask

HEIGHT, WIDTH = 40, 56


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    whole = np.zeros((HEIGHT, WIDTH), dtype=bool)
    whole[2:36, 3:50] = True
    part = np.zeros_like(whole)
    part[5:20, 6:30] = True
    blob = rng.random((HEIGHT, WIDTH)) > 0.6  # irregular, touches the image border
    return [whole, part, blob]


def _entities() -> list[dict[str, Any]]:
    whole, part, blob = _masks()
    return [
        {"id": 0, "mask": encode_mask(whole), "score": 0.9, "parent_id": None, "depth": 0},
        {"id": 1, "mask": encode_mask(part), "score": 0.7, "parent_id": 0, "depth": 1},
        {"id": 2, "mask": blob, "score": 0.4, "parent_id": None, "depth": 0},
    ]


@pytest.mark.parametrize("output_mode", ["coco_rle", "uncompressed_rle", "binary_mask"])
def test_sam_records_decode_to_the_masks(output_mode: str) -> None:
    records = to_sam_records(_entities(), output_mode=output_mode)
    assert len(records) == 3
    for record, mask, entity in zip(records, _masks(), _entities(), strict=True):
        segmentation = record["segmentation"]
        if output_mode == "binary_mask":
            decoded = segmentation
        elif output_mode == "uncompressed_rle":
            decoded = coco_mask.decode(coco_mask.frPyObjects(segmentation, HEIGHT, WIDTH)).astype(bool)
        else:
            decoded = coco_mask.decode({**segmentation, "counts": segmentation["counts"].encode()}).astype(
                bool
            )
        np.testing.assert_array_equal(decoded, mask)
        assert record["area"] == int(mask.sum())
        expected_box = coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))
        np.testing.assert_allclose(record["bbox"], expected_box)
        assert record["predicted_iou"] == entity["score"]
        assert record["crop_box"] == [0.0, 0.0, float(WIDTH), float(HEIGHT)]
        assert (record["id"], record["parent_id"], record["depth"]) == (
            entity["id"],
            entity["parent_id"],
            entity["depth"],
        )
        assert "stability_score" not in record
        # The point lies inside the mask, at the largest distance from the outside (brute force).
        ((x, y),) = record["point_coords"]
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        assert mask[int(y), int(x)]
        assert distance[int(y), int(x)] == pytest.approx(distance.max(), rel=1e-5)
    json.dumps(to_sam_records(_entities()))  # the default mode is JSON-safe


def test_uncompressed_rle_round_trips_random_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        height, width = rng.integers(1, 12, size=2)
        mask = rng.random((height, width)) > rng.random()
        rle = uncompressed_rle(mask)
        assert sum(rle["counts"]) == height * width
        decoded = coco_mask.decode(coco_mask.frPyObjects(rle, int(height), int(width))).astype(bool)
        np.testing.assert_array_equal(decoded, mask)


def test_coco_results_load_and_score_perfectly_against_themselves() -> None:
    masks = _masks()
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": 7, "width": WIDTH, "height": HEIGHT, "file_name": "x.png"}],
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": [
            {
                "id": index + 1,
                "image_id": 7,
                "category_id": 1,
                "segmentation": encode_mask(mask),
                "area": int(mask.sum()),
                "bbox": coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist(),
                "iscrowd": 0,
            }
            for index, mask in enumerate(masks)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    results = to_coco_results(_entities(), image_id=7)
    assert all("bbox" not in result for result in results)
    json.dumps(results)
    with contextlib.redirect_stdout(io.StringIO()):
        predictions = ground_truth.loadRes(json.loads(json.dumps(results)))
    loaded = predictions.loadAnns(predictions.getAnnIds(imgIds=[7]))
    assert len(loaded) == 3
    for annotation, mask, entity in zip(loaded, masks, _entities(), strict=True):
        np.testing.assert_array_equal(predictions.annToMask(annotation).astype(bool), mask)
        assert annotation["area"] == int(mask.sum())
        assert (annotation["entity_id"], annotation["parent_id"], annotation["depth"]) == (
            entity["id"],
            entity["parent_id"],
            entity["depth"],
        )
        assert annotation["category_id"] == 1
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(ground_truth, predictions, "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_entity_records_measure_missing_fields_and_reject_bad_input() -> None:
    records = as_entity_records([{"mask": _masks()[0], "score": 0.5}])
    assert records[0].id == 0 and records[0].depth == 0 and records[0].area == int(_masks()[0].sum())
    assert records[0].bbox == (3.0, 2.0, 47.0, 34.0)
    with pytest.raises(ValueError, match=r"entities\[0\]: missing field 'mask'"):
        as_entity_records([{"score": 0.5}])
    with pytest.raises(ValueError, match="output_mode"):
        to_sam_records(_entities(), output_mode="polygons")
    with pytest.raises(TypeError, match="image_id"):
        to_coco_results(_entities(), image_id="7")  # type: ignore[arg-type]
    small = {"id": 3, "mask": np.zeros((4, 4), dtype=bool), "score": 0.1}
    with pytest.raises(ValueError, match="differs"):
        as_entity_records([*_entities(), small])


def test_write_json_is_atomic_and_converts_numpy(tmp_path: Path) -> None:
    target = write_json(tmp_path / "sub" / "records.json", to_sam_records(_entities(), "binary_mask"))
    loaded = json.loads(target.read_text())
    np.testing.assert_array_equal(np.asarray(loaded[1]["segmentation"], dtype=bool), _masks()[1])
    assert [p.name for p in target.parent.iterdir()] == ["records.json"]
