"""What a transformers ``ViTModel`` needs to compute the function of DINO's own ViT.

SOHES clusters DINO ViT-B/8 features at S = 1,024 and S' = 256 (paper section 3.1, appendix A),
as HASSOD does with DINO's ``vision_transformer.py``. transformers' ViT holds the same weights
but differs from that code in two places that only show away from the 224 px training size or
at full precision:

* **Position embeddings at other sizes.** The 28 x 28 table (224 / 8) is resized bicubically
  (``align_corners=False``) in both, but DINO passes ``scale_factor = (g + 0.1) / 28`` per axis
  (``g`` = patches along that axis; the 0.1 guards the floor of the output size), and PyTorch
  then maps output cell ``i`` to source ``(i + 0.5) / scale_factor - 0.5``. transformers passes
  ``size = g``, i.e. the exact ratio ``g / 28`` -- what ViT-Adapter's ``_get_pos_embed`` does
  too. The two tables differ at every size but 224, so every feature differs.
  :func:`interpolate_position_embeddings` implements both rules (``"dino"``, ``"vit_adapter"``).
* **LayerNorm epsilon.** DINO builds its LayerNorms with ``eps = 1e-6``; the Hub conversions
  (``facebook/dino-vit{s,b}{8,16}``) kept transformers' ``ViTConfig`` default ``1e-12``.
  :func:`apply_dino_layer_norm_eps` puts DINO's value back into a loaded DINO-shaped model.

This file imports nothing from ``sohes_hf`` (it is copied flat into saved model repositories and
loaded as Hub remote code next to ``vit_adapter.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# Same logger tree as sohes_hf.logging_utils.get_logger(__name__) (which is logging.getLogger).
logger = logging.getLogger(__name__)

# Ways to resize the position table to a patch grid: DINO's own, and the exact-grid resize of
# ViT-Adapter's _get_pos_embed (identical to transformers' interpolate_pos_encoding=True).
POSITION_INTERPOLATIONS = ("vit_adapter", "dino")
# DINO's vision_transformer.py: norm_layer=partial(nn.LayerNorm, eps=1e-6) for every ViT size.
DINO_LAYER_NORM_EPS = 1e-6
# transformers' ViTConfig default, written into the Hub's DINO configs by the conversion.
VIT_CONFIG_DEFAULT_LAYER_NORM_EPS = 1e-12
# ViT-Ti/S/B widths of DINO's vision_transformer.py (vit_tiny, vit_small, vit_base).
_DINO_WIDTHS = (192, 384, 768)
# DINO's extra 0.1 patch per axis (facebookresearch/dino issue 8: keeps floor(output size) right).
_DINO_SCALE_OFFSET = 0.1


def interpolate_position_embeddings(
    position_embeddings: torch.Tensor, grid_size: tuple[int, int], rule: str = "dino"
) -> torch.Tensor:
    """Resizes a ViT position table ([CLS] first) to a patch grid.

    Args:
        position_embeddings: ``(1, 1 + n * n, C)``: the [CLS] position, then an ``n x n`` grid
            (row-major, as trained, e.g. n = 28 for DINO ViT-B/8 at 224 px).
        grid_size: ``(h, w)`` patches of the input (height, width).
        rule: ``"dino"`` (DINO's ``interpolate_pos_encoding``: bicubic with
            ``scale_factor = (h + 0.1) / n, (w + 0.1) / n``) or ``"vit_adapter"`` (bicubic to
            exactly ``(h, w)``, as ViT-Adapter and transformers' ViT).

    Returns:
        ``(1, 1 + h * w, C)``; the table itself when ``(h, w) == (n, n)`` (both references do so).
    """
    if rule not in POSITION_INTERPOLATIONS:
        raise ValueError(f"rule: must be one of {', '.join(POSITION_INTERPOLATIONS)}, got {rule!r}")
    height, width = grid_size
    num_positions = position_embeddings.shape[1] - 1
    side = round(num_positions**0.5)
    if side * side != num_positions:
        raise ValueError(f"position_embeddings: {num_positions} patch positions do not form a square grid")
    if (height, width) == (side, side):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    table = position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule == "dino":
        scale = ((height + _DINO_SCALE_OFFSET) / side, (width + _DINO_SCALE_OFFSET) / side)
        table = F.interpolate(table, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
    if tuple(table.shape[-2:]) != (height, width):  # DINO asserts the same
        raise ValueError(f"position table resized to {tuple(table.shape[-2:])}, expected {(height, width)}")
    patches = table.permute(0, 2, 3, 1).reshape(1, height * width, dim)
    return torch.cat((position_embeddings[:, :1], patches), dim=1)


def vit_embeddings(embeddings: Any, pixel_values: torch.Tensor, rule: str = "dino") -> torch.Tensor:
    """The input tokens of a transformers ViT, with the position table resized by ``rule``.

    Equals ``ViTEmbeddings.forward(pixel_values, interpolate_pos_encoding=True)`` for
    ``rule="vit_adapter"``; with ``"dino"`` it equals DINO's ``prepare_tokens``.

    Args:
        embeddings: the ``embeddings`` module of a ``ViTModel`` (patch projection, [CLS] token,
            position table, dropout).
        pixel_values: ``(B, 3, H, W)`` normalised images; patches cover ``H // p x W // p``.
        rule: see :func:`interpolate_position_embeddings`.

    Returns:
        ``(B, 1 + (H // p) * (W // p), C)``: [CLS] first, then the patches row-major.
    """
    patch_size = embeddings.patch_size
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    pixel_values = pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype)
    patches = embeddings.patch_embeddings(pixel_values)
    cls_tokens = embeddings.cls_token.expand(patches.shape[0], -1, -1)
    tokens = torch.cat((cls_tokens, patches), dim=1)
    grid = (pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w)
    tokens = tokens + interpolate_position_embeddings(embeddings.position_embeddings, grid, rule)
    dropped: torch.Tensor = embeddings.dropout(tokens)
    return dropped


def is_dino_vit_architecture(config: Any) -> bool:
    """Whether a ``ViTConfig`` has the shape of a released DINO ViT (Ti/S/B, patch 8 or 16).

    DINO's ViTs: 12 blocks of width 192/384/768 with 64-wide heads, MLP ratio 4, GELU, qkv bias,
    3-channel 224 px inputs.
    """
    width = config.hidden_size
    patch = config.patch_size if isinstance(config.patch_size, int) else tuple(config.patch_size)
    image = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    return (
        config.num_hidden_layers == 12
        and width in _DINO_WIDTHS
        and config.num_attention_heads * 64 == width
        and config.intermediate_size == 4 * width
        and patch in (8, 16, (8, 8), (16, 16))
        and image in (224, (224, 224))
        and bool(config.qkv_bias)
        and config.hidden_act == "gelu"
        and config.num_channels == 3
    )


def apply_dino_layer_norm_eps(model: nn.Module, source: str) -> bool:
    """Gives a loaded DINO ``ViTModel`` DINO's LayerNorm epsilon when its config kept 1e-12.

    The Hub's DINO checkpoints (e.g. ``facebook/dino-vitb8``) declare transformers' default
    ``layer_norm_eps`` 1e-12, while DINO trained and evaluates with 1e-6: left as is, the last
    keys of ViT-B/8 differ from DINO's by about 1e-3. Only a model whose config has exactly
    1e-12 and a DINO architecture (:func:`is_dino_vit_architecture`) is changed; the change is
    logged at INFO.

    Args:
        model: a ``ViTModel``; its ``config.layer_norm_eps`` and every ``nn.LayerNorm`` are updated.
        source: where it was loaded from, for the log line.

    Returns:
        True when the epsilon was changed.
    """
    config: Any = model.config
    if config.layer_norm_eps != VIT_CONFIG_DEFAULT_LAYER_NORM_EPS or not is_dino_vit_architecture(config):
        return False
    config.layer_norm_eps = DINO_LAYER_NORM_EPS
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = DINO_LAYER_NORM_EPS
    logger.info(
        "%s: DINO ViT config says layer_norm_eps %g (transformers' ViTConfig default, kept by the Hub "
        "conversion); using DINO's own %g",
        source,
        VIT_CONFIG_DEFAULT_LAYER_NORM_EPS,
        DINO_LAYER_NORM_EPS,
    )
    return True
