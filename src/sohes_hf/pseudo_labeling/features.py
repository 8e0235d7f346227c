"""Patch features of a frozen DINO ViT for clustering (paper section 3.1 step 1, appendix A).

SOHES clusters the 8x8-patch features of DINO ViT-B/8 at S x S = 1,024 x 1,024. As in HASSOD and
CutLER, the default feature is the *key* of the last self-attention layer (per-head keys
concatenated, C = hidden size): keys are what the attention compares, so patches of one entity
have similar keys. Queries, values or the last hidden states can be chosen instead.

The keys are read with a forward hook on the last layer's key projection (``layers[-1].attention.
k_proj`` in transformers 5.x), i.e. ``k_proj(layernorm_before(x))`` for that layer's input ``x``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sohes_hf.logging_utils import get_logger
from sohes_hf.pseudo_labeling.config import FEATURE_KINDS, PRECISIONS

logger = get_logger(__name__)

DEFAULT_BACKBONE = "facebook/dino-vitb8"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PROJECTION_NAMES = {"keys": "k_proj", "queries": "q_proj", "values": "v_proj"}


class DinoFeatureExtractor:
    """Last-layer patch features of a ViT (DINO ViT-B/8 by default), batched, at a chosen size.

    Args:
        model: a ``transformers.ViTModel`` already built, or a Hub id / local folder of one
            (loaded with ``add_pooling_layer=False`` and SDPA attention).
        feature_kind: "keys" (default), "queries", "values" or "tokens"; see
            :class:`~sohes_hf.pseudo_labeling.config.SelfExplorationConfig`.
        device: torch device; default CUDA when available, else CPU.
        precision: "auto", "fp32", "fp16" or "bf16"; reduced precision uses autocast on GPU.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module | str | Path = DEFAULT_BACKBONE,
        feature_kind: str = "keys",
        device: str | torch.device | None = None,
        precision: str = "auto",
        batch_size: int = 8,
    ) -> None:
        if feature_kind not in FEATURE_KINDS:
            raise ValueError(f"feature_kind: must be one of {', '.join(FEATURE_KINDS)}, got {feature_kind!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = _load_vit(model).to(self.device).eval()
        self.model.requires_grad_(False)  # frozen backbone: self-exploration never trains it
        self.feature_kind = feature_kind
        self.batch_size = batch_size
        self.autocast_dtype = _autocast_dtype(precision, self.device)
        vit_config: Any = self.model.config
        patch = vit_config.patch_size
        self.patch_size = int(patch if isinstance(patch, int) else patch[0])
        self.feature_dim = int(vit_config.hidden_size)

    def __call__(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        return self.extract(images, size)

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        """Features of square-resized images.

        Args:
            images: RGB images (H, W, 3) uint8, any sizes.
            size: side each image is resized to; must be a multiple of the patch size.

        Returns:
            (B, size/p, size/p, C) float32 patch features (p = patch size, C = hidden size).
        """
        if size % self.patch_size != 0:
            raise ValueError(f"size: must be a multiple of the patch size {self.patch_size}, got {size}")
        grid = size // self.patch_size
        if len(images) == 0:
            return np.zeros((0, grid, grid, self.feature_dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            pixel_values = preprocess_images(images[start : start + self.batch_size], size).to(self.device)
            features = self._forward(pixel_values)
            outputs.append(features.reshape(len(pixel_values), grid, grid, -1).float().cpu().numpy())
        return np.concatenate(outputs, axis=0)

    @torch.inference_mode()
    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, C) patch features (the [CLS] token removed) of normalised pixels (B, 3, S, S)."""
        with self._autocast():
            if self.feature_kind == "tokens":
                output = self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)
                return output.last_hidden_state[:, 1:]
            with _capture_output(_last_attention_projection(self.model, self.feature_kind)) as captured:
                self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)
            return captured[0][:, 1:]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def preprocess_images(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Resizes RGB uint8 images (H, W, 3) to (size, size) and applies ImageNet normalisation.

    Resizing is bilinear with antialiasing (the aspect ratio is not kept: the paper resizes every
    image to S x S). Returns (B, 3, size, size) float32.
    """
    batch = []
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"images[{index}]: expected an (H, W, 3) uint8 array, got shape {shape}")
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(
                tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        batch.append(tensor[0])
    pixels = torch.stack(batch).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _load_vit(model: nn.Module | str | Path) -> nn.Module:
    if isinstance(model, nn.Module):
        if not hasattr(model, "config") or not hasattr(model, "embeddings"):
            raise TypeError(f"model: expected a transformers ViTModel, got {type(model).__name__}")
        return model
    if not isinstance(model, str | Path):
        raise TypeError(f"model: expected a ViTModel, a Hub id or a folder, got {type(model).__name__}")
    from transformers import ViTModel

    from sohes_hf.hub import load_from_hub_or_folder

    vit = load_from_hub_or_folder(
        ViTModel.from_pretrained, str(model), add_pooling_layer=False, attn_implementation="sdpa"
    )
    logger.info("loaded ViT backbone %s", model)  # after the load: an offline error stays one line
    return vit


def _last_attention_projection(model: Any, feature_kind: str) -> nn.Module:
    """The key/query/value linear layer of the last self-attention block of a ViTModel."""
    name = _PROJECTION_NAMES[feature_kind]
    layers = getattr(model, "layers", None)
    if layers is None:  # transformers 4.x layout: encoder.layer[i].attention.attention.key
        legacy = {"k_proj": "key", "q_proj": "query", "v_proj": "value"}[name]
        return getattr(model.encoder.layer[-1].attention.attention, legacy)
    return getattr(layers[-1].attention, name)


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":  # "auto" on CPU: fp32 (CPU half precision is slow and lossy)
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
