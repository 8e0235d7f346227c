"""Recipe ``model_config`` keys are checked against ``SohesConfig`` like the other sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from tests.training import tiny_model_config, tiny_recipe

from sohes_hf.modeling import SohesConfig
from sohes_hf.training.config import build_training_config


def test_misspelt_model_config_key_is_refused_naming_it_and_the_valid_ones(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, tmp_path / "labels.json", tmp_path / "out")
    recipe["model_config"] = {**tiny_model_config(), "num_querys": 4}
    with pytest.raises(ValueError, match="unknown model_config field") as caught:
        build_training_config("self-instruction", recipe)
    message = str(caught.value)
    assert "num_querys" in message and "num_queries" in message and "hidden_dim" in message


def test_every_sohes_config_field_is_accepted(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, tmp_path / "labels.json", tmp_path / "out")
    recipe["model_config"] = {**tiny_model_config(), "num_queries": 4, "decoder_layers": 3}
    config = build_training_config("self-instruction", recipe)
    assert config.model_config["num_queries"] == 4
    assert {"num_queries", "adapter_num_heads"} <= {f.name for f in dataclasses.fields(SohesConfig)}


def test_cli_reports_unknown_model_config_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sohes_hf.cli.main import main

    recipe = tiny_recipe(tmp_path, tmp_path / "labels.json", tmp_path / "out")
    recipe["model_config"] = {"num_querys": 4}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(SystemExit) as caught:  # CliError goes through argparse's error()
        main(["train", "--phase", "self-instruction", "--config", str(path), "--cpu"])
    assert caught.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("sohes: error: --config/--override: unknown model_config")
    assert "num_querys" in err
