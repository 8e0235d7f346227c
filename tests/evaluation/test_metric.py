"""SohesAR (evaluate.Metric) offline, against pycocotools' COCOeval run in the test."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sohes_hf.evaluation import SohesAR

SIZE = 40
NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR", "AR_S", "AR_M", "AR_L")


def _case(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-image bool-array masks: 5 images, one without ground truth, one without predictions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]

    def blobs(count: int) -> np.ndarray:
        centres = rng.uniform(0, SIZE, (count, 2, 1, 1))
        radii = rng.uniform(1, SIZE / 2, (count, 2, 1, 1))
        return ((yy - centres[:, 0]) / radii[:, 0]) ** 2 + ((xx - centres[:, 1]) / radii[:, 1]) ** 2 < 1

    predictions, references = [], []
    for num_gt, num_dt in [(5, 15), (0, 4), (4, 0), (6, 110), (3, 9)]:
        gt = blobs(num_gt)
        matched = min(num_gt, num_dt)
        dt = np.concatenate(
            [gt[:matched] ^ (rng.random((matched, SIZE, SIZE)) < 0.05), blobs(num_dt - matched)]
        )
        predictions.append({"masks": dt, "scores": rng.random(num_dt)})
        references.append({"masks": gt, "iscrowd": (rng.random(num_gt) < 0.2).astype(int)})
    return predictions, references


def _pycocotools(
    predictions: list[dict[str, Any]], references: list[dict[str, Any]], max_det: int
) -> list[float]:
    images, gts, results = [], [], []
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        images.append({"id": i + 1, "height": SIZE, "width": SIZE})
        for mask, crowd in zip(reference["masks"], reference["iscrowd"], strict=True):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                        "area": float(mask.sum()), "iscrowd": int(crowd)})  # fmt: skip
        for mask, score in zip(prediction["masks"], prediction["scores"], strict=True):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": i + 1, "category_id": 1, "segmentation": rle, "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": [{"id": 1}], "annotations": gts}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    m = evaluator.params.maxDets.index(max_det)
    precision, recall = evaluator.eval["precision"][..., m], evaluator.eval["recall"][..., m]

    def mean(values: np.ndarray) -> float:
        return float(values[values > -1].mean()) if (values > -1).any() else math.nan

    ap = [mean(precision[..., a]) for a in range(4)]
    ap[1:1] = [mean(precision[0, ..., 0]), mean(precision[5, ..., 0])]
    return ap + [mean(recall[..., a]) for a in range(4)]


def _assert_close(scores: dict[str, float], expected: list[float]) -> None:
    assert list(scores) == list(NAMES)
    assert all(isinstance(v, float) for v in scores.values())
    np.testing.assert_allclose([scores[n] for n in NAMES], expected, rtol=0, atol=1e-6)


def test_compute_matches_pycocotools() -> None:
    predictions, references = _case(0)
    scores = SohesAR().compute(predictions=predictions, references=references)
    assert scores is not None
    _assert_close(scores, _pycocotools(predictions, references, 1000))


def test_add_batch_add_and_max_detections() -> None:
    predictions, references = _case(1)
    metric = SohesAR(max_detections=100)
    metric.add_batch(predictions=predictions[:3], references=references[:3])
    for prediction, reference in zip(predictions[3:], references[3:], strict=True):
        metric.add(prediction=prediction, reference=reference)
    scores = metric.compute()
    assert scores is not None
    _assert_close(scores, _pycocotools(predictions, references, 100))
    again = SohesAR(backend="pycocotools", experiment_id="again")
    again.add_batch(predictions=predictions, references=references)
    scores = again.compute(max_detections=5)  # compute-time override
    assert scores is not None
    _assert_close(scores, _pycocotools(predictions, references, 5))


def test_rle_inputs_and_missing_iscrowd() -> None:
    predictions, references = _case(2)

    def as_rles(masks: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for mask in masks:
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            out.append({"size": [SIZE, SIZE], "counts": rle["counts"].decode()})
        return out

    rle_predictions = [{"masks": as_rles(p["masks"]), "scores": list(p["scores"])} for p in predictions]
    no_crowd = [{"masks": as_rles(r["masks"])} for r in references]
    scores = SohesAR().compute(predictions=rle_predictions, references=no_crowd)
    assert scores is not None
    zeros = [{**r, "iscrowd": np.zeros(len(r["masks"]), int)} for r in references]
    _assert_close(scores, _pycocotools(predictions, zeros, 1000))


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"max_detections": 0}, "max_detections"), ({"backend": "x"}, "backend")]
)
def test_bad_init_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SohesAR(**kwargs)


def test_bad_batch_names_the_entry() -> None:
    metric = SohesAR()
    with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\]"):
        metric.add_batch(
            predictions=[{"masks": np.ones((2, 4, 4), bool), "scores": [1.0]}], references=[{"masks": []}]
        )


def test_compute_refuses_malformed_rle_once_checked_in_add_batch() -> None:
    # "1" + "1" are runs 1 and 1: 2 pixels, not the 16 of a 4x4 image.
    bad = {"masks": [{"size": [4, 4], "counts": "11"}], "scores": [0.5]}
    good = {"masks": [{"size": [4, 4], "counts": "0`0"}]}
    with pytest.raises(ValueError, match=r"predictions\[0\].*compressed RLE counts"):
        SohesAR().compute(predictions=[bad], references=[good])
