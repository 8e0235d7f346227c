"""Class-agnostic mask AR: plain pycocotools vs ``sohes_hf.evaluation.evaluate_class_agnostic``.

Builds a synthetic set (random elliptical blobs; predictions are jittered copies of the ground
truth plus random distractors, with random scores) and times, from the same RLE lists:

* ``pycocotools``: the usual recipe (``COCO`` from a dict, ``loadRes`` of a results list,
  ``COCOeval`` with ``useCats=0`` and ``maxDets=[1, 10, N]``, ``evaluate`` + ``accumulate``);
* ``sohes_hf`` (default backend ``faster_coco_eval``), end to end, input checks included;
* ``sohes_hf`` with ``backend="pycocotools"``, to show what the input checks cost;
* ``SohesAR().compute(predictions=..., references=...)``: the ``evaluate.Metric`` call users make
  (input checks, Arrow round trip and evaluation).

Prints the times, the speed-up and the largest absolute difference over AP, AP50, AP75, AP_S,
AP_M, AP_L, AR, AR_S, AR_M, AR_L and the per-IoU recall. Run:

    python benchmarks/benchmark_evaluation.py [--images 50] [--gt 30] [--predictions 300] [--size 256]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sohes_hf.evaluation import SohesAR, evaluate_class_agnostic
from sohes_hf.masks import encode_masks


def _blobs(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(2, size / 3, (count, 2))
    inside = ((yy[None] - centres[:, 0, None, None]) / radii[:, 0, None, None]) ** 2
    inside = inside + ((xx[None] - centres[:, 1, None, None]) / radii[:, 1, None, None]) ** 2
    return inside < 1.0


def make_dataset(
    num_images: int, num_gt: int, num_predictions: int, size: int, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-image predictions and references (compressed RLE with str counts)."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for _ in range(num_images):
        gt = _blobs(rng, num_gt, size)
        shifted = np.roll(gt, shift=tuple(rng.integers(-3, 4, 2)), axis=(1, 2))
        distractors = _blobs(rng, max(num_predictions - num_gt, 0), size)
        dt = np.concatenate([shifted, distractors])[:num_predictions]
        references.append({"masks": encode_masks(gt), "iscrowd": (rng.random(num_gt) < 0.05).astype(int)})
        predictions.append({"masks": encode_masks(dt), "scores": rng.random(len(dt)).tolist()})
    return predictions, references


def plain_pycocotools(
    predictions: list[dict[str, Any]], references: list[dict[str, Any]], max_detections: int
) -> np.ndarray:
    """The textbook pycocotools recipe; returns the ten metrics and the per-IoU recall."""
    images, gt_anns, results = [], [], []
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        height, width = reference["masks"][0]["size"]
        images.append({"id": index + 1, "height": height, "width": width})
        areas = coco_mask.area(reference["masks"])
        for rle, area, crowd in zip(reference["masks"], areas, reference["iscrowd"], strict=True):
            gt_anns.append(
                {"id": len(gt_anns) + 1, "image_id": index + 1, "category_id": 1, "segmentation": rle,
                 "area": float(area), "iscrowd": int(crowd)}
            )  # fmt: skip
        for rle, score in zip(prediction["masks"], prediction["scores"], strict=True):
            results.append({"image_id": index + 1, "category_id": 1, "segmentation": rle, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": [{"id": 1}], "annotations": gt_anns}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][..., -1]
    recall = evaluator.eval["recall"][..., -1]

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(defined.mean()) if defined.size else math.nan

    metrics = [mean(precision[..., a]) for a in range(4)]
    metrics[1:1] = [mean(precision[0, ..., 0]), mean(precision[5, ..., 0])]
    metrics += [mean(recall[..., a]) for a in range(4)]
    return np.asarray(metrics + recall[:, 0, 0].tolist(), dtype=np.float64)


def _ours_vector(result: Any) -> np.ndarray:
    return np.asarray(list(result.metrics().values()) + result.recall_per_iou.tolist(), dtype=np.float64)


def _timed(function: Any, repeats: int) -> tuple[float, Any]:
    best, output = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        output = function()
        best = min(best, time.perf_counter() - start)
    return best, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--gt", type=int, default=30, help="ground-truth masks per image")
    parser.add_argument("--predictions", type=int, default=300, help="predictions per image")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--max-detections", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    predictions, references = make_dataset(args.images, args.gt, args.predictions, args.size)
    print(
        f"{args.images} images of {args.size}x{args.size} px, {args.gt} GT and {args.predictions} "
        f"predictions per image, max_detections={args.max_detections}, best of {args.repeats}"
    )
    t_ref, ref = _timed(lambda: plain_pycocotools(predictions, references, args.max_detections), args.repeats)
    t_ours, ours = _timed(
        lambda: evaluate_class_agnostic(predictions, references, max_detections=args.max_detections),
        args.repeats,
    )
    t_ours_py, ours_py = _timed(
        lambda: evaluate_class_agnostic(
            predictions, references, max_detections=args.max_detections, backend="pycocotools"
        ),
        args.repeats,
    )
    t_metric, metric_scores = _timed(
        lambda: SohesAR(max_detections=args.max_detections).compute(
            predictions=predictions, references=references
        ),
        args.repeats,
    )
    metric_vector = np.asarray(list(metric_scores.values()), dtype=np.float64)
    ours_vector, ours_py_vector = _ours_vector(ours), _ours_vector(ours_py)
    print(f"plain pycocotools                      : {t_ref:7.3f} s")
    print(f"sohes_hf (faster_coco_eval backend)    : {t_ours:7.3f} s   speed-up x{t_ref / t_ours:.1f}")
    print(f"sohes_hf (pycocotools backend)         : {t_ours_py:7.3f} s")
    print(f"SohesAR().compute(...)                 : {t_metric:7.3f} s   speed-up x{t_ref / t_metric:.1f}")
    print(f"max |difference| SohesAR vs pycocotools: {np.nanmax(np.abs(metric_vector - ref[:10])):.3g}")
    print(f"max |difference| vs plain pycocotools  : {np.nanmax(np.abs(ours_vector - ref)):.3g}")
    print(f"max |difference| between backends     : {np.nanmax(np.abs(ours_vector - ours_py_vector)):.3g}")
    same_nans = np.array_equal(np.isnan(ours_vector), np.isnan(ref))
    print(f"undefined (NaN) entries agree          : {same_nans}")
    print("metrics x100: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in ours.metrics().items()))


if __name__ == "__main__":
    main()
