"""``SohesAR``: the paper's class-agnostic mask AR/AP as an ``evaluate.Metric`` (paper section 4.1).

Works offline, without ``evaluate.load``::

    from sohes_hf.evaluation import SohesAR

    metric = SohesAR(max_detections=1000)
    for batch in loader:
        metric.add_batch(predictions=batch_predictions, references=batch_references)
    scores = metric.compute()  # {"AP": ..., "AR": ..., "AR_S": ..., ...}, fractions in [0, 1]

Each prediction is ``{"masks": [RLE], "scores": [float]}`` and each reference
``{"masks": [RLE], "iscrowd": [0/1]}`` (``iscrowd`` optional), one per image. Masks may also be
(H, W) bool arrays, an (N, H, W) bool array or uncompressed RLEs: ``add``/``add_batch`` turn
them into compressed RLEs before evaluate stores them in Arrow. Undefined metrics are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

from sohes_hf.evaluation.coco_eval import BACKENDS, evaluate_class_agnostic, image_rles

_DESCRIPTION = """Class-agnostic COCO mask AP and AR (IoU 0.50:0.95) with up to `max_detections`
predictions per image, read from pycocotools-identical precision/recall arrays (SOHES, Cao et al.,
ICLR 2024, section 4.1). AR with 1,000 detections is the paper's headline metric."""

_CITATION = """@inproceedings{cao2024sohes,
  title={{SOHES}: Self-supervised Open-world Hierarchical Entity Segmentation},
  author={Cao, Shengcao and Gu, Jiuxiang and Kuen, Jason and Tan, Hao and Zhang, Ruiyi and
          Zhao, Handong and Nenkova, Ani and Gui, Liang-Yan and Sun, Tong and Wang, Yu-Xiong},
  booktitle={ICLR},
  year={2024}
}"""

_INPUTS = """
Args:
    predictions: one dict per image: "masks" (list of COCO RLE dicts) and "scores" (floats).
    references: one dict per image: "masks" (list of COCO RLE dicts), "iscrowd" (0/1, optional).
    max_detections: compute-time override of the instance's `max_detections`.
Returns:
    dict with AP, AP50, AP75, AP_S, AP_M, AP_L, AR, AR_S, AR_M, AR_L as floats in [0, 1]
    (NaN where no ground truth defines them).
"""

_RLE = {"size": datasets.List(datasets.Value("int64")), "counts": datasets.Value("string")}
_FEATURES = datasets.Features(
    {
        "predictions": {
            "masks": datasets.List(_RLE),
            "scores": datasets.List(datasets.Value("float64")),
        },
        "references": {
            "masks": datasets.List(_RLE),
            "iscrowd": datasets.List(datasets.Value("int64")),
        },
    }
)


class SohesAR(evaluate.Metric):
    """Class-agnostic mask AR (and AP) at ``max_detections`` predictions per image.

    Args:
        max_detections: predictions kept per image, highest scores first (paper: 1,000). A
            ``max_detections=`` keyword to :meth:`compute` overrides it for that call.
        backend: ``"faster_coco_eval"`` (default) or ``"pycocotools"``; identical numbers.
        **kwargs: passed to ``evaluate.Metric`` (``experiment_id``, ``keep_in_memory``, ...).
    """

    def __init__(self, max_detections: int = 1000, backend: str = "faster_coco_eval", **kwargs: Any) -> None:
        _check_max_detections(max_detections, "max_detections")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.max_detections = int(max_detections)
        self.backend = backend
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=_FEATURES,
            codebase_urls=["https://github.com/cocodataset/cocoapi"],
            reference_urls=["https://arxiv.org/abs/2404.12386"],
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Adds a batch of per-image predictions and references (see the module docstring)."""
        if predictions is not None:
            predictions = [_prediction_record(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
        if references is not None:
            references = [_reference_record(r, f"references[{i}]") for i, r in enumerate(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Adds one image's prediction and reference."""
        if prediction is not None:
            prediction = _prediction_record(prediction, "prediction")
        if reference is not None:
            reference = _reference_record(reference, "reference")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions: Sequence[Mapping[str, Any]],
        references: Sequence[Mapping[str, Any]],
        max_detections: int | None = None,
    ) -> dict[str, float]:
        if max_detections is not None:
            _check_max_detections(max_detections, "max_detections")
        result = evaluate_class_agnostic(
            predictions,
            references,
            max_detections=self.max_detections if max_detections is None else int(max_detections),
            backend=self.backend,  # type: ignore[arg-type]
            masks_validated=True,  # add/add_batch ran image_rles before Arrow stored them
        )
        return {name: float(value) for name, value in result.metrics().items()}


def _check_max_detections(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _prediction_record(entry: Any, name: str) -> dict[str, Any]:
    """One image's prediction as Arrow-ready plain data: str-count RLEs and float scores."""
    masks = image_rles(entry, name)
    scores = [float(s) for s in np.asarray(entry.get("scores", []), dtype=np.float64).reshape(-1)]
    if len(scores) != len(masks):
        raise ValueError(f"{name}['scores']: expected {len(masks)} scores (one per mask), got {len(scores)}")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"{name}['scores']: scores must be finite")
    return {"masks": masks, "scores": scores}


def _reference_record(entry: Any, name: str) -> dict[str, Any]:
    """One image's reference as Arrow-ready plain data; ``iscrowd`` defaults to all zeros."""
    masks = image_rles(entry, name)
    raw = entry.get("iscrowd")
    iscrowd = [0] * len(masks) if raw is None else [int(v) for v in np.asarray(raw).reshape(-1)]
    if len(iscrowd) != len(masks) or any(v not in (0, 1) for v in iscrowd):
        raise ValueError(f"{name}['iscrowd']: expected {len(masks)} flags, each 0 or 1")
    return {"masks": masks, "iscrowd": iscrowd}
