"""Original DINO .pth -> ViTModel conversion, checked against the ViTModel the .pth was made from."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from tests.pseudo_labeling.dino_reference import dino_layout_weights
from transformers import ViTModel

from sohes_hf.cli import convert as convert_cli
from sohes_hf.cli.main import CliError
from sohes_hf.modeling.conversion import (
    DINO_LAYER_NORM_EPS,
    convert_dino_checkpoint,
    convert_dino_state_dict,
    dino_checkpoint_to_vit_model,
    load_dino_checkpoint,
    vit_state_dict_to_dino,
)
from sohes_hf.modeling.testing_utils import tiny_dino_vit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference() -> ViTModel:
    """A tiny DINO-shaped ViT (2 layers, width 32, 2 heads of 16, patch 8, 32 px grid 4x4)."""
    torch.manual_seed(0)
    return tiny_dino_vit(image_size=32, layer_norm_eps=DINO_LAYER_NORM_EPS)


def _original_layout(model: ViTModel) -> dict[str, torch.Tensor]:
    """DINO's vision_transformer.py names, written out independently of the module under test."""
    return dino_layout_weights(model)


def test_state_dict_mapping_is_exact_and_invertible(reference: ViTModel) -> None:
    original = _original_layout(reference)
    converted = convert_dino_state_dict(original)
    expected = reference.state_dict()
    assert set(converted) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(converted[key], value, msg=key)
    back = vit_state_dict_to_dino(converted)
    assert set(back) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(back[key], value, msg=key)


def test_full_checkpoint_converts_to_the_same_network(reference: ViTModel, tmp_path: Path) -> None:
    # A full DINO training checkpoint: teacher/student with DDP and backbone prefixes and a head.
    teacher = {f"backbone.{k}": v for k, v in _original_layout(reference).items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 32)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in _original_layout(reference).items()}
    path = tmp_path / "dino_full.pth"
    torch.save({"teacher": teacher, "student": student, "epoch": torch.tensor(3)}, path)
    assert "head.mlp.0.weight" not in load_dino_checkpoint(path)

    # Shapes cannot tell the head count; the default (width // 64, true for DINO ViT-S/B) gives 0 here.
    with pytest.raises(ValueError, match="num_attention_heads"):
        dino_checkpoint_to_vit_model(path)
    pixel_values = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        model = dino_checkpoint_to_vit_model(path, num_attention_heads=2)
        actual = model(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        expected = reference(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(actual, expected)
    assert model.config.image_size == 32 and model.config.patch_size == 8


def test_convert_writes_a_loadable_directory_and_cli_checks_arguments(
    reference: ViTModel, tmp_path: Path
) -> None:
    path = tmp_path / "dino.pth"
    torch.save(_original_layout(reference), path)
    output = convert_dino_checkpoint(path, tmp_path / "vit", num_attention_heads=2)
    loaded = ViTModel.from_pretrained(output, add_pooling_layer=False).eval()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    with pytest.raises(FileExistsError):
        convert_dino_checkpoint(path, output)

    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "convert",
            "--dino-checkpoint",
            str(path),
            "--output",
            str(tmp_path / "cli"),
            "--num-attention-heads",
            "2",
        ]
    )
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "config.json").is_file()
    for argv, flag in (
        (
            ["--dino-checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x")],
            "--dino-checkpoint",
        ),
        (["--dino-checkpoint", str(path), "--output", str(tmp_path / "cli")], "--output"),
        (
            ["--dino-checkpoint", str(path), "--output", str(tmp_path / "y"), "--num-attention-heads", "0"],
            "--num",
        ),
    ):
        bad = parser.parse_args(["convert", *argv])
        with pytest.raises(CliError, match=flag):
            bad.func(bad)


def test_foreign_keys_are_rejected(reference: ViTModel, tmp_path: Path) -> None:
    original = _original_layout(reference)
    original["blocks.0.attn.rel_pos"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.rel_pos"):
        convert_dino_state_dict(original)
    with pytest.raises(FileNotFoundError):
        load_dino_checkpoint(tmp_path / "nope.pth")
