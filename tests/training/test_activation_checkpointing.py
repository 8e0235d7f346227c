"""The recipe switch ``activation_checkpointing``: same training, checkpointed layers recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tests.training import tiny_recipe
from transformers.modeling_layers import GradientCheckpointingLayer

from sohes_hf.training import SelfInstructionTrainer
from sohes_hf.training.config import build_training_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recipe_switch_trains_the_same_parameters(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data

    def trained(switch: bool) -> SelfInstructionTrainer:
        recipe = tiny_recipe(
            image_dir, labels, tmp_path / str(switch), max_steps=2, activation_checkpointing=switch
        )
        trainer = SelfInstructionTrainer(
            build_training_config("self-instruction", recipe), accelerator=Accelerator(cpu=True)
        )
        trainer.train()
        return trainer

    plain, checkpointed = trained(False), trained(True)
    layers = [m for m in checkpointed.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    assert not any(
        m.gradient_checkpointing for m in plain.model.modules() if isinstance(m, GradientCheckpointingLayer)
    )
    expected = plain.model.state_dict()
    for name, value in checkpointed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert checkpointed.state.last_logged_loss == pytest.approx(plain.state.last_logged_loss, rel=1e-5)


def test_recipe_switch_must_be_a_boolean(data: tuple[Path, Path], tmp_path: Path) -> None:
    image_dir, labels = data
    recipe = tiny_recipe(image_dir, labels, tmp_path, activation_checkpointing="yes")
    with pytest.raises(ValueError, match="activation_checkpointing must be true or false"):
        build_training_config("self-instruction", recipe)
