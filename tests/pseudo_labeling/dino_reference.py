"""DINO's ViT forward and HASSOD's key extraction, written out in plain torch for comparisons.

Independent of sohes_hf and of transformers' ViT code: only the weights are taken from a
transformers ``ViTModel``, re-fused into DINO's layout (``blocks.i.attn.qkv`` = q, k, v stacked).
The steps follow facebookresearch/dino ``vision_transformer.py`` (``prepare_tokens``,
``interpolate_pos_encoding``, ``Block``) and Shengcao-Cao/HASSOD ``hac/dino.py`` (``ViTFeat``:
a forward hook on the last block's ``qkv``, keys per head concatenated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import ViTModel

# Query rows per chunk of the explicit softmax attention (keeps 16,384-token inputs in memory).
_QUERY_CHUNK = 1024


def dino_layout_weights(model: ViTModel) -> dict[str, torch.Tensor]:
    """The model's weights under DINO's names, qkv fused (what a DINO ``.pth`` holds)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weights = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        p = f"layers.{i}."
        b = f"blocks.{i}."
        for kind in ("weight", "bias"):
            weights[b + f"attn.qkv.{kind}"] = torch.cat(
                [state[p + f"attention.{n}_proj.{kind}"] for n in "qkv"], dim=0
            )
            weights[b + f"attn.proj.{kind}"] = state[p + f"attention.o_proj.{kind}"]
            weights[b + f"norm1.{kind}"] = state[p + f"layernorm_before.{kind}"]
            weights[b + f"norm2.{kind}"] = state[p + f"layernorm_after.{kind}"]
            weights[b + f"mlp.fc1.{kind}"] = state[p + f"mlp.fc1.{kind}"]
            weights[b + f"mlp.fc2.{kind}"] = state[p + f"mlp.fc2.{kind}"]
    return weights


def dino_prepare_tokens(weights: dict[str, torch.Tensor], x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """DINO's ``prepare_tokens``: patch embedding, [CLS], positions by DINO's interpolation rule."""
    _, _, w, h = x.shape  # DINO's names: "w" is the height axis, "h" the width axis
    tokens = F.conv2d(
        x, weights["patch_embed.proj.weight"], weights["patch_embed.proj.bias"], stride=patch_size
    )
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat((weights["cls_token"].expand(x.shape[0], -1, -1), tokens), dim=1)
    pos_embed = weights["pos_embed"]
    npatch = tokens.shape[1] - 1
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return tokens + pos_embed
    dim = tokens.shape[-1]
    w0 = w // patch_size + 0.1
    h0 = h // patch_size + 0.1
    patch_pos = F.interpolate(
        pos_embed[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return tokens + torch.cat((pos_embed[:, :1], patch_pos), dim=1)


def _attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """DINO's ``Attention`` core, softmax(q k^T * d^-0.5) v, in query chunks; (B, N, C)."""
    batch, tokens, three_c = qkv.shape
    c = three_c // 3
    q, k, v = qkv.reshape(batch, tokens, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    scale = (c // num_heads) ** -0.5
    out = torch.empty_like(q)
    for start in range(0, tokens, _QUERY_CHUNK):
        attn = (q[:, :, start : start + _QUERY_CHUNK] @ k.transpose(-2, -1)) * scale
        out[:, :, start : start + _QUERY_CHUNK] = attn.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, tokens, c)


@torch.no_grad()
def hassod_keys(
    weights: dict[str, torch.Tensor],
    x: torch.Tensor,
    patch_size: int,
    num_heads: int,
    layer_norm_eps: float = 1e-6,
) -> torch.Tensor:
    """HASSOD ``ViTFeat(vit_feat="k")``: last-block keys of normalised images x (B, 3, H, W).

    Returns:
        (B, C, (H // p) * (W // p)), HASSOD's layout.
    """
    dim = weights["cls_token"].shape[-1]
    num_blocks = 1 + max(int(key.split(".")[1]) for key in weights if key.startswith("blocks."))
    tokens = dino_prepare_tokens(weights, x, patch_size)
    for i in range(num_blocks):
        b = f"blocks.{i}."
        normed = F.layer_norm(
            tokens, (dim,), weights[b + "norm1.weight"], weights[b + "norm1.bias"], layer_norm_eps
        )
        qkv = F.linear(normed, weights[b + "attn.qkv.weight"], weights[b + "attn.qkv.bias"])
        if i == num_blocks - 1:  # ViTFeat's hook output, split as HASSOD does
            batch, count = qkv.shape[:2]
            k = qkv.reshape(batch, count, 3, num_heads, -1).permute(2, 0, 3, 1, 4)[1]
            k = k.transpose(1, 2).reshape(batch, count, -1)
            feat_h, feat_w = x.shape[2] // patch_size, x.shape[3] // patch_size
            return k[:, 1:].transpose(1, 2).reshape(batch, dim, feat_h * feat_w)
        attended = F.linear(
            _attention(qkv, num_heads), weights[b + "attn.proj.weight"], weights[b + "attn.proj.bias"]
        )
        tokens = tokens + attended
        normed = F.layer_norm(
            tokens, (dim,), weights[b + "norm2.weight"], weights[b + "norm2.bias"], layer_norm_eps
        )
        hidden = F.gelu(F.linear(normed, weights[b + "mlp.fc1.weight"], weights[b + "mlp.fc1.bias"]))
        tokens = tokens + F.linear(hidden, weights[b + "mlp.fc2.weight"], weights[b + "mlp.fc2.bias"])
    raise ValueError("weights hold no block")
