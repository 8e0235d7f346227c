"""Original DINO checkpoints (``.pth``, Caron et al. 2021) to transformers ``ViTModel`` directories.

SOHES starts every phase from DINO ViT-B/8 (paper section 3, appendix A). The Hub checkpoint
``facebook/dino-vitb8`` already is a ``ViTModel``; this module converts the original release
(``dino_vitbase8_pretrain.pth``, or the teacher of a full training checkpoint) so a locally
trained or mirrored DINO can be used too:

======================================  ==============================================
original DINO key                        transformers ``ViTModel`` key
======================================  ==============================================
``cls_token``                            ``embeddings.cls_token``
``pos_embed``                            ``embeddings.position_embeddings``
``patch_embed.proj.{weight,bias}``       ``embeddings.patch_embeddings.projection.*``
``blocks.i.norm1.*``                     ``layers.i.layernorm_before.*``
``blocks.i.attn.qkv.{weight,bias}``      ``layers.i.attention.{q,k,v}_proj.*`` (split in 3)
``blocks.i.attn.proj.*``                 ``layers.i.attention.o_proj.*``
``blocks.i.norm2.*``                     ``layers.i.layernorm_after.*``
``blocks.i.mlp.fc{1,2}.*``               ``layers.i.mlp.fc{1,2}.*``
``norm.*``                               ``layernorm.*``
======================================  ==============================================
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import ViTConfig, ViTModel

from sohes_hf.logging_utils import get_logger
from sohes_hf.modeling.dino_vit import DINO_LAYER_NORM_EPS

logger = get_logger(__name__)

__all__ = [
    "DINO_HEAD_DIM",
    "DINO_LAYER_NORM_EPS",
    "convert_dino_checkpoint",
    "convert_dino_state_dict",
    "dino_checkpoint_to_vit_model",
    "dino_config_from_state_dict",
    "load_dino_checkpoint",
    "vit_state_dict_to_dino",
]
# Every released DINO ViT (Ti/S/B) uses 64-dimensional attention heads.
DINO_HEAD_DIM = 64

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def load_dino_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Loads the backbone state dict of an original DINO checkpoint.

    Accepts the released backbone files (a flat state dict) and full training checkpoints
    (``{"teacher": ..., "student": ...}``: the teacher is used, as DINO evaluates it). The
    ``module.`` and ``backbone.`` prefixes are stripped and the projection head (``head.*``) dropped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DINO checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "teacher" in checkpoint:
        checkpoint = checkpoint["teacher"]
    elif isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (or a DINO checkpoint with 'teacher')")
    state_dict = {}
    for key, value in checkpoint.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("head."):
            state_dict[key] = value
    return state_dict


def dino_config_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    layer_norm_eps: float = DINO_LAYER_NORM_EPS,
) -> ViTConfig:
    """Infers the ``ViTConfig`` of an original-layout DINO state dict from its tensor shapes.

    Args:
        state_dict: Original DINO keys (see the module docstring).
        num_attention_heads: Heads per layer; shapes cannot tell, so the default is
            ``hidden_size // 64`` (true for every released DINO ViT).
        layer_norm_eps: LayerNorm epsilon; DINO's own value by default.

    Raises:
        ValueError: a required key is missing or the heads do not divide the width.
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state_dict:
            raise ValueError(f"state_dict lacks {key!r}: not an original-layout DINO ViT checkpoint")
    hidden_size = int(state_dict["cls_token"].shape[-1])
    patch_size = int(state_dict["patch_embed.proj.weight"].shape[-1])
    num_layers = 1 + max(int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)))
    num_patches = int(state_dict["pos_embed"].shape[1]) - 1
    grid = round(num_patches**0.5)
    if grid * grid != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
    heads = hidden_size // DINO_HEAD_DIM if num_attention_heads is None else num_attention_heads
    if heads <= 0 or hidden_size % heads:
        raise ValueError(f"num_attention_heads={heads} must divide hidden size {hidden_size}")
    return ViTConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]),
        patch_size=patch_size,
        image_size=grid * patch_size,
        num_channels=int(state_dict["patch_embed.proj.weight"].shape[1]),
        layer_norm_eps=layer_norm_eps,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
    )


def convert_dino_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames (and splits ``qkv``) an original DINO state dict into ``ViTModel`` keys.

    Raises:
        ValueError: a key is not part of the DINO ViT layout.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _TOP_RENAMES:
            converted[_TOP_RENAMES[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in the DINO checkpoint")
        index, rest = match.groups()
        prefix = f"layers.{index}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            query, key_part, value_part = value.chunk(3, dim=0)
            converted[f"{prefix}attention.q_proj.{kind}"] = query.clone()
            converted[f"{prefix}attention.k_proj.{kind}"] = key_part.clone()
            converted[f"{prefix}attention.v_proj.{kind}"] = value_part.clone()
            continue
        module, _, kind = rest.rpartition(".")
        if module not in _BLOCK_RENAMES:
            raise ValueError(f"unexpected key {key!r} in the DINO checkpoint")
        converted[f"{prefix}{_BLOCK_RENAMES[module]}.{kind}"] = value
    return converted


def vit_state_dict_to_dino(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_dino_state_dict`: ``ViTModel`` keys back to the DINO layout.

    Useful to export a SOHES-tuned backbone to code that expects DINO's original names.
    """
    top = {hf: original for original, hf in _TOP_RENAMES.items()}
    block = {hf: original for original, hf in _BLOCK_RENAMES.items()}
    layer_key = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
    result: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in top:
            result[top[key]] = value
            continue
        match = layer_key.match(key)
        if match is None:
            raise ValueError(f"unexpected ViTModel key {key!r}")
        index, module, kind = match.groups()
        if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
            if module == "attention.q_proj":
                parts = [state_dict[f"layers.{index}.attention.{n}_proj.{kind}"] for n in "qkv"]
                result[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        if module not in block:
            raise ValueError(f"unexpected ViTModel key {key!r}")
        result[f"blocks.{index}.{block[module]}.{kind}"] = value
    return result


def dino_checkpoint_to_vit_model(
    path: str | os.PathLike[str],
    num_attention_heads: int | None = None,
    layer_norm_eps: float = DINO_LAYER_NORM_EPS,
) -> ViTModel:
    """Builds a ``ViTModel`` (no pooling layer) holding the weights of an original DINO ``.pth``."""
    state_dict = load_dino_checkpoint(path)
    config = dino_config_from_state_dict(state_dict, num_attention_heads, layer_norm_eps)
    model = ViTModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(convert_dino_state_dict(state_dict), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: converted weights do not fit ViTModel (missing {missing}, unexpected {unexpected})"
        )
    return model.eval()


def convert_dino_checkpoint(
    path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    num_attention_heads: int | None = None,
    layer_norm_eps: float = DINO_LAYER_NORM_EPS,
    overwrite: bool = False,
) -> Path:
    """Converts an original DINO ``.pth`` into a ``ViTModel`` directory (config + safetensors).

    The directory is written next to its final place and moved there in one step, so an
    interrupted conversion never leaves a half-written model behind.

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory exists (pass overwrite=True to replace it): {output_dir}")
    model = dino_checkpoint_to_vit_model(path, num_attention_heads, layer_norm_eps)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("converted %s (%d layers) to %s", path, model.config.num_hidden_layers, output_dir)
    return output_dir
