"""evaluate_class_agnostic against pycocotools' COCOeval, run independently inside the tests."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sohes_hf.evaluation import EvaluationResult, evaluate_class_agnostic

SIZE = 100  # large enough for all three COCO area ranges (large: > 96² px)


def _blobs(rng: np.random.Generator, count: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """(count, H, W) bool random ellipses of every scale (small, medium and large at 100 px)."""
    yy, xx = np.mgrid[:height, :width]
    centres = rng.uniform(0, [height, width], (count, 2))
    radii = rng.uniform(0.8, 1.2 * max(height, width), (count, 2)) ** rng.uniform(0.5, 1.0, (count, 1))
    value = ((yy[None] - centres[:, :1, None]) / radii[:, :1, None]) ** 2
    value = value + ((xx[None] - centres[:, 1:, None]) / radii[:, 1:, None]) ** 2
    return value < 1.0


def _encode(masks: np.ndarray) -> list[dict[str, Any]]:
    if masks.shape[0] == 0:
        return []
    rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode()} for r in rles]


def random_case(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Images with: several GT and predictions, no GT, no predictions, >100 predictions, crowd."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    layouts = [(6, 20), (0, 8), (5, 0), (4, 130), (3, 12), (0, 0)]
    for num_gt, num_dt in layouts:
        gt = _blobs(rng, num_gt)
        if num_gt > 3:  # a "large" entity (> 96² px) needs nearly the whole 100 px image
            gt[-1] = False
            gt[-1, rng.integers(0, 3) :, rng.integers(0, 3) :] = True
        noisy = gt[: min(num_gt, num_dt)] ^ (rng.random((min(num_gt, num_dt), SIZE, SIZE)) < 0.03)
        dt = np.concatenate([noisy, _blobs(rng, num_dt - len(noisy))])
        scores = rng.random(num_dt).round(1)  # rounded: ties, which COCO breaks by input order
        if num_dt > 100:  # the true matches rank past 100: found only with max_detections > 100
            scores[: len(noisy)] = 0.0
        iscrowd = (rng.random(num_gt) < 0.25).astype(int)
        predictions.append({"masks": _encode(dt), "scores": scores.tolist()})
        references.append({"masks": _encode(gt), "iscrowd": iscrowd.tolist()})
    return predictions, references


def reference_metrics(
    predictions: list[dict[str, Any]], references: list[dict[str, Any]], max_detections: int, iou_type: str
) -> np.ndarray:
    """Ten metrics and the (10,) per-IoU recall from pycocotools (COCO's -1 kept), built the usual way."""
    images, gt_annotations, results = [], [], []
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        images.append({"id": index + 1, "height": SIZE, "width": SIZE})
        for rle, crowd in zip(reference["masks"], reference.get("iscrowd", [0] * 99), strict=False):
            gt_annotations.append(
                {"id": len(gt_annotations) + 1, "image_id": index + 1, "category_id": 1,
                 "segmentation": copy.deepcopy(rle), "area": float(coco_mask.area(rle)),
                 "bbox": list(coco_mask.toBbox(rle)), "iscrowd": int(crowd)}
            )  # fmt: skip
        for rle, score in zip(prediction["masks"], prediction["scores"], strict=True):
            result = {"image_id": index + 1, "category_id": 1, "score": float(score)}
            result["segmentation"] = copy.deepcopy(rle)
            results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": [{"id": 1}], "annotations": gt_annotations}
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "categories": [{"id": 1}], "annotations": []}
            coco_dt.createIndex()
        if iou_type == "bbox":  # keep mask areas so that both sides split S/M/L on the same areas
            for annotation in coco_dt.dataset["annotations"]:
                annotation["area"] = float(coco_mask.area(annotation["segmentation"]))
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    m = evaluator.params.maxDets.index(max_detections)
    precision = evaluator.eval["precision"][..., m]
    recall = evaluator.eval["recall"][..., m]

    def summarize(values: np.ndarray) -> float:  # COCOeval.summarize's average
        return float(np.mean(values[values > -1])) if (values > -1).any() else -1.0

    thresholds = evaluator.params.iouThrs
    ap = [summarize(precision[..., a]) for a in range(4)]
    ap[1:1] = [
        summarize(precision[thresholds == 0.5][..., 0]),
        summarize(precision[thresholds == 0.75][..., 0]),
    ]
    ar = [summarize(recall[..., a]) for a in range(4)]
    return np.asarray(ap + ar + recall[:, 0, 0].tolist())


