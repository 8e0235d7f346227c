"""Phase 3, self-correction (paper section 3.3, appendix A): teacher-student mutual learning.

Student and teacher start as copies of the phase-2 model. Every step (eq. 2)::

    Y_teacher = threshold_eq3(teacher(weak(I2)))          # no gradients
    L_total   = L_seg(student(strong(I1)), Y_initial) + L_seg(student(strong(I2)), Y_teacher)
    student  <- Adan step on L_total
    teacher  <- m * teacher + (1 - m) * student           # m = 0.9995

strong(I2) shares weak(I2)'s geometry (it only adds photometric changes), so the teacher's masks
label strong(I2) without any re-mapping (see ``datasets.SelfCorrectionDataset``). Both loss terms
are weighted equally (appendix A); each is the model's own normalised L_seg, so the two terms do
not depend on how many masks the other batch has.

The final model saved in ``output_dir`` is the EMA teacher (as in mean-teacher practice, it is the
averaged, more stable of the two; the paper does not say which one it reports); the student goes
to ``output_dir/student``, with its own copy of the image processor so that either folder loads
with ``pipeline("hierarchical-segmentation", model=...)``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from sohes_hf.logging_utils import get_logger
from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.training.checkpointing import JsonState
from sohes_hf.training.collate import SelfCorrectionBatch, TrainingBatch, collate_self_correction_examples
from sohes_hf.training.config import SelfCorrectionConfig
from sohes_hf.training.ema import EmaTeacher
from sohes_hf.training.self_instruction import SelfInstructionTrainer, _segmentation_loss
from sohes_hf.training.teacher_pseudo_labels import TeacherPseudoLabels, teacher_pseudo_labels

logger = get_logger(__name__)

STUDENT_DIRNAME = "student"


class SelfCorrectionTrainer(SelfInstructionTrainer):
    """Teacher-student self-correction (paper section 3.3); arguments as ``SelfInstructionTrainer``.

    ``train_dataset`` must return ``SelfCorrectionExample`` items (default: built from the config).
    """

    phase = "self-correction"
    config: SelfCorrectionConfig

    def __init__(
        self,
        config: SelfCorrectionConfig,
        model: SohesForHierarchicalSegmentation | None = None,
        train_dataset: Dataset | None = None,
        accelerator: Accelerator | None = None,
        cpu: bool = False,
    ) -> None:
        super().__init__(config, model=model, train_dataset=train_dataset, accelerator=accelerator, cpu=cpu)
        self.teacher: EmaTeacher | None = None
        self._label_counts = {"small": 0, "medium": 0, "large": 0, "candidates": 0}
        self._label_steps = 0

    def _build_dataset(self) -> Dataset:
        from sohes_hf.training.datasets import PseudoLabelledImages, SelfCorrectionDataset

        images = PseudoLabelledImages(
            self.config.train_annotations,
            self.config.image_root,
            max_unreadable_fraction=self.config.max_unreadable_fraction,
            probe_across_processes=True,  # every process builds it here: each checks a share
        )
        return SelfCorrectionDataset(images, self.config.augmentation, self.config.seed)

    def _collate_fn(self) -> Any:
        return collate_self_correction_examples

    def _setup_extra(self, model: SohesForHierarchicalSegmentation) -> None:
        # Created from the unwrapped student on its device, before DDP wraps it (ema.py).
        self.teacher = EmaTeacher(model, self.config.ema_momentum)

    def _json_states(self) -> dict[str, JsonState]:
        return {**super()._json_states(), "teacher_label_counts": _LabelCounts(self)}

    def _tensor_states(self) -> dict[str, torch.nn.Module]:
        return {"ema_teacher": assert_teacher(self.teacher)}

    def _after_optimizer_step(self, model: torch.nn.Module) -> None:
        assert_teacher(self.teacher).update(self.accelerator.unwrap_model(model))

    def make_teacher_labels(self, batch: SelfCorrectionBatch) -> TeacherPseudoLabels:
        """Y_teacher from the teacher's predictions on weak(I2), filtered by eq. (3)."""
        config = self.config
        teacher = assert_teacher(self.teacher).module
        with torch.no_grad(), self.accelerator.autocast():
            outputs = teacher(pixel_values=batch.weak_pixel_values, pixel_mask=batch.pixel_mask)
        return teacher_pseudo_labels(
            outputs.class_queries_logits,
            outputs.masks_queries_logits,
            outputs.ancestor_logits,
            batch.pixel_mask,
            theta_large=config.theta_score_large,
            theta_small=config.theta_score_small,
            gamma=config.gamma,
            max_instances=config.teacher_max_instances,
            ancestor_threshold=config.teacher_ancestor_threshold,
        )

    def compute_loss(
        self, model: torch.nn.Module, batch: SelfCorrectionBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. (2): weighted L_seg on strong(I1) with Y_initial plus L_seg on strong(I2) with Y_teacher."""
        config = self.config
        labels = self.make_teacher_labels(batch)
        self._label_counts["small"] += labels.num_small
        self._label_counts["medium"] += labels.num_medium
        self._label_counts["large"] += labels.num_large
        self._label_counts["candidates"] += labels.num_candidates
        self._label_steps += 1
        loss_initial, initial_parts = _segmentation_loss(model, batch.initial)
        teacher_batch = TrainingBatch(
            pixel_values=batch.strong_pixel_values,
            pixel_mask=batch.pixel_mask,
            mask_labels=labels.mask_labels,
            class_labels=labels.class_labels,
            ancestor_labels=labels.ancestor_labels,
        )
        loss_teacher, _ = _segmentation_loss(model, teacher_batch)
        loss = config.initial_loss_weight * loss_initial + config.teacher_loss_weight * loss_teacher
        components = {f"initial/{k}": v for k, v in initial_parts.items()}
        components["loss_initial"] = loss_initial.detach()
        components["loss_teacher"] = loss_teacher.detach()
        return loss, components

    def _extra_log_values(self) -> dict[str, float]:
        steps = max(self._label_steps, 1)
        counts = torch.tensor(
            [float(self._label_counts[k]) for k in ("small", "medium", "large", "candidates")],
            device=self.accelerator.device,
        )
        totals = self.accelerator.reduce(counts, reduction="sum")
        # Micro-batches x images per micro-batch x processes: the images the counts cover.
        images = steps * self.config.per_device_train_batch_size * self.accelerator.num_processes
        values = {
            "train/ema_momentum": assert_teacher(self.teacher).momentum,
            "train/teacher_labels_small_per_image": float(totals[0]) / images,
            "train/teacher_labels_medium_per_image": float(totals[1]) / images,
            "train/teacher_labels_large_per_image": float(totals[2]) / images,
            "train/teacher_candidates_per_image": float(totals[3]) / images,
        }
        self._label_counts = dict.fromkeys(self._label_counts, 0)
        self._label_steps = 0
        return values

    def _ema_momentum(self) -> float | None:
        return self.config.ema_momentum

    def _save_final_models(self, model: torch.nn.Module, model_dir: str) -> None:
        teacher = assert_teacher(self.teacher).module
        if self.accelerator.is_main_process:
            teacher.save_pretrained(model_dir)
        self._save_pretrained(
            self.accelerator.unwrap_model(model), model, os.path.join(model_dir, STUDENT_DIRNAME)
        )

    def _final_model_dirs(self, model_dir: str) -> list[str]:
        return [model_dir, os.path.join(model_dir, STUDENT_DIRNAME)]


class _LabelCounts:
    """Checkpoints the teacher-label counters of the current logging window."""

    def __init__(self, trainer: SelfCorrectionTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.trainer._label_counts), "steps": self.trainer._label_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer._label_counts = {str(k): int(v) for k, v in state["counts"].items()}
        self.trainer._label_steps = int(state["steps"])


def assert_teacher(teacher: EmaTeacher | None) -> EmaTeacher:
    """The teacher, or a RuntimeError when ``train`` has not created it yet."""
    if teacher is None:
        raise RuntimeError("the EMA teacher exists only once train() has started")
    return teacher
