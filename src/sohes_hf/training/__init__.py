"""Phases 2 and 3 of SOHES: self-instruction and self-correction (paper sections 3.2-3.3).

* :class:`SelfInstructionTrainer` learns the model from the initial pseudo-labels.
* :class:`SelfCorrectionTrainer` refines it with an EMA teacher whose pseudo-labels are filtered
  by the dynamic threshold of eq. (3) (:func:`dynamic_score_threshold`).

Recipes are :class:`SelfInstructionConfig` / :class:`SelfCorrectionConfig` (YAML via
:func:`load_training_config`); ``docs/training.md`` gives every hyperparameter's source.
"""

from __future__ import annotations

from sohes_hf.training.config import (
    AugmentationConfig,
    SelfCorrectionConfig,
    SelfInstructionConfig,
    TrainingConfig,
    load_training_config,
)
from sohes_hf.training.dynamic_threshold import dynamic_score_threshold
from sohes_hf.training.ema import EmaTeacher
from sohes_hf.training.record import TrainingRecord, read_training_record
from sohes_hf.training.self_correction import SelfCorrectionTrainer
from sohes_hf.training.self_instruction import SelfInstructionTrainer, TrainingResult
from sohes_hf.training.teacher_pseudo_labels import TeacherPseudoLabels, teacher_pseudo_labels

__all__ = [
    "AugmentationConfig",
    "EmaTeacher",
    "SelfCorrectionConfig",
    "SelfCorrectionTrainer",
    "SelfInstructionConfig",
    "SelfInstructionTrainer",
    "TeacherPseudoLabels",
    "TrainingConfig",
    "TrainingRecord",
    "TrainingResult",
    "dynamic_score_threshold",
    "load_training_config",
    "read_training_record",
    "teacher_pseudo_labels",
]