def as_vector(result: EvaluationResult) -> np.ndarray:
    return np.asarray(list(result.metrics().values()) + result.recall_per_iou.tolist())


def assert_matches_coco(result: EvaluationResult, expected: np.ndarray) -> None:
    """Equal to 1e-6 where COCO defines the value; NaN exactly where COCO writes -1."""
    got = as_vector(result)
    np.testing.assert_array_equal(np.isnan(got), expected == -1)
    defined = expected != -1
    np.testing.assert_allclose(got[defined], expected[defined], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("max_detections", [1000, 100, 5])
@pytest.mark.parametrize("seed", [0, 2])
def test_matches_pycocotools_on_random_cases(seed: int, max_detections: int, backend: str) -> None:
    predictions, references = random_case(seed)
    before = copy.deepcopy((predictions, references))
    result = evaluate_class_agnostic(predictions, references, max_detections=max_detections, backend=backend)
    assert_matches_coco(result, reference_metrics(predictions, references, max_detections, "segm"))
    assert (predictions, references) == before  # unlike loadRes, the inputs are left untouched
    assert result.num_images == 6
    assert result.num_ground_truths == sum(len(r["masks"]) for r in references)
    assert result.num_crowd_ground_truths == sum(sum(r["iscrowd"]) for r in references)
    assert result.num_predictions == sum(len(p["masks"]) for p in predictions)
    assert result.num_images_without_predictions == 1
    assert result.max_detections == max_detections


def test_bbox_iou_type_matches_pycocotools() -> None:
    predictions, references = random_case(2)
    result = evaluate_class_agnostic(predictions, references, iou_type="bbox")
    assert_matches_coco(result, reference_metrics(predictions, references, 1000, "bbox"))


def test_bool_arrays_and_uncompressed_rle_give_the_same_numbers() -> None:
    predictions, references = random_case(3)
    expected = as_vector(evaluate_class_agnostic(predictions, references))

    def decoded(rles: list[dict[str, Any]]) -> np.ndarray:
        if not rles:
            return np.zeros((0, SIZE, SIZE), dtype=bool)
        return coco_mask.decode([{**r, "counts": r["counts"].encode()} for r in rles]).transpose(2, 0, 1) > 0

    def uncompressed(mask: np.ndarray) -> dict[str, Any]:
        flat = mask.flatten(order="F").astype(np.int8)
        change = np.flatnonzero(np.diff(np.concatenate(([0], flat, [1 - flat[-1]]))))
        runs = np.diff(np.concatenate(([0], change)))
        return {"size": [SIZE, SIZE], "counts": runs.tolist()}

    stacked = [{**p, "masks": decoded(p["masks"])} for p in predictions]
    listed = [{**r, "masks": list(decoded(r["masks"]))} for r in references]
    raw = [{**r, "masks": [uncompressed(m) for m in decoded(r["masks"])]} for r in references]
    np.testing.assert_allclose(as_vector(evaluate_class_agnostic(stacked, listed)), expected, atol=1e-12)
    np.testing.assert_allclose(as_vector(evaluate_class_agnostic(predictions, raw)), expected, atol=1e-12)


def test_hand_computed_recall() -> None:
    """Two ground truths, one found exactly: recall 1/2 at every IoU; precision 1 up to recall 0.5."""
    gt = np.zeros((2, SIZE, SIZE), dtype=bool)
    gt[0, :10, :10] = True  # 100 px: small
    gt[1, 20:40, 20:40] = True  # 400 px: small
    references = [{"masks": _encode(gt)}]
    predictions = [{"masks": _encode(gt[:1]), "scores": [0.9]}]
    result = evaluate_class_agnostic(predictions, references)
    assert result.ar == pytest.approx(0.5) and result.ar_s == pytest.approx(0.5)
    assert math.isnan(result.ar_m) and math.isnan(result.ar_l) and math.isnan(result.ap_l)
    assert result.ap == pytest.approx(51 / 101)  # 101-point interpolation: points 0.00..0.50
    np.testing.assert_allclose(result.recall_per_iou, 0.5)


def test_empty_inputs_are_undefined() -> None:
    nothing = evaluate_class_agnostic([], [])
    assert all(math.isnan(v) for v in nothing.metrics().values()) and nothing.num_images == 0
    blank = [{"masks": []}] * 3
    result = evaluate_class_agnostic([{"masks": [], "scores": []}] * 3, blank)
    assert all(math.isnan(v) for v in result.metrics().values()) and result.num_images == 3
    assert result.to_dict()["AR"] is None
    only_predictions = evaluate_class_agnostic(random_case(0)[0], blank * 2)
    assert math.isnan(only_predictions.ar) and math.isnan(only_predictions.ap)


def test_missed_images_count_as_misses() -> None:
    predictions, references = random_case(4)
    silent = [{"masks": [], "scores": []} for _ in predictions]
    result = evaluate_class_agnostic(silent, references)
    assert result.ar == 0.0 and result.ap == 0.0
    assert result.num_images_without_predictions == sum(1 for r in references if r["masks"])


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ([], [{"masks": []}], "one entry per image"),
        ([{"masks": [], "scores": []}], ["no"], "expected a mapping"),
        ([{"scores": []}], [{"masks": []}], "missing key 'masks'"),
        ([{"masks": "x"}], [{"masks": []}], "expected a list of masks"),
        ([{"masks": [{"size": [4, 4], "counts": "0?"}], "scores": [1.0]}], [{"masks": []}], r"\[0\]"),
        ([{"masks": [{"size": [4, 0], "counts": "04"}], "scores": [1.0]}], [{"masks": []}], "size"),
        ([{"masks": np.ones((1, 4, 4), bool)}], [{"masks": []}], "missing key 'scores'"),
        ([{"masks": np.ones((1, 4, 4), bool), "scores": [1, 2]}], [{"masks": []}], "expected 1 scores"),
        ([{"masks": np.ones((1, 4, 4), bool), "scores": [math.nan]}], [{"masks": []}], "finite"),
        (
            [{"masks": np.ones((1, 4, 4), bool), "scores": [1]}],
            [{"masks": np.ones((1, 4, 5), bool)}],
            "same size",
        ),
        ([{"masks": [], "scores": []}], [{"masks": np.ones((1, 4, 4), bool), "iscrowd": [2]}], "0 or 1"),
        ([{"masks": [], "scores": []}], [{"masks": np.ones((1, 4, 4), bool), "iscrowd": []}], "iscrowd"),
        ([{"masks": np.ones((4, 4), bool), "scores": [1]}], [{"masks": []}], r"\(N, H, W\)"),
    ],
)
def test_bad_input_raises(predictions: Any, references: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        evaluate_class_agnostic(predictions, references)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_detections": 0}, "max_detections"), ({"max_detections": 1.5}, "max_detections"),
     ({"iou_type": "keypoints"}, "iou_type"), ({"backend": "lvis"}, "backend")],
)  # fmt: skip
def test_bad_options_name_the_argument(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        evaluate_class_agnostic([], [], **kwargs)


def test_truncated_rle_string_is_rejected() -> None:
    rle = _encode(_blobs(np.random.default_rng(5), 1))[0]
    truncated = {"size": rle["size"], "counts": rle["counts"][:-1]}
    with pytest.raises(ValueError, match="do not describe"):
        evaluate_class_agnostic([{"masks": [truncated], "scores": [1.0]}], [{"masks": []}])
