"""Patch features of a frozen DINO ViT for clustering (paper section 3.1 step 1, appendix A).

SOHES clusters the 8x8-patch features of DINO ViT-B/8 at S x S = 1,024 x 1,024. As in HASSOD and
CutLER, the default feature is the *key* of the last self-attention layer (per-head keys
concatenated, C = hidden size): keys are what the attention compares, so patches of one entity
have similar keys. Queries, values or the last hidden states can be chosen instead.

The keys are read with a forward hook on the last layer's key projection (``layers[-1].attention.
k_proj`` in transformers 5.x), i.e. ``k_proj(layernorm_before(x))`` for that layer's input ``x``:
the middle third of the fused ``qkv`` output that HASSOD's ``ViTFeat`` hooks.

Two details make the transformers ViT compute DINO's own function (``sohes_hf.modeling.dino_vit``):
the position table is resized with DINO's rule (``scale_factor = (g + 0.1) / 28``), not
transformers' exact-grid resize, since every feature here is computed at S or S' and not at 224;
and a DINO checkpoint whose config kept transformers' ``layer_norm_eps`` 1e-12 (the Hub's
``facebook/dino-vitb8``) is loaded with DINO's 1e-6, so the Hub id and a ``sohes convert``-ed
original ``.pth`` give the same features.
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
from sohes_hf.modeling.dino_vit import apply_dino_layer_norm_eps, vit_embeddings
from sohes_hf.pseudo_labeling.config import FEATURE_KINDS, PRECISIONS

logger = get_logger(__name__)

DEFAULT_BACKBONE = "facebook/dino-vitb8"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PROJECTION_NAMES = {"keys": "k_proj", "queries": "q_proj", "values": "v_proj"}


class DinoFeatureExtractor:
    """Last-layer patch features of a ViT (DINO ViT-B/8 by default), batched, at a chosen size.

    Args:
        model: a ``transformers.ViTModel`` already built (used as it is), or a Hub id / local
            folder of one (loaded with ``add_pooling_layer=False`` and SDPA attention; a DINO
            config with ``layer_norm_eps`` 1e-12 gets DINO's 1e-6, logged at INFO).
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
            pixel_values = preprocess_images(images[start : start + self.batch_size], size)
            outputs.append(self.extract_pixels(pixel_values))
        return np.concatenate(outputs, axis=0)

    def extract_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Features of already normalised images, in one forward pass, at their own size.

        Args:
            pixel_values: (B, 3, H, W) ImageNet-normalised images (see :func:`preprocess_images`);
                H and W need not be equal; the patches cover H // p x W // p.

        Returns:
            (B, H // p, W // p, C) float32 patch features.
        """
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values: expected (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        features = self._forward(pixel_values.to(self.device))
        return features.reshape(len(pixel_values), *grid, -1).float().cpu().numpy()

    @torch.inference_mode()
    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, C) patch features (the [CLS] token removed) of normalised pixels (B, 3, H, W)."""
        with self._autocast():
            if self.feature_kind == "tokens":
                vit: Any = self.model
                tokens: torch.Tensor = vit.layernorm(self._run_layers(pixel_values))
                return tokens[:, 1:]
            with _capture_output(_last_attention_projection(self.model, self.feature_kind)) as captured:
                self._run_layers(pixel_values)
            return captured[0][:, 1:]

    def _run_layers(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's last hidden states (before its final LayerNorm), positions as DINO resizes them.

        ``ViTModel.forward`` would resize the position table with transformers' rule, so its
        embedding step is replaced by DINO's; the layers are the model's own.
        """
        vit: Any = self.model
        hidden = vit_embeddings(vit.embeddings, pixel_values, rule="dino")
        for layer in vit.layers:
            hidden = layer(hidden, None)
        return hidden

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
        if not all(hasattr(model, name) for name in ("config", "embeddings", "layers", "layernorm")):
            raise TypeError(f"model: expected a transformers ViTModel, got {type(model).__name__}")
        return model
    if not isinstance(model, str | Path):
        raise TypeError(f"model: expected a ViTModel, a Hub id or a folder, got {type(model).__name__}")
    from transformers import ViTModel

    from sohes_hf.hub import load_from_hub_or_folder

    vit = load_from_hub_or_folder(
        ViTModel.from_pretrained, str(model), add_pooling_layer=False, attn_implementation="sdpa"
    )
    apply_dino_layer_norm_eps(vit, str(model))
    logger.info("loaded ViT backbone %s", model)  # after the load: an offline error stays one line
    return vit


def _last_attention_projection(model: Any, feature_kind: str) -> nn.Module:
    """The key/query/value linear layer of the last self-attention block of a ViTModel."""
    projection: nn.Module = getattr(model.layers[-1].attention, _PROJECTION_NAMES[feature_kind])
    return projection


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
