"""How good a predicted hierarchy is: AR per depth level and parent-link precision/recall.

SOHES predicts wholes, parts and subparts with parent links (paper section 3.3); the paper's
COCO metrics ignore the links. Two measures use them when the ground truth has ``parent_id``:

* **AR per depth** (wholes: depth 0, parts: 1, subparts: >= 2): the package's class-agnostic AR
  (:func:`evaluate_class_agnostic`, mean recall over IoU 0.50:0.95) with the ground truth
  restricted to that depth and the predictions unrestricted, so a part found by any prediction
  counts. Crowd regions keep their depth and stay "ignore" regions.
* **Parent-link precision and recall**: each image's predictions are matched one-to-one to its
  non-crowd ground truth at IoU >= 0.5 the way COCO matches at that threshold (predictions in
  descending score, each taking the unmatched ground truth of highest IoU). One-to-one matching
  means a duplicate mask cannot claim a link that another prediction already earned. A predicted
  link (child ``p``, parent ``q``) is correct when ``p`` and ``q`` are matched to ground truths
  ``g`` and ``h`` with ``h`` the parent of ``g``. Precision = correct links / predicted links;
  recall = ground-truth links (child, parent) recovered by a correct link / ground-truth links.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sohes_hf.evaluation.coco_eval import Backend, EvaluationResult, evaluate_class_agnostic, image_rles

DEPTH_LEVELS: tuple[tuple[str, int, int | None], ...] = (
    ("wholes", 0, 0),
    ("parts", 1, 1),
    ("subparts", 2, None),
)
"""(name, lowest depth, highest depth or None for unbounded)."""


@dataclass(frozen=True)
class LinkMetrics:
    """Parent-link precision and recall (NaN when there is no link to divide by)."""

    precision: float
    recall: float
    num_predicted_links: int
    num_correct_links: int
    num_ground_truth_links: int
    num_recovered_links: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``None`` for NaN."""
        return {
            "precision": None if np.isnan(self.precision) else self.precision,
            "recall": None if np.isnan(self.recall) else self.recall,
            "num_predicted_links": self.num_predicted_links,
            "num_correct_links": self.num_correct_links,
            "num_ground_truth_links": self.num_ground_truth_links,
            "num_recovered_links": self.num_recovered_links,
        }


@dataclass(frozen=True)
class HierarchyMetrics:
    """AR per depth level (levels with ground truth only) and the parent-link metrics."""

    ar_per_depth: dict[str, EvaluationResult]
    links: LinkMetrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``{"AR_<level>": fraction or None, ..., "parent_links": {...}}``."""
        output: dict[str, Any] = {
            f"AR_{name}": None if np.isnan(result.ar) else result.ar
            for name, result in self.ar_per_depth.items()
        }
        output["num_ground_truths_per_depth"] = {
            name: result.num_ground_truths for name, result in self.ar_per_depth.items()
        }
        output["parent_links"] = self.links.to_dict()
        return output


def per_depth_ar(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    max_detections: int = 1000,
    backend: Backend = "faster_coco_eval",
) -> dict[str, EvaluationResult]:
    """AR per depth level: references (with ``"depths"``) filtered to a level, predictions whole.

    Levels without any ground truth are left out.
    """
    results: dict[str, EvaluationResult] = {}
    for name, low, high in DEPTH_LEVELS:
        filtered = []
        for index, reference in enumerate(references):
            depths = np.asarray(reference["depths"], dtype=np.int64).reshape(-1)
            keep = (depths >= low) & (depths <= (high if high is not None else np.iinfo(np.int64).max))
            rles = image_rles(reference, f"references[{index}]")
            entry: dict[str, Any] = {"masks": [rles[k] for k in np.flatnonzero(keep)]}
            for key in ("iscrowd", "areas"):
                if reference.get(key) is not None:
                    entry[key] = [reference[key][k] for k in np.flatnonzero(keep)]
            filtered.append(entry)
        if sum(len(entry["masks"]) for entry in filtered) == 0:
            continue
        results[name] = evaluate_class_agnostic(
            predictions, filtered, max_detections=max_detections, backend=backend
        )
    return results


def match_one_to_one(
    iou: np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """COCO's greedy matching at one IoU threshold: prediction -> ground-truth index or -1.

    Predictions go in descending score (stable, so input order breaks ties as in COCO); each
    takes the still unmatched ground truth of highest IoU, if that IoU is >= ``threshold``.
    """
    num_dt, num_gt = iou.shape
    match = -np.ones(num_dt, dtype=np.int64)
    taken = np.zeros(num_gt, dtype=bool)
    for p in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        candidates = np.where(taken, -1.0, iou[p]) if num_gt else np.empty(0)
        if candidates.size and candidates.max() >= threshold:
            g = int(candidates.argmax())
            match[p], taken[g] = g, True
    return match


def parent_link_metrics(
    predictions: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    max_detections: int = 1000,
) -> LinkMetrics:
    """Parent-link precision/recall over all images (see the module docstring for the rule).

    Args:
        predictions: per image ``{"masks", "scores", "parents"}``; ``parents[k]`` is the index of
            prediction ``k``'s parent among the image's predictions, -1 for none. Only the
            ``max_detections`` highest-scoring predictions count (links to dropped ones vanish).
        references: per image ``{"masks", "parents", "iscrowd"?}``; crowd regions are never matched.
    """
    from pycocotools import mask as coco_mask

    predicted = correct = gt_links = recovered = 0
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        dt_rles = image_rles(prediction, f"predictions[{index}]")
        gt_rles = image_rles(reference, f"references[{index}]")
        scores = np.asarray(prediction.get("scores", [1.0] * len(dt_rles)), dtype=np.float64)
        dt_parents = np.asarray(prediction.get("parents", [-1] * len(dt_rles)), dtype=np.int64)
        gt_parents = np.asarray(reference.get("parents", [-1] * len(gt_rles)), dtype=np.int64)
        crowd = np.asarray(reference.get("iscrowd", [0] * len(gt_rles)), dtype=bool)
        kept = np.zeros(len(dt_rles), dtype=bool)
        kept[np.argsort(-scores, kind="stable")[:max_detections]] = True
        if dt_rles and gt_rles:
            iou = np.asarray(coco_mask.iou(dt_rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
            iou[:, crowd] = -1.0
            iou[~kept] = -1.0
        else:
            iou = np.zeros((len(dt_rles), len(gt_rles)))
        match = match_one_to_one(iou, scores, iou_threshold)
        valid_gt = (gt_parents >= 0) & ~crowd
        valid_gt[valid_gt] &= ~crowd[gt_parents[valid_gt]]
        gt_links += int(valid_gt.sum())
        found: set[tuple[int, int]] = set()
        for p in np.flatnonzero(kept & (dt_parents >= 0)):
            q = int(dt_parents[p])
            if not kept[q]:
                continue
            predicted += 1
            g, h = int(match[p]), int(match[q])
            if g >= 0 and h >= 0 and int(gt_parents[g]) == h:
                correct += 1
                found.add((g, h))
        recovered += len(found)
    return LinkMetrics(
        precision=correct / predicted if predicted else float("nan"),
        recall=recovered / gt_links if gt_links else float("nan"),
        num_predicted_links=predicted,
        num_correct_links=correct,
        num_ground_truth_links=gt_links,
        num_recovered_links=recovered,
    )
