"""Stop-and-resume continues exactly (STYLE rule 9): same parameters, EMA teacher and loss log."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tests.training import tiny_recipe

from sohes_hf.training import SelfCorrectionTrainer, SelfInstructionTrainer
from sohes_hf.training.checkpointing import list_checkpoints
from sohes_hf.training.config import build_training_config


class _Crash(Exception):
    pass


def _crashing(trainer_class: type[SelfInstructionTrainer], at_step: int) -> type[SelfInstructionTrainer]:
    class Crashing(trainer_class):  # type: ignore[misc,valid-type]
        def _after_optimizer_step(self, model: torch.nn.Module) -> None:
            super()._after_optimizer_step(model)
            if self.state.global_step == at_step:
                raise _Crash

    return Crashing


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("phase", ["self-instruction", "self-correction"])
def test_resumed_run_equals_uninterrupted_run(
    phase: str, data: tuple[Path, Path], phase2_model: Path, tmp_path: Path
) -> None:
    image_dir, labels = data
    trainer_class = SelfInstructionTrainer if phase == "self-instruction" else SelfCorrectionTrainer
    extra = (
        {} if phase == "self-instruction" else {"model_name_or_path": str(phase2_model), "ema_momentum": 0.5}
    )
    # Warm-up and poly decay, a logging window across the checkpoint, copy-paste on: every
    # piece of state matters. Checkpoint at step 1, crash at step 2, resume to step 3.
    recipe = dict(
        max_steps=3, warmup_steps=2, schedule="poly", logging_steps=2, checkpointing_steps=1, **extra
    )
    recipe["augmentation"] = {
        "image_size": 64,
        "min_scale": 0.5,
        "max_scale": 1.5,
        "copy_paste_probability": 1.0,
    }

    def config(folder: str):  # type: ignore[no-untyped-def]
        return build_training_config(phase, tiny_recipe(image_dir, labels, tmp_path / folder, **recipe))

    full = trainer_class(config("full"), accelerator=Accelerator(cpu=True))
    full.train()

    crashing = _crashing(trainer_class, at_step=2)(config("resumed"), accelerator=Accelerator(cpu=True))
    with pytest.raises(_Crash):
        crashing.train()
    assert [step for step, _ in list_checkpoints(str(tmp_path / "resumed"))] == [1]
    resumed = trainer_class(config("resumed"), accelerator=Accelerator(cpu=True))
    result = resumed.train(resume_from="latest")

    assert resumed.state.global_step == 3
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    if phase == "self-correction":
        assert isinstance(full, SelfCorrectionTrainer) and isinstance(resumed, SelfCorrectionTrainer)
        assert full.teacher is not None and resumed.teacher is not None
        for name, value in full.teacher.module.state_dict().items():
            torch.testing.assert_close(resumed.teacher.module.state_dict()[name], value, rtol=0, atol=1e-6)
    assert result.record.final_loss == pytest.approx(full.state.last_logged_loss, abs=1e-6)


def test_resume_without_checkpoint_raises(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data
    config = build_training_config("self-instruction", tiny_recipe(image_dir, labels, tmp_path / "none"))
    trainer = SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        trainer.train(resume_from="latest")
