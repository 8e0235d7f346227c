"""DINO ViT + ViT-Adapter: the multi-scale backbone of SOHES (paper section 3.2).

SOHES fine-tunes the DINO ViT-B/8 it used for self-exploration, with a ViT-Adapter (Chen et al.,
ICLR 2023) producing the feature pyramid Mask2Former needs. The ViT is transformers'
``ViTModel`` (so ``facebook/dino-vitb8`` weights load as they are) whose layers are run one by
one, with adapter interaction blocks between layer groups.

Patch-8 layout. The official adapter assumes 16x16 patches (token grid at stride 16). Here the
token grid has stride ``patch_size`` (8 for DINO ViT-B/8):

* the spatial prior module (SPM) gives maps at strides 4, 8, 16, 32; levels 8/16/32 are
  flattened into the adapter's token pyramid ``c`` (plus a learned level embedding);
* injector: queries are the ViT patch tokens (stride 8), values the three SPM levels;
* extractor: queries are the SPM tokens of levels 8/16/32, values the ViT tokens (one level);
* outputs: stride 4 = SPM stride-4 map + 2x upsampled stride-8 level; strides 8/16/32 = the
  updated SPM levels. With ``adapter_add_vit_feature`` the ViT token map kept after each
  interaction stage (the output of the stage's layer group, no final LayerNorm) is added to one
  output, as in the official adapter: stage 1 to stride 4, stage 2 to stride 8, stage 3 to 16,
  stage 4 to 32, each resized bilinearly (``align_corners=False``) to its level; at patch 8 that
  is x2, as is, x0.5, x0.25. Each output gets a GroupNorm.

Unlike the official adapter, the [CLS] token is kept in the ViT sequence (DINO was trained with
it); only the patch tokens take part in injection and extraction.

Position embeddings: the 224 px table is resized to the ``H/p x W/p`` grid by
``config.backbone_position_interpolation``: by default exactly to that grid, as the official
adapter's ``_get_pos_embed`` (and transformers' ViT) does; ``"dino"`` uses DINO's rule instead,
as the self-exploration features do (``dino_vit.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from .adapter_blocks import Extractor, Injector, SpatialPriorModule, token_grid_reference_points
from .configuration_sohes import SohesConfig
from .dino_vit import vit_embeddings

# SPM levels that form the adapter's token pyramid.
PYRAMID_STRIDES = (8, 16, 32)
# Strides of the four feature maps handed to the pixel decoder.
OUTPUT_STRIDES = (4, 8, 16, 32)


class SohesViTAdapter(nn.Module):
    """ViT backbone with ViT-Adapter interaction blocks.

    Attributes:
        vit: transformers ``ViTModel`` without pooling layer (weights of DINO ViT-B/8).
    """

    def __init__(self, config: SohesConfig) -> None:
        super().__init__()
        vit_config = config.backbone_config
        if not isinstance(vit_config, ViTConfig):
            raise ValueError(f"config.backbone_config must be a ViTConfig, got {type(vit_config).__name__}")
        width = vit_config.hidden_size
        eps = vit_config.layer_norm_eps
        self.patch_size = int(vit_config.patch_size)  # type: ignore[arg-type]  # an int for ViT
        self.interaction_indexes = [tuple(group) for group in (config.interaction_indexes or [])]
        self.add_vit_feature = config.adapter_add_vit_feature
        self.position_interpolation = config.backbone_position_interpolation
        self.vit = ViTModel(vit_config, add_pooling_layer=False)
        # The official adapter never applies the ViT's final norm. Its weights stay (DINO
        # checkpoints load as they are) as buffers: a trainable parameter without gradient makes
        # DDP fail at the second step, and requires_grad_(False) here would not last, since
        # transformers 5's from_pretrained re-creates every loaded parameter trainable.
        self.vit.layernorm = _FixedLayerNorm(width, eps)  # type: ignore[assignment]  # same interface
        self.level_embed = nn.Parameter(torch.zeros(len(PYRAMID_STRIDES), width))
        self.spatial_prior = SpatialPriorModule(
            config.adapter_conv_inplane, width, config.adapter_norm_num_groups, vit_config.num_channels
        )
        num_blocks = len(self.interaction_indexes)
        self.injectors = nn.ModuleList(
            Injector(
                width,
                config.adapter_num_heads,
                config.adapter_num_points,
                len(PYRAMID_STRIDES),
                config.adapter_deform_ratio,
                config.adapter_init_values,
                eps,
            )
            for _ in range(num_blocks)
        )
        num_extractors = num_blocks + (2 if config.adapter_use_extra_extractor else 0)
        self.extractors = nn.ModuleList(
            Extractor(
                width,
                config.adapter_num_heads,
                config.adapter_num_points,
                config.adapter_deform_ratio,
                config.adapter_use_cffn,
                config.adapter_cffn_ratio,
                config.adapter_drop_path_rate,
                eps,
            )
            for _ in range(num_extractors)
        )
        self.upsample = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.output_norms = nn.ModuleList(
            nn.GroupNorm(config.adapter_norm_num_groups, width) for _ in OUTPUT_STRIDES
        )

    @property
    def channels(self) -> list[int]:
        """Channels of the four outputs (all equal to the ViT width)."""
        return [self.vit.config.hidden_size] * len(OUTPUT_STRIDES)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Computes the feature pyramid.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images, ``H`` and ``W`` multiples of 32.

        Returns:
            Four maps ``(B, D, H/s, W/s)`` for ``s`` in 4, 8, 16, 32, ``D`` the ViT width.
        """
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        batch_size, _, height, width = pixel_values.shape
        if height % 32 or width % 32:
            raise ValueError(f"pixel_values height and width must be multiples of 32, got {height}x{width}")
        pixel_values = pixel_values.to(self.vit.embeddings.patch_embeddings.projection.weight.dtype)
        prior_maps = self.spatial_prior(pixel_values)
        stride4_map = prior_maps[0]
        pyramid_shapes = [(height // s, width // s) for s in PYRAMID_STRIDES]
        prior_tokens = torch.cat(
            [m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate(prior_maps[1:])], dim=1
        )
        vit_shape = (height // self.patch_size, width // self.patch_size)
        device, dtype = pixel_values.device, pixel_values.dtype
        vit_points = token_grid_reference_points([vit_shape], device, dtype)
        pyramid_points = token_grid_reference_points(pyramid_shapes, device, dtype)

        hidden = vit_embeddings(self.vit.embeddings, pixel_values, rule=self.position_interpolation)
        num_blocks = len(self.interaction_indexes)
        stage_maps: list[torch.Tensor] = []
        for block, (start, end) in enumerate(self.interaction_indexes):
            patches = self.injectors[block](hidden[:, 1:], vit_points, prior_tokens, pyramid_shapes)
            hidden = torch.cat((hidden[:, :1], patches), dim=1)
            for layer in self.vit.layers[start : end + 1]:
                hidden = layer(hidden, None)
            stage_maps.append(hidden[:, 1:].transpose(1, 2).reshape(batch_size, -1, *vit_shape))
            extractors = self.extractors[block : block + 1]
            if block == num_blocks - 1:
                extractors = self.extractors[block:]  # the extra extractors run after the last block
            for extractor in extractors:
                prior_tokens = extractor(
                    prior_tokens, pyramid_points, pyramid_shapes, hidden[:, 1:], vit_shape
                )

        sizes = [h * w for h, w in pyramid_shapes]
        pyramid = [
            tokens.transpose(1, 2).reshape(batch_size, -1, h, w)
            for tokens, (h, w) in zip(prior_tokens.split(sizes, dim=1), pyramid_shapes, strict=True)
        ]
        outputs = [stride4_map + self.upsample(pyramid[0]), *pyramid]
        if self.add_vit_feature:
            if len(stage_maps) != len(outputs):
                raise ValueError(
                    f"adapter_add_vit_feature needs {len(outputs)} interaction stages, one per output, "
                    f"got {len(stage_maps)} in interaction_indexes"
                )
            outputs = [
                out + _resize(vit_map, (out.shape[-2], out.shape[-1]))
                for out, vit_map in zip(outputs, stage_maps, strict=True)
            ]
        return tuple(norm(out) for norm, out in zip(self.output_norms, outputs, strict=True))


def _resize(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(feature_map.shape[-2:]) == size:
        return feature_map
    return nn.functional.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)


class _FixedLayerNorm(nn.Module):
    """A LayerNorm whose affine weights are persistent buffers (same state-dict keys), never trained."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(width))
        self.register_buffer("bias", torch.zeros(width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(hidden, hidden.shape[-1:], self.weight, self.bias, self.eps)
