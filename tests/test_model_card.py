"""Model cards rendered from a config, a training record and evaluation results."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sohes_hf.model_card import METRIC_COLUMNS, PAPER_RESULTS, render_model_card, save_model_card
from sohes_hf.modeling.testing_utils import tiny_sohes_config

RECORD = {
    "phase": "self-correction",
    "steps": 1234,
    "global_batch_size": 16,
    "learning_rate": 0.0008,
    "optimizer": "adan",
    "ema_momentum": 0.9995,
    "train_data": "sa1b-shard-000.tar",
    "num_train_images": 4321,
    "seed": 17,
    "sohes_hf_version": "0.1.0",
    "started_at": "2026-11-20T10:00:00Z",
    "finished_at": "2026-11-21T11:30:00Z",
    "final_loss": 3.25,
    "backbone_initialization": "dino",
    "backbone_source": "facebook/dino-vitb8",
}
EVALUATION = {"SA-1B": {"AP": 11.04, "AR_S": 7.5, "AR_M": 30.25, "AR_L": 41.0, "AR": 29.96}}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_carries_config_record_and_evaluation_values() -> None:
    config = tiny_sohes_config()
    card = render_model_card(config, RECORD, EVALUATION, model_id="me/sohes-tiny")
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert meta["library_name"] == "transformers"
    assert "sohes" in meta["tags"]
    # Architecture from the config.
    backbone = config.backbone_config
    assert f"ViT, {backbone.num_hidden_layers} layers, width {backbone.hidden_size}" in card
    assert f"| Queries | {config.num_queries} (one entity each) |" in card
    assert f"{config.decoder_layers} layers, width {config.hidden_dim}" in card
    # Training record rows.
    for label, value in [
        ("Phase", "self-correction"),
        ("Optimizer steps", "1234"),
        ("Global batch size", "16"),
        ("Teacher EMA momentum", "0.9995"),
        ("Training data", "sa1b-shard-000.tar"),
        ("Training images", "4321"),
        ("Final loss", "3.25"),
    ]:
        assert f"| {label} | {value} |" in card
    assert "(version 0.1.0)" in card
    # Evaluation table in the paper's column order, one decimal, next to the paper's row.
    assert "| Dataset | Model | " + " | ".join(METRIC_COLUMNS) + " |" in card
    assert "| SA-1B | this model | 11.0 | 7.5 | 30.2 | 41.0 | 30.0 |" in card
    paper = PAPER_RESULTS["SA-1B"]
    assert (
        "| SA-1B | SOHES paper (Table 4/5) | " + " | ".join(f"{paper[m]:.1f}" for m in METRIC_COLUMNS) in card
    )
    assert 'pipeline("hierarchical-segmentation", model="me/sohes-tiny")' in card
    assert "@inproceedings{cao2024sohes" in card and "ICLR" in card
    assert "## Limitations" in card and "$" not in card


def test_license_comes_from_record_then_config_then_default() -> None:
    config = tiny_sohes_config()
    assert _front_matter(render_model_card(config, {**RECORD, "license": "cc-by-nc-4.0"}))["license"] == (
        "cc-by-nc-4.0"
    )
    assert _front_matter(render_model_card({"license": "mit"}))["license"] == "mit"
    assert _front_matter(render_model_card(config, license="bsd-3-clause"))["license"] == "bsd-3-clause"
    card = render_model_card(config)
    assert "No training record was provided" in card and "No evaluation results were provided" in card


def test_missing_record_fields_and_bad_evaluation() -> None:
    card = render_model_card(tiny_sohes_config(), {"steps": 10})
    assert "| Optimizer | not recorded |" in card
    with pytest.raises(ValueError, match=r"evaluation\['COCO'\]\['AR'\]"):
        render_model_card(tiny_sohes_config(), None, {"COCO": {"AR": "high"}})
    with pytest.raises(ValueError, match=r"evaluation\['COCO'\]"):
        render_model_card(tiny_sohes_config(), None, {"COCO": 31.0})  # type: ignore[dict-item]


def test_save_model_card_writes_readme_atomically(tmp_path: Path) -> None:
    path = save_model_card(tmp_path / "model", tiny_sohes_config(), RECORD, EVALUATION)
    assert path == tmp_path / "model" / "README.md"
    assert path.read_text(encoding="utf-8") == render_model_card(tiny_sohes_config(), RECORD, EVALUATION)
    assert [p.name for p in path.parent.iterdir()] == ["README.md"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        save_model_card(tmp_path / "file", tiny_sohes_config())


def test_card_says_how_the_backbone_was_initialised() -> None:
    config = tiny_sohes_config()
    dino = render_model_card(config, RECORD)
    assert "patch 8x8 (initialised from DINO: facebook/dino-vitb8)" in dino
    assert "The backbone was initialised from DINO (Caron et al., 2021)" in dino
    assert "| Backbone weights from | facebook/dino-vitb8 |" in dino
    random = render_model_card(
        config, {**RECORD, "backbone_initialization": "random", "backbone_source": None}
    )
    assert "patch 8x8 (randomly initialised, no DINO weights)" in random
    assert "no pre-trained DINO weights were used" in random
    assert "initialised from DINO" not in random and "DINO self-supervised initialisation" not in random
    # A record written before the field existed, or none at all: the card does not guess.
    for record in ({k: v for k, v in RECORD.items() if not k.startswith("backbone_")}, None):
        card = render_model_card(config, record)
        assert "(initialisation not recorded)" in card and "initialised from DINO" not in card
