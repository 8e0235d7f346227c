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


class _Payload:
    """Pickles to a call that creates ``marker``: what a hostile checkpoint file would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("file", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_resume_refuses_a_pickle_payload(file: str, data: tuple[Path, Path], tmp_path: Path) -> None:
    from sohes_hf.training.checkpointing import CheckpointError

    image_dir, labels = data
    recipe = tiny_recipe(image_dir, labels, tmp_path / "run", max_steps=2, checkpointing_steps=1)
    config = build_training_config("self-instruction", recipe)
    crashing = _crashing(SelfInstructionTrainer, at_step=2)(config, accelerator=Accelerator(cpu=True))
    with pytest.raises(_Crash):
        crashing.train()
    ((_, folder),) = list_checkpoints(str(tmp_path / "run"))
    assert not list(Path(folder).glob("custom_checkpoint_*"))  # the project writes none
    # The payload is live: an unrestricted load runs it (so the assertion below can fail).
    probe, probe_marker = tmp_path / "probe.pkl", tmp_path / "probe-ran"
    torch.save(_Payload(probe_marker), probe)
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), Path(folder) / file)
    trainer = SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))
    with pytest.raises(CheckpointError, match=f"{file}.*(weights_only|run code)"):
        trainer.train(resume_from="latest")
    assert not marker.exists()
    assert trainer.state.global_step == 0


def test_safety_check_refuses_payload_in_any_pickle_file(tmp_path: Path) -> None:
    from sohes_hf.training.checkpointing import CheckpointError, check_checkpoint_is_safe

    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(_Payload(tmp_path / "ran"), folder / "scheduler.bin")
    with pytest.raises(CheckpointError, match=r"scheduler\.bin does not load with"):
        check_checkpoint_is_safe(str(folder))
    assert not (tmp_path / "ran").exists()
