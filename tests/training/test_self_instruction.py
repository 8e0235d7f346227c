"""Phase 2, self-instruction (paper section 3.2, appendix A): loop, recipe, schedule, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from tests.training import fixed_batch_dataset, tiny_model_config, tiny_recipe

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.training import SelfInstructionTrainer, load_training_config, read_training_record
from sohes_hf.training.collate import collate_training_examples
from sohes_hf.training.config import build_training_config
from sohes_hf.training.datasets import PseudoLabelledImages, SelfInstructionDataset
from sohes_hf.training.record import backbone_initialization
from sohes_hf.training.schedule import learning_rate_multipliers, scale_learning_rate

REPO = Path(__file__).resolve().parents[2]
CONTRACT_KEYS = {
    "backbone_initialization",
    "backbone_source",
    "phase",
    "steps",
    "global_batch_size",
    "learning_rate",
    "optimizer",
    "ema_momentum",
    "train_data",
    "num_train_images",
    "seed",
    "sohes_hf_version",
    "started_at",
    "finished_at",
    "final_loss",
    "dropped_images",
    "unreadable_images",
    "image_substitutions",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch_loss(model: SohesForHierarchicalSegmentation, batch) -> float:  # type: ignore[no-untyped-def]
    torch.manual_seed(123)  # the loss samples points at random: same points before and after
    with torch.no_grad():
        out = model(
            pixel_values=batch.pixel_values,
            pixel_mask=batch.pixel_mask,
            mask_labels=[m.float() for m in batch.mask_labels],
            class_labels=batch.class_labels,
            ancestor_labels=batch.ancestor_labels,
        )
    return float(out.loss)


def test_training_reduces_the_loss_on_a_fixed_batch(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data
    values = tiny_recipe(
        image_dir,
        labels,
        tmp_path / "run",
        max_steps=25,
        global_batch_size=1,
        per_device_train_batch_size=1,
        base_batch_size=1,
        schedule="constant",
        logging_steps=5,
    )
    config = build_training_config("self-instruction", values)
    dataset = SelfInstructionDataset(
        PseudoLabelledImages(str(labels), str(image_dir)), config.augmentation, 0
    )
    example = dataset[0]
    assert example.mask_labels.shape[0] >= 2
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(SohesConfig(**tiny_model_config()))
    batch = collate_training_examples([example])
    before = _batch_loss(model, batch)
    trainer = SelfInstructionTrainer(
        config, model=model, train_dataset=fixed_batch_dataset(example), accelerator=Accelerator(cpu=True)
    )
    result = trainer.train()
    after = _batch_loss(model, batch)
    assert after < 0.7 * before, (before, after)
    assert result.record.steps == 25 and math.isfinite(result.record.final_loss)


def test_full_run_writes_model_config_processor_and_record(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data
    out = tmp_path / "run"
    config = build_training_config(
        "self-instruction", tiny_recipe(image_dir, labels, out, max_steps=2, checkpointing_steps=1)
    )
    trainer = SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))
    result = trainer.train()
    assert Path(result.model_dir) == out
    record = json.loads((out / "training_record.json").read_text())
    assert set(record) == CONTRACT_KEYS
    assert record["phase"] == "self-instruction" and record["steps"] == 2 and record["ema_momentum"] is None
    assert record["num_train_images"] == 3 and record["global_batch_size"] == 2
    assert read_training_record(out).final_loss == record["final_loss"]
    # tiny_recipe names no DINO backbone: the record and the card say the backbone was random.
    assert (record["backbone_initialization"], record["backbone_source"]) == ("random", None)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "randomly initialised, no DINO weights" in card and "initialised from DINO" not in card
    reloaded = SohesForHierarchicalSegmentation.from_pretrained(out)
    trained = trainer.model.state_dict()
    assert reloaded.state_dict().keys() == trained.keys()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert (out / "preprocessor_config.json").is_file()
    again = load_training_config(out / "training_config.yaml", "self-instruction")
    assert again.to_dict() == config.to_dict()
    # Checkpoint at step 1 holds the resolved config too; none is left at the final step.
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_00000001"]
    assert (checkpoints[0] / "training_config.yaml").is_file()


def test_backbone_initialisation_is_inherited_from_the_starting_models_record(tmp_path: Path) -> None:
    assert backbone_initialization(None, "facebook/dino-vitb8") == ("dino", "facebook/dino-vitb8")
    assert backbone_initialization(None, None) == ("random", None)
    phase2 = tmp_path / "phase2"
    phase2.mkdir()
    assert backbone_initialization(str(phase2), None) == ("unknown", str(phase2))
    record = {"backbone_initialization": "dino", "backbone_source": "out/dino-vitb8"}
    (phase2 / "training_record.json").write_text(json.dumps(record))
    assert backbone_initialization(str(phase2), None) == ("dino", "out/dino-vitb8")
    (phase2 / "training_record.json").write_text("{not json")
    assert backbone_initialization(str(phase2), None) == ("unknown", str(phase2))


def test_learning_rate_schedule_is_warmup_then_poly() -> None:
    factors = learning_rate_multipliers(10, 4, "poly", poly_power=1.0)
    expected = [1 / 4, 2 / 4, 3 / 4, 4 / 4] + [1 - k / 6 for k in range(6)]
    np.testing.assert_allclose(factors, expected)
    cosine = learning_rate_multipliers(5, 0, "cosine")
    np.testing.assert_allclose(cosine, [0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    np.testing.assert_allclose(learning_rate_multipliers(3, 0, "constant"), [1, 1, 1])
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_multipliers(3, 0, "step")


def test_learning_rate_scaling_rules() -> None:
    assert scale_learning_rate(8e-4, 128, 32, "sqrt") == pytest.approx(4e-4)
    assert scale_learning_rate(8e-4, 128, 32, "linear") == pytest.approx(2e-4)
    assert scale_learning_rate(8e-4, 128, 32, "none") == pytest.approx(8e-4)
    with pytest.raises(ValueError, match="lr_scaling"):
        scale_learning_rate(8e-4, 128, 32, "cubic")


def test_paper_recipes_load_with_paper_values() -> None:
    phase2 = load_training_config(REPO / "examples/configs/self_instruction.yaml", "self-instruction")
    assert (phase2.max_steps, phase2.global_batch_size, phase2.base_learning_rate) == (40_000, 128, 8e-4)
    assert tuple(phase2.adan_betas) == (0.98, 0.92, 0.99)
    phase3 = load_training_config(REPO / "examples/configs/self_correction.yaml", "self-correction")
    assert (phase3.max_steps, phase3.ema_momentum) == (5_000, 0.9995)  # type: ignore[attr-defined]
    assert (phase3.theta_score_large, phase3.theta_score_small, phase3.gamma) == (0.7, 0.3, 200.0)  # type: ignore[attr-defined]
    tiny = load_training_config(
        REPO / "examples/configs/tiny_cpu.yaml", "self-instruction", ["augmentation.image_size=96", "seed=3"]
    )
    assert tiny.augmentation.image_size == 96 and tiny.seed == 3
    SohesConfig(**tiny.model_config)  # the tiny model config is a valid SohesConfig


@pytest.mark.parametrize("phase", ["self-instruction", "self-correction"])
def test_miniature_recipe_loads_for_both_phases(phase: str) -> None:
    """benchmarks/benchmark_miniature.py trains both phases with this file."""
    overrides = ["model_name_or_path=phase2"] if phase == "self-correction" else []
    recipe = load_training_config(REPO / "examples/configs/miniature_cpu.yaml", phase, overrides)
    assert recipe.global_batch_size == recipe.per_device_train_batch_size == 8
    assert recipe.backbone_learning_rate_multiplier == 1.0  # random init: nothing to protect
    config = SohesConfig(**recipe.model_config)
    assert (config.train_num_points, config.num_queries) == (1024, 50)
    model = SohesForHierarchicalSegmentation(config)
    with torch.no_grad():
        outputs = model(pixel_values=torch.zeros(1, 3, 128, 128))
    assert outputs.masks_queries_logits.shape == (1, 50, 32, 32)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("max_steps=0", "max_steps"),
        ("lr_scaling=cubic", "lr_scaling"),
        ("augmentation.image_size=100", "augmentation.image_size"),
        ("augmentation.copy_paste_probability=2", "augmentation.copy_paste_probability"),
        ("adan_betas=[0.9, 0.9]", "adan_betas"),
        ("not_a_field=1", "not_a_field"),
    ],
)
def test_invalid_recipe_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_training_config(REPO / "examples/configs/tiny_cpu.yaml", "self-instruction", [override])


def test_phase_mismatch_and_missing_file_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="phase"):
        load_training_config(REPO / "examples/configs/self_instruction.yaml", "self-correction")
    with pytest.raises(FileNotFoundError, match=r"nothing\.yaml"):
        load_training_config(tmp_path / "nothing.yaml", "self-instruction")


def test_global_batch_that_processes_cannot_make_raises(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data
    config = build_training_config(
        "self-instruction",
        tiny_recipe(image_dir, labels, tmp_path, global_batch_size=3, per_device_train_batch_size=2),
    )
    with pytest.raises(ValueError, match="global_batch_size"):
        SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))


def test_sohes_train_cli_runs_and_reports_bad_fields(
    data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sohes_hf.cli import main as cli_main

    monkeypatch.setitem(cli_main.SUBCOMMANDS, "train", ("sohes_hf.cli.train", "train"))
    image_dir, labels = data
    arguments = [
        "train",
        "--phase",
        "self-instruction",
        "--config",
        str(REPO / "examples/configs/tiny_cpu.yaml"),
        "--cpu",
        "-o",
        f"train_annotations={labels}",
        "-o",
        f"image_root={image_dir}",
        "-o",
        f"output_dir={tmp_path / 'cli'}",
        "-o",
        "max_steps=1",
    ]
    assert cli_main.main(arguments) == 0
    assert capsys.readouterr().out.strip().endswith("cli")
    assert (tmp_path / "cli" / "training_record.json").is_file()
    with pytest.raises(SystemExit) as error:
        cli_main.main([*arguments, "-o", "warmup_steps=-1"])
    assert error.value.code == 2
    assert "warmup_steps" in capsys.readouterr().err
