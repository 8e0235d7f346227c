"""SohesConfig: paper defaults, serialisation round trips, and ValueError on bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, ViTConfig

from sohes_hf.modeling import SohesConfig, register_auto_classes
from sohes_hf.modeling.testing_utils import tiny_sohes_config


def test_defaults_are_dino_vitb8_with_vit_adapter_and_mask2former() -> None:
    config = SohesConfig()
    backbone = config.backbone_config
    assert isinstance(backbone, ViTConfig)
    # facebook/dino-vitb8 (paper section 3.1, appendix A)
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (768, 12, 12)
    assert backbone.patch_size == 8
    assert backbone.layer_norm_eps == 1e-6  # DINO's vision_transformer.py, not the Hub config's 1e-12
    assert config.backbone_position_interpolation == "vit_adapter"
    assert config.interaction_indexes == [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert config.model_type == "sohes"
    mask2former = config.to_mask2former_config()
    assert mask2former.num_labels == 1
    assert mask2former.num_queries == config.num_queries
    assert mask2former.decoder_layers == config.decoder_layers
    assert list(mask2former.feature_strides) == [4, 8, 16, 32]


def test_dict_and_directory_round_trip(tmp_path: Path) -> None:
    config = tiny_sohes_config(num_queries=7, ancestor_loss_weight=0.5, adapter_use_cffn=False)
    as_dict = config.to_dict()
    assert as_dict["backbone_config"]["model_type"] == "vit"
    assert SohesConfig.from_dict(as_dict).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    loaded = SohesConfig.from_pretrained(tmp_path)
    # Saving writes `auto_map` (sohes_hf.modeling registers the classes for remote code).
    reloaded = loaded.to_dict()
    assert reloaded.pop("auto_map") == {"AutoConfig": "configuration_sohes.SohesConfig"}
    assert reloaded == as_dict
    assert isinstance(loaded.backbone_config, ViTConfig)
    assert loaded.backbone_config.hidden_size == 64


def test_bare_backbone_dict_gets_vitb8_defaults() -> None:
    config = SohesConfig(
        backbone_config={"num_hidden_layers": 4},
        interaction_indexes=[[0, 1], [2, 3]],
    )
    assert config.backbone_config.patch_size == 8
    assert config.backbone_config.hidden_size == 768
    assert config.backbone_config.num_hidden_layers == 4


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_queries": 0}, "num_queries"),
        ({"num_queries": "100"}, "num_queries"),
        ({"dropout": 1.5}, "dropout"),
        ({"ancestor_loss_weight": -1.0}, "ancestor_loss_weight"),
        ({"adapter_use_cffn": 1}, "adapter_use_cffn"),
        ({"interaction_indexes": [[0, 1], [3, 3]]}, "interaction_indexes"),
        ({"interaction_indexes": [[0, 1], [2, 2]]}, "interaction_indexes"),
        ({"interaction_indexes": "0-3"}, "interaction_indexes"),
        ({"adapter_num_heads": 3}, "adapter_num_heads"),
        ({"feature_size": 48}, "feature_size"),
        ({"mask_feature_size": 64}, "mask_feature_size"),
        ({"adapter_norm_num_groups": 5}, "adapter_norm_num_groups"),
        ({"importance_sample_ratio": 2.0}, "importance_sample_ratio"),
        ({"class_weight": 0.0, "mask_weight": 0.0, "dice_weight": 0.0}, "class_weight"),
        ({"backbone_config": {"patch_size": 14}}, "patch_size"),
        ({"backbone_position_interpolation": "bilinear"}, "backbone_position_interpolation"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_sohes_config(**overrides)


def test_auto_config_resolves_sohes(tmp_path: Path) -> None:
    register_auto_classes()
    register_auto_classes()  # idempotent
    tiny_sohes_config().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SohesConfig)
