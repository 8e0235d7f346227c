"""Phase 3, self-correction (paper section 3.3, eqs. 2-3, appendix A)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from tests.training import tiny_recipe
from transformers import pipeline

from sohes_hf.modeling import SohesForHierarchicalSegmentation, SohesImageProcessor
from sohes_hf.pipelines import TASK_NAME, register_pipeline
from sohes_hf.training import SelfCorrectionTrainer
from sohes_hf.training.collate import collate_self_correction_examples
from sohes_hf.training.config import build_training_config
from sohes_hf.training.datasets import PseudoLabelledImages, SelfCorrectionDataset
from sohes_hf.training.dynamic_threshold import dynamic_score_threshold
from sohes_hf.training.ema import EmaTeacher
from sohes_hf.training.teacher_pseudo_labels import keep_by_dynamic_threshold, teacher_pseudo_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_score_between_thresholds_kept_when_small_dropped_when_large() -> None:
    scores = torch.tensor([0.5, 0.5])
    areas = torch.tensor([1e-4, 0.5])  # thresholds ~0.308 and ~0.7 by eq. (3)
    assert keep_by_dynamic_threshold(scores, areas, 0.7, 0.3, 200.0).tolist() == [True, False]


def _class_logits(probabilities: list[float]) -> torch.Tensor:
    p = torch.tensor(probabilities)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def test_teacher_pseudo_labels_use_the_dynamic_threshold_and_ancestor_head() -> None:
    canvas, low = 128, 32  # masks are predicted at 1/4 of the canvas
    mask_logits = torch.full((5, low, low), -20.0)
    mask_logits[0, 0:16, 0:16] = 20.0  # large (64x64 px), class prob 0.5: between thresholds -> dropped
    mask_logits[1, 30:31, 30:31] = 20.0  # small (~4x4 px), class prob 0.5 -> kept
    mask_logits[2, 2:27, 2:27] = 20.0  # large (100x100 px), confident -> kept, root
    mask_logits[3, 5:15, 5:15] = 20.0  # medium (40x40 px) inside 2, confident -> kept, child of 2
    mask_logits[4, 20:30, 0:10] = 20.0  # class prob 0.2 < theta_small: never a candidate
    class_logits = _class_logits([0.5, 0.5, 0.97, 0.95, 0.2])
    ancestor_logits = torch.full((5, 5), -10.0)
    ancestor_logits[2, 3] = 10.0
    labels = teacher_pseudo_labels(
        class_logits[None],
        mask_logits[None],
        ancestor_logits[None],
        torch.ones(1, canvas, canvas, dtype=torch.long),
    )
    masks, scores = labels.mask_labels[0], labels.scores[0]
    assert masks.shape == (3, canvas, canvas) and masks.dtype == torch.bool
    areas = masks.flatten(1).sum(1)
    # Highest score first: the confident root, its part, then the small low-confidence mask.
    assert areas[0] >= 96**2 and 32**2 <= areas[1] < 96**2 and areas[2] < 32**2
    assert torch.all(scores[:-1] >= scores[1:])
    thresholds = dynamic_score_threshold(areas.double() / canvas**2)
    assert torch.all(scores.double() > thresholds)
    assert 0.3 < float(scores[2]) < 0.7  # kept although below theta_large: it is small
    expected_ancestors = torch.zeros(3, 3)
    expected_ancestors[0, 1] = 1.0
    assert torch.equal(labels.ancestor_labels[0], expected_ancestors)
    assert (labels.num_small, labels.num_medium, labels.num_large) == (1, 1, 1)
    assert labels.num_candidates == 4 and labels.class_labels[0].tolist() == [0, 0, 0]


def test_teacher_masks_are_cut_to_the_image_region() -> None:
    mask_logits = torch.full((1, 1, 16, 16), 20.0)  # the whole canvas
    valid = torch.zeros(1, 64, 64, dtype=torch.long)
    valid[0, :32, :48] = 1
    labels = teacher_pseudo_labels(_class_logits([0.99])[None], mask_logits, torch.zeros(1, 1, 1), valid)
    assert torch.equal(labels.mask_labels[0][0], valid[0].bool())  # a = 1 of the image region


def test_weak_and_strong_views_share_geometry(data: tuple[Path, Path]) -> None:
    image_dir, labels = data
    config = build_training_config(
        "self-correction", tiny_recipe(image_dir, labels, Path("unused"), model_name_or_path="unused")
    )
    dataset = SelfCorrectionDataset(PseudoLabelledImages(str(labels), str(image_dir)), config.augmentation, 0)
    example = dataset[5]
    padding = example.pixel_mask == 0
    assert torch.all(example.weak_pixel_values[:, padding] == 0)
    assert torch.all(example.strong_pixel_values[:, padding] == 0)
    assert not torch.equal(example.weak_pixel_values, example.strong_pixel_values)
    again = dataset[5]
    assert torch.equal(again.strong_pixel_values, example.strong_pixel_values)  # position-determined


def test_one_step_updates_teacher_as_ema_and_saves_both_models(
    data: tuple[Path, Path], phase2_model: Path, tmp_path: Path
) -> None:
    image_dir, labels = data
    out = tmp_path / "phase3"
    config = build_training_config(
        "self-correction",
        tiny_recipe(image_dir, labels, out, max_steps=1, model_name_or_path=str(phase2_model)),
    )
    trainer = SelfCorrectionTrainer(config, accelerator=Accelerator(cpu=True))
    initial = copy.deepcopy(trainer.model.state_dict())
    trainer.train()
    assert trainer.teacher is not None
    student = trainer.model.state_dict()
    teacher = trainer.teacher.module.state_dict()
    changed = 0
    for name, value in teacher.items():
        if not value.is_floating_point():
            continue
        expected = 0.9995 * initial[name] + (1 - 0.9995) * student[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        changed += int(not torch.equal(student[name], initial[name]))
    assert changed > 0  # the student did move
    record = json.loads((out / "training_record.json").read_text())
    assert record["phase"] == "self-correction" and record["ema_momentum"] == 0.9995
    # The phase-2 folder has no record saying how its backbone started: the card must not guess.
    assert (record["backbone_initialization"], record["backbone_source"]) == ("unknown", str(phase2_model))
    assert math.isfinite(record["final_loss"])
    saved_teacher = SohesForHierarchicalSegmentation.from_pretrained(out).state_dict()
    saved_student = SohesForHierarchicalSegmentation.from_pretrained(out / "student").state_dict()
    for name, value in saved_teacher.items():
        assert torch.equal(value, teacher[name]), name
        assert torch.equal(saved_student[name], student[name]), name

    # Both folders are complete pipelines; the student's outputs are the student's own.
    register_pipeline()
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    student_pipeline = pipeline(TASK_NAME, model=str(out / "student"), device="cpu")  # type: ignore[call-overload]
    assert student_pipeline.image_processor.to_dict() == SohesImageProcessor.from_pretrained(out).to_dict()
    loaded = student_pipeline.model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in student.items())
    entities = student_pipeline(Image.fromarray(image), threshold=0.0, output_format="binary")
    assert entities and all(entity["mask"].shape == (40, 56) for entity in entities)


def test_loss_is_the_weighted_sum_of_eq_2(data: tuple[Path, Path], phase2_model: Path) -> None:
    image_dir, labels = data
    config = build_training_config(
        "self-correction",
        tiny_recipe(
            image_dir, labels, Path("unused"), model_name_or_path=str(phase2_model), teacher_loss_weight=0.5
        ),
    )
    trainer = SelfCorrectionTrainer(config, accelerator=Accelerator(cpu=True))
    trainer.teacher = EmaTeacher(trainer.model, config.ema_momentum)
    batch = collate_self_correction_examples([trainer.train_dataset[0], trainer.train_dataset[1]])
    loss, parts = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss.detach(), parts["loss_initial"] + 0.5 * parts["loss_teacher"])
    assert loss.requires_grad
    assert all(not p.requires_grad for p in trainer.teacher.module.parameters())


def test_self_correction_requires_the_phase2_model(data: tuple[Path, Path]) -> None:
    image_dir, labels = data
    with pytest.raises(ValueError, match="model_name_or_path"):
        build_training_config("self-correction", tiny_recipe(image_dir, labels, Path("unused")))
    with pytest.raises(ValueError, match="theta_score"):
        build_training_config(
            "self-correction",
            tiny_recipe(image_dir, labels, Path("x"), model_name_or_path="m", theta_score_small=0.8),
        )
