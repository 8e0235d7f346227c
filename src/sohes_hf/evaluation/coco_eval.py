"""Class-agnostic COCO mask evaluation: the AP and AR of SOHES (paper sections 4.1-4.3, appendix B-C).

The paper ranks open-world segmenters by mask average recall (AR) with up to 1,000 predictions
per image, because the evaluation datasets annotate only some of the entities a model may
validly find and average precision (AP) would punish the rest (appendix B). AR is averaged over
the ten IoU thresholds 0.50:0.05:0.95; AR_S, AR_M and AR_L restrict it to ground truths of
area < 32², 32²-96² and > 96² pixels (COCO's ranges). Tables 1, 2, 4 and 5 report AP, AR_S,
AR_M, AR_L and AR.

Every number here is COCO's own: pycocotools ``COCOeval`` with ``iouType="segm"``,
``params.useCats = 0`` (all masks belong to one class) and ``params.maxDets = [1, 10, N]``,
read at ``N`` straight from ``eval["precision"]`` and ``eval["recall"]``. ``summarize()`` is not
used because it reports AP at a hard-coded 100 detections. The default backend is
``faster-coco-eval``, whose arrays are identical to pycocotools' and which runs several times
faster; ``backend="pycocotools"`` runs the reference implementation.

Undefined values (no ground truth at all, or none in an area range) are ``NaN``, where COCO
writes -1: a NaN cannot be averaged by accident. :meth:`EvaluationResult.to_dict` turns them
into ``None`` for JSON.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sohes_hf.logging_utils import get_logger
from sohes_hf.masks import encode_masks, mask_boxes_xywh, normalize_rle, normalize_rles

logger = get_logger(__name__)

Backend = Literal["faster_coco_eval", "pycocotools"]
IouType = Literal["segm", "bbox"]
BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")

# COCO's area ranges in pixels² (index 0 is "all"); both backends use exactly these by default.
AREA_RANGE_LABELS: tuple[str, ...] = ("all", "small", "medium", "large")
_CATEGORY_ID = 1  # class-agnostic: every mask is one "entity"


@dataclass(frozen=True)
class EvaluationResult:
    """Class-agnostic COCO metrics at ``max_detections`` predictions per image.

    All metric values are fractions in [0, 1] (the paper prints them x100), or ``NaN`` where
    COCO has no ground truth to measure them on (COCO's -1).

    Attributes:
        ap: AP averaged over IoU 0.50:0.95, all areas.
        ap50: AP at IoU 0.50.
        ap75: AP at IoU 0.75.
        ap_s, ap_m, ap_l: AP for small (< 32²), medium and large (> 96²) ground truths.
        ar: AR averaged over IoU 0.50:0.95, all areas: the paper's headline metric.
        ar_s, ar_m, ar_l: AR for small, medium and large ground truths.
        recall_per_iou: (10,) recall at each IoU threshold (all areas), NaN where undefined.
        iou_thresholds: (10,) the IoU thresholds 0.50, 0.55, ..., 0.95.
        max_detections: predictions per image kept (highest scores first).
        num_images: images evaluated.
        num_ground_truths: ground-truth masks, crowd regions included.
        num_crowd_ground_truths: ground-truth masks marked ``iscrowd`` (ignored, never missed).
        num_predictions: predictions given (before truncation to ``max_detections``).
        num_images_without_predictions: images with ground truth but no prediction; their
            ground truths all count as misses.
    """

    ap: float
    ap50: float
    ap75: float
    ap_s: float
    ap_m: float
    ap_l: float
    ar: float
    ar_s: float
    ar_m: float
    ar_l: float
    recall_per_iou: np.ndarray = field(repr=False)
    iou_thresholds: np.ndarray = field(repr=False)
    max_detections: int
    num_images: int
    num_ground_truths: int
    num_crowd_ground_truths: int
    num_predictions: int
    num_images_without_predictions: int

    METRIC_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR", "AR_S", "AR_M", "AR_L")

    def metrics(self) -> dict[str, float]:
        """The ten metrics under the paper's names (``"AP"``, ``"AR_S"``, ...), as fractions."""
        values = [self.ap, self.ap50, self.ap75, self.ap_s, self.ap_m, self.ap_l]
        values += [self.ar, self.ar_s, self.ar_m, self.ar_l]
        return dict(zip(self.METRIC_NAMES, values, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: metrics as fractions (``None`` where undefined) and the counts."""
        output: dict[str, Any] = {name: _json_float(value) for name, value in self.metrics().items()}
        output["recall_per_iou"] = [_json_float(value) for value in self.recall_per_iou.tolist()]
        output["iou_thresholds"] = [round(float(t), 2) for t in self.iou_thresholds.tolist()]
        output.update(
            max_detections=self.max_detections,
            num_images=self.num_images,
            num_ground_truths=self.num_ground_truths,
            num_crowd_ground_truths=self.num_crowd_ground_truths,
            num_predictions=self.num_predictions,
            num_images_without_predictions=self.num_images_without_predictions,
        )
        return output


def evaluate_class_agnostic(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    max_detections: int = 1000,
    iou_type: IouType = "segm",
    backend: Backend = "faster_coco_eval",
    masks_validated: bool = False,
) -> EvaluationResult:
    """Evaluates class-agnostic masks exactly as COCO does (paper section 4.1, appendix B).

    Args:
        predictions: one entry per image, ``{"masks": masks, "scores": [float] * N}``. ``masks``
            is a list of COCO RLE dicts (compressed ``str``/``bytes`` counts or uncompressed
            ``list[int]`` counts), a list of (H, W) bool arrays, or an (N, H, W) bool array.
        references: one entry per image, aligned with ``predictions``: ``{"masks": masks,
            "iscrowd": [0 or 1] * M, "areas": [float] * M}``. ``iscrowd`` is optional (default all
            0); crowd regions are COCO "ignore" regions: matching them is neither a hit nor a
            false positive. ``areas`` is optional (default: mask areas) and decides the S/M/L
            split as the ``area`` field of a COCO file does (COCO stores polygon areas there).
        max_detections: predictions kept per image, highest scores first (the paper uses 1,000).
        iou_type: ``"segm"`` (mask IoU, the paper's metric) or ``"bbox"`` (IoU of the masks'
            tight boxes; areas stay mask areas so the S/M/L split is the same in both).
        backend: ``"faster_coco_eval"`` (default, fast) or ``"pycocotools"`` (the reference).
        masks_validated: the masks are already lists of compressed RLEs with ``str`` counts that
            :func:`image_rles` produced (``SohesAR`` validates in ``add_batch``); skips the
            second run-length check, which otherwise costs as much as the evaluation.

    Returns:
        The metrics; see :class:`EvaluationResult`. With no image at all every metric is NaN.

    Raises:
        ValueError: lengths differ, a mask is malformed, masks of one image differ in size,
            scores are missing or not finite, ``iscrowd`` is not 0/1, or an argument is invalid.
        TypeError: an image entry is not a mapping.
    """
    if isinstance(max_detections, bool) or not isinstance(max_detections, (int, np.integer)):
        raise ValueError(f"max_detections must be a positive int, got {max_detections!r}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be a positive int, got {max_detections}")
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have one entry per image: got {len(predictions)} and "
            f"{len(references)}"
        )
    gt_dataset, dt_dataset, counts = build_coco_datasets(
        predictions, references, iou_type=iou_type, masks_validated=masks_validated
    )
    max_detections = int(max_detections)
    if not gt_dataset["images"]:
        return _result_from_arrays(None, None, max_detections, counts)
    max_dets = sorted({1, 10, max_detections})
    if backend == "faster_coco_eval":
        precision, recall = _run_faster_coco_eval(gt_dataset, dt_dataset, iou_type, max_dets)
    else:
        precision, recall = _run_pycocotools(gt_dataset, dt_dataset, iou_type, max_dets)
    index = max_dets.index(max_detections)
    return _result_from_arrays(precision[..., index], recall[..., index], max_detections, counts)


def build_coco_datasets(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    iou_type: IouType = "segm",
    masks_validated: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Turns per-image predictions and references into COCO ground-truth and result datasets.

    Image ``i`` gets id ``i + 1``; every annotation has category 1. Detection areas are mask
    areas, as pycocotools' ``loadRes`` computes them for segmentation results (a ``bbox`` key
    is added only for ``iou_type="bbox"``, where it is the mask's tight box). Detections keep
    their input order, which decides ties in score exactly as in COCO (a stable sort).

    Returns:
        ``(ground_truth_dataset, detection_dataset, counts)``: two COCO-format dicts (images,
        categories, annotations) and the counts that :class:`EvaluationResult` reports.
    """
    images: list[dict[str, Any]] = []
    gt_annotations: list[dict[str, Any]] = []
    dt_annotations: list[dict[str, Any]] = []
    counts = dict(images=0, ground_truths=0, crowd=0, predictions=0, images_without_predictions=0)
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        image_id = index + 1
        read = _validated_rles if masks_validated else image_rles
        gt_rles = read(reference, f"references[{index}]")
        dt_rles = read(prediction, f"predictions[{index}]")
        iscrowd = _iscrowd(reference, len(gt_rles), f"references[{index}]")
        scores = _scores(prediction, len(dt_rles), f"predictions[{index}]")
        gt_areas = _areas(reference, len(gt_rles), f"references[{index}]")
        height, width = _image_size(gt_rles, dt_rles, index)
        images.append({"id": image_id, "height": height, "width": width})
        for rles, records, is_gt in ((gt_rles, gt_annotations, True), (dt_rles, dt_annotations, False)):
            if not rles:
                continue
            areas = _checked_areas(rles) if not is_gt or gt_areas is None else gt_areas
            boxes = mask_boxes_xywh(rles) if iou_type == "bbox" else None
            for k, rle in enumerate(rles):
                annotation: dict[str, Any] = {
                    "id": len(records) + 1,
                    "image_id": image_id,
                    "category_id": _CATEGORY_ID,
                    "segmentation": rle,
                    "area": float(areas[k]),
                    "iscrowd": iscrowd[k] if is_gt else 0,
                }
                if boxes is not None:
                    annotation["bbox"] = [float(v) for v in boxes[k]]
                if not is_gt:
                    annotation["score"] = scores[k]
                records.append(annotation)
        counts["images"] += 1
        counts["ground_truths"] += len(gt_rles)
        counts["crowd"] += int(sum(iscrowd))
        counts["predictions"] += len(dt_rles)
        counts["images_without_predictions"] += int(bool(gt_rles) and not dt_rles)
    categories = [{"id": _CATEGORY_ID, "name": "entity"}]
    gt_dataset = {"images": images, "categories": categories, "annotations": gt_annotations}
    dt_dataset = {"images": [dict(image) for image in images], "categories": categories}
    dt_dataset["annotations"] = dt_annotations
    return gt_dataset, dt_dataset, counts


# --- input normalisation -----------------------------------------------------------------------


def image_rles(entry: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The masks of one image entry as validated compressed RLEs with ``str`` counts.

    Args:
        entry: a mapping with ``"masks"``: a list of RLE dicts (compressed or uncompressed) or
            of (H, W) bool arrays, or an (N, H, W) bool array.
        name: how error messages name the entry, e.g. ``"predictions[3]"``.
    """
    if not isinstance(entry, Mapping):
        raise TypeError(f"{name}: expected a mapping with 'masks', got {type(entry).__name__}")
    if "masks" not in entry:
        raise ValueError(f"{name}: missing key 'masks'")
    masks = entry["masks"]
    if masks is None:
        raise ValueError(f"{name}['masks']: expected RLE dicts or bool arrays, got None")
    if isinstance(masks, np.ndarray) or (hasattr(masks, "__array__") and not isinstance(masks, Sequence)):
        array = np.asarray(masks)
        if array.ndim != 3:
            raise ValueError(f"{name}['masks']: an array must have shape (N, H, W), got {array.shape}")
        return encode_masks(array) if array.shape[0] else []
    if isinstance(masks, (str, bytes, Mapping)) or not isinstance(masks, Sequence):
        raise ValueError(f"{name}['masks']: expected a list of masks, got {type(masks).__name__}")
    if all(isinstance(mask, Mapping) for mask in masks):
        return normalize_rles(masks, name=f"{name}['masks']")
    rles: list[dict[str, Any]] = []
    for k, mask in enumerate(masks):
        try:
            if isinstance(mask, Mapping):
                rles.append(normalize_rle(mask))
            elif isinstance(mask, np.ndarray) or hasattr(mask, "__array__"):
                rles.append(encode_masks(np.asarray(mask)[None])[0])
            else:
                raise ValueError(f"expected an RLE dict or an (H, W) bool array, got {type(mask).__name__}")
        except ValueError as error:
            raise ValueError(f"{name}['masks'][{k}]: {error}") from error
    return rles


def _checked_areas(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Areas of RLEs already validated (``mask_areas`` would check their run lengths again).

    Chunks of 255: pycocotools 2.0.11's ``area`` overflows on 256 or more RLEs.
    """
    from pycocotools import mask as coco_mask

    coco = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    chunks = [coco_mask.area(coco[start : start + 255]) for start in range(0, len(coco), 255)]
    return np.concatenate(chunks).astype(np.int64)


def _validated_rles(entry: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The masks of an entry that :func:`image_rles` already checked (e.g. read back from Arrow)."""
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"]} for rle in entry["masks"]]


def _scores(entry: Mapping[str, Any], num_masks: int, name: str) -> list[float]:
    if "scores" not in entry:
        if num_masks:
            raise ValueError(f"{name}: missing key 'scores' (one float per mask)")
        return []
    scores = np.asarray(entry["scores"], dtype=np.float64).reshape(-1)
    if scores.shape != (num_masks,):
        raise ValueError(f"{name}['scores']: expected {num_masks} scores (one per mask), got {scores.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name}['scores']: scores must be finite")
    return [float(s) for s in scores]


def _areas(entry: Mapping[str, Any], num_masks: int, name: str) -> np.ndarray | None:
    """Optional ground-truth areas (COCO files store polygon areas, which COCO's S/M/L split uses)."""
    raw = entry.get("areas")
    if raw is None:
        return None
    areas = np.asarray(raw, dtype=np.float64).reshape(-1)
    if areas.shape != (num_masks,):
        raise ValueError(f"{name}['areas']: expected {num_masks} areas (one per mask), got {areas.size}")
    if not np.all(np.isfinite(areas)) or (areas < 0).any():
        raise ValueError(f"{name}['areas']: areas must be finite and non-negative")
    return areas


def _iscrowd(entry: Mapping[str, Any], num_masks: int, name: str) -> list[int]:
    raw = entry.get("iscrowd")
    if raw is None:
        return [0] * num_masks
    flags = np.asarray(raw).reshape(-1)
    if flags.shape != (num_masks,):
        raise ValueError(f"{name}['iscrowd']: expected {num_masks} flags (one per mask), got {flags.size}")
    if flags.size and not np.isin(flags, (0, 1)).all():
        raise ValueError(f"{name}['iscrowd']: flags must be 0 or 1")
    return [int(f) for f in flags]


def _image_size(
    gt_rles: Sequence[Mapping[str, Any]], dt_rles: Sequence[Mapping[str, Any]], index: int
) -> tuple[int, int]:
    """The common (height, width) of an image's masks; (0, 0) for an image with none."""
    sizes = {(int(r["size"][0]), int(r["size"][1])) for r in (*gt_rles, *dt_rles)}
    if len(sizes) > 1:
        raise ValueError(
            f"image {index}: all masks of predictions[{index}] and references[{index}] must have the "
            f"same size, got {sorted(sizes)}"
        )
    return next(iter(sizes)) if sizes else (0, 0)


# --- backends ----------------------------------------------------------------------------------


def _run_faster_coco_eval(
    gt_dataset: dict[str, Any], dt_dataset: dict[str, Any], iou_type: str, max_dets: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt_dataset, print_function=logger.debug)
    coco_dt = COCO(dt_dataset, print_function=logger.debug)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=logger.debug)
    evaluator.params.useCats = 0
    evaluator.params.maxDets = list(max_dets)
    evaluator.evaluate()
    evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"]), np.asarray(evaluator.eval["recall"])


def _run_pycocotools(
    gt_dataset: dict[str, Any], dt_dataset: dict[str, Any], iou_type: str, max_dets: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools prints progress to stdout; the library never prints.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dataset
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = dt_dataset
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"]), np.asarray(evaluator.eval["recall"])


# --- reading COCO's arrays ---------------------------------------------------------------------


def _mean_defined(values: np.ndarray) -> float:
    """COCO's average over entries > -1; NaN (COCO: -1) when none is defined."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else math.nan


def _result_from_arrays(
    precision: np.ndarray | None, recall: np.ndarray | None, max_detections: int, counts: dict[str, int]
) -> EvaluationResult:
    """Builds the result from precision (T, R, K, A) and recall (T, K, A) at one maxDet."""
    thresholds = np.linspace(0.5, 0.95, 10)
    if precision is None or recall is None:  # no image: COCO leaves every entry at -1
        precision = -np.ones((10, 101, 1, 4))
        recall = -np.ones((10, 1, 4))
    t50 = int(np.argmin(np.abs(thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(thresholds - 0.75)))
    per_iou = recall[:, 0, 0]  # K == 1: one class-agnostic category
    return EvaluationResult(
        ap=_mean_defined(precision[..., 0]),
        ap50=_mean_defined(precision[t50, ..., 0]),
        ap75=_mean_defined(precision[t75, ..., 0]),
        ap_s=_mean_defined(precision[..., 1]),
        ap_m=_mean_defined(precision[..., 2]),
        ap_l=_mean_defined(precision[..., 3]),
        ar=_mean_defined(recall[..., 0]),
        ar_s=_mean_defined(recall[..., 1]),
        ar_m=_mean_defined(recall[..., 2]),
        ar_l=_mean_defined(recall[..., 3]),
        recall_per_iou=np.where(per_iou > -1, per_iou, np.nan).astype(np.float64),
        iou_thresholds=thresholds,
        max_detections=max_detections,
        num_images=counts["images"],
        num_ground_truths=counts["ground_truths"],
        num_crowd_ground_truths=counts["crowd"],
        num_predictions=counts["predictions"],
        num_images_without_predictions=counts["images_without_predictions"],
    )


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
