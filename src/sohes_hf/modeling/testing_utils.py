"""Tiny SOHES configurations and DINO-shaped ViTs for tests and examples (CPU, 32-128 px images)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, ViTConfig, ViTModel

from .configuration_sohes import SohesConfig


def tiny_sohes_config(**overrides: Any) -> SohesConfig:
    """A few-layer, narrow :class:`SohesConfig` with the real architecture.

    See :func:`tiny_sohes_config_kwargs` for the settings and how overrides combine.
    """
    return SohesConfig(**tiny_sohes_config_kwargs(**overrides))


def tiny_sohes_config_kwargs(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`tiny_sohes_config` (e.g. for a training recipe's model section).

    ViT: 4 layers of width 64 (patch 8) in four interaction groups (one per adapter output);
    pixel decoder and decoder of width 32; 16 queries; 3 decoder predictions; 256 sampled points
    per mask. Any field can be overridden, e.g.
    ``tiny_sohes_config(num_queries=8, ancestor_loss_weight=0.0)``; a ``backbone_config`` dict
    override is merged into the tiny ViT settings (a ``ViTConfig`` replaces them).
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
        "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]],
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


def tiny_dino_vit(**overrides: Any) -> ViTModel:
    """A tiny randomly initialised DINO-shaped ``ViTModel`` (no pooler), in eval mode.

    Patch 8 like ViT-B/8, 2 layers of width 32 with 2 heads, MLP 64, 64 px images; any
    ``ViTConfig`` field can be overridden (e.g. ``layer_norm_eps=1e-6`` as in DINO's own
    checkpoints). Weights come from torch's global generator: seed it for reproducible models.
    """
    settings: dict[str, Any] = {
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
    }
    settings.update(overrides)
    return ViTModel(ViTConfig(**settings), add_pooling_layer=False).eval()
