"""sohes-hf: SOHES (Cao et al., ICLR 2024) as a Hugging Face-native package.

Self-supervised Open-world Hierarchical Entity Segmentation in three phases:
self-exploration (:mod:`sohes_hf.pseudo_labeling`), self-instruction and
self-correction (:mod:`sohes_hf.training`), with the model in :mod:`sohes_hf.modeling`
and the metric in :mod:`sohes_hf.evaluation`.

``import sohes_hf`` is cheap (the ``sohes`` command line starts instantly): the names below are
imported on first use. Using any of the model or pipeline names, or importing
:mod:`sohes_hf.pipelines`, registers SOHES with transformers (``AutoConfig``, ``AutoModel``,
``AutoImageProcessor`` and the ``"hierarchical-segmentation"`` pipeline task);
:func:`register` does it explicitly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_LAZY_EXPORTS: dict[str, str] = {
    "SohesConfig": "sohes_hf.modeling",
    "SohesForHierarchicalSegmentation": "sohes_hf.modeling",
    "SohesImageProcessor": "sohes_hf.modeling",
    "SohesModelOutput": "sohes_hf.modeling",
    "HierarchicalSegmentationPipeline": "sohes_hf.pipelines",
    "SelfExplorationConfig": "sohes_hf.pseudo_labeling",
    "SelfInstructionTrainer": "sohes_hf.training",
    "SelfCorrectionTrainer": "sohes_hf.training",
    "dynamic_score_threshold": "sohes_hf.training",
    "SohesAR": "sohes_hf.evaluation",
    "evaluate_class_agnostic": "sohes_hf.evaluation",
    "SegmentedEntity": "sohes_hf.structures",
}

if TYPE_CHECKING:
    from sohes_hf.evaluation import SohesAR, evaluate_class_agnostic
    from sohes_hf.modeling import (
        SohesConfig,
        SohesForHierarchicalSegmentation,
        SohesImageProcessor,
        SohesModelOutput,
    )
    from sohes_hf.pipelines import HierarchicalSegmentationPipeline
    from sohes_hf.pseudo_labeling import SelfExplorationConfig
    from sohes_hf.structures import SegmentedEntity
    from sohes_hf.training import SelfCorrectionTrainer, SelfInstructionTrainer, dynamic_score_threshold

__all__ = [
    "HierarchicalSegmentationPipeline",
    "SegmentedEntity",
    "SelfCorrectionTrainer",
    "SelfExplorationConfig",
    "SelfInstructionTrainer",
    "SohesAR",
    "SohesConfig",
    "SohesForHierarchicalSegmentation",
    "SohesImageProcessor",
    "SohesModelOutput",
    "__version__",
    "dynamic_score_threshold",
    "evaluate_class_agnostic",
    "register",
]


def register() -> None:
    """Makes SOHES known to transformers: Auto classes and the ``hierarchical-segmentation`` task.

    Idempotent. After it, ``transformers.pipeline("hierarchical-segmentation", model=...)`` and
    ``AutoModel.from_pretrained`` of a SOHES directory work without naming sohes-hf classes.
    """
    importlib.import_module("sohes_hf.pipelines")


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module_name in ("sohes_hf.modeling", "sohes_hf.pipelines"):
        register()
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
