"""Evaluation of SOHES: class-agnostic COCO mask AP/AR (paper sections 4.1-4.3, appendix B-C).

:func:`evaluate_class_agnostic` computes the numbers (identical to pycocotools), :class:`SohesAR`
wraps them as an ``evaluate.Metric``, and :mod:`sohes_hf.evaluation.results_table` prints them in
the paper's table layout. ``SohesAR`` is imported on first use: ``evaluate`` pulls in
``datasets``, which the core computation and the CLI do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sohes_hf.evaluation.coco_eval import EvaluationResult, evaluate_class_agnostic

if TYPE_CHECKING:
    from sohes_hf.evaluation.metric import SohesAR

__all__ = ["EvaluationResult", "SohesAR", "evaluate_class_agnostic"]


def __getattr__(name: str) -> Any:
    if name == "SohesAR":
        from sohes_hf.evaluation.metric import SohesAR

        return SohesAR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
