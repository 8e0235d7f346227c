"""Tiny SOHES configurations for tests and examples (CPU, 64-128 px images, seconds per step)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .configuration_sohes import SohesConfig


def tiny_sohes_config(**overrides: Any) -> SohesConfig:
    """A few-layer, narrow :class:`SohesConfig` with the real architecture.

    See :func:`tiny_sohes_config_kwargs` for the settings and how overrides combine.
    """
    return SohesConfig(**tiny_sohes_config_kwargs(**overrides))


def tiny_sohes_config_kwargs(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`tiny_sohes_config` (e.g. for a training recipe's model section).

    ViT: 4 layers of width 64 (patch 8) in two interaction groups; pixel decoder and decoder of
    width 32; 16 queries; 3 decoder predictions; 256 sampled points per mask. Any field can be
    overridden, e.g. ``tiny_sohes_config(num_queries=8, ancestor_loss_weight=0.0)``; a
    ``backbone_config`` dict override is merged into the tiny ViT settings (a ``ViTConfig`` replaces
    them).
    """
    backbone = {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "patch_size": 8,
        "image_size": 64,
        "layer_norm_eps": 1e-12,
    }
    backbone_override = overrides.pop("backbone_config", None)
    if isinstance(backbone_override, PretrainedConfig):
        backbone = backbone_override.to_dict()
    elif backbone_override is not None:
        backbone.update(backbone_override)
    settings: dict[str, Any] = {
        "backbone_config": backbone,
        "interaction_indexes": [[0, 1], [2, 3]],
        "adapter_conv_inplane": 16,
        "adapter_num_heads": 4,
        "adapter_num_points": 2,
        "adapter_norm_num_groups": 8,
        "feature_size": 32,
        "mask_feature_size": 32,
        "hidden_dim": 32,
        "encoder_feedforward_dim": 64,
        "encoder_layers": 1,
        "decoder_layers": 3,
        "num_attention_heads": 4,
        "dim_feedforward": 64,
        "num_queries": 16,
        "train_num_points": 256,
    }
    settings.update(overrides)
    return settings
