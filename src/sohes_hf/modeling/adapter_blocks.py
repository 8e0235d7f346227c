"""Building blocks of the ViT-Adapter (Chen et al., ICLR 2023) used by SOHES (paper section 3.2).

* :class:`SpatialPriorModule`: a small convolutional stem giving feature maps at strides
  4, 8, 16 and 32 that carry the local spatial detail a plain ViT lacks.
* :class:`Injector`: the ViT tokens query the spatial-prior pyramid with multi-scale deformable
  attention; a zero-initialised gate keeps the pre-trained ViT unchanged at the start.
* :class:`Extractor`: the spatial-prior tokens query the ViT tokens, followed by a convolutional
  FFN, so the pyramid collects the ViT's semantics.

The deformable sampling itself is transformers' pure-PyTorch ``multi_scale_deformable_attention``
(``grid_sample`` based, runs on CPU). These modules import nothing from ``sohes_hf`` so they can
be copied flat into a Hub repository for ``trust_remote_code=True`` loading.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention


def token_grid_reference_points(
    shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Centres of the cells of each grid in ``shapes``, concatenated, as normalised ``(x, y)``.

    Args:
        shapes: ``(height, width)`` of each token grid, in the order the tokens are concatenated.

    Returns:
        ``(sum(h * w), 2)`` tensor with coordinates in ``(0, 1)``: ``x = (col + 0.5) / w``.
    """
    points = []
    for height, width in shapes:
        rows = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        cols = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


def deformable_offset_grid(num_heads: int, num_levels: int, num_points: int) -> torch.Tensor:
    """Deformable DETR's initial sampling-offset bias.

    Head ``h`` looks along direction ``2*pi*h/num_heads`` (scaled so its larger coordinate is 1)
    and point ``p`` lies ``p + 1`` cells away on every level, so the heads start out covering
    rings around the reference point instead of all sampling it.

    Returns:
        ``(num_heads * num_levels * num_points * 2,)``, the layout of ``sampling_offsets.bias``.
    """
    angles = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack((angles.cos(), angles.sin()), dim=-1)
    directions = directions / directions.abs().max(dim=-1, keepdim=True).values
    grid = directions.view(num_heads, 1, 1, 2).repeat(1, num_levels, num_points, 1)
    scale = torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    return (grid * scale).reshape(-1)


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Zhu et al., 2021) with a reduced value width.

    Each query attends to ``num_points`` learned offsets around its reference point on every
    level. The value projection may be narrower than the queries (ViT-Adapter's
    ``deform_ratio``), which halves the memory of the sampled values for ViT-B.

    Args:
        embed_dim: Width of queries and values.
        num_heads: Attention heads; must divide ``int(embed_dim * value_ratio)``.
        num_levels: Levels of the value pyramid.
        num_points: Sampling points per head and level.
        value_ratio: Value width as a fraction of ``embed_dim``.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, num_levels: int, num_points: int, value_ratio: float = 1.0
    ) -> None:
        super().__init__()
        value_dim = int(embed_dim * value_ratio)
        if value_dim % num_heads:
            raise ValueError(f"value width {value_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, value_dim)
        self.output_proj = nn.Linear(value_dim, embed_dim)

    def sampling_offset_grid(self) -> torch.Tensor:
        """This module's initial sampling-offset bias; see :func:`deformable_offset_grid`."""
        return deformable_offset_grid(self.num_heads, self.num_levels, self.num_points)

    def forward(
        self,
        queries: torch.Tensor,
        reference_points: torch.Tensor,
        values: torch.Tensor,
        value_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Attends from ``queries`` to the flattened pyramid ``values``.

        Args:
            queries: ``(B, Q, C)``.
            reference_points: ``(Q, 2)`` normalised ``(x, y)`` in ``[0, 1]``, shared by the batch and
                used on every level.
            values: ``(B, S, C)`` with ``S = sum(h * w for h, w in value_shapes)``.
            value_shapes: ``(h, w)`` of each level, in concatenation order.

        Returns:
            ``(B, Q, C)``.
        """
        batch_size, num_queries, _ = queries.shape
        if values.shape[1] != sum(h * w for h, w in value_shapes):
            raise ValueError(f"values hold {values.shape[1]} tokens, value_shapes describe {value_shapes}")
        head_dim = self.value_dim // self.num_heads
        value = self.value_proj(values).view(batch_size, -1, self.num_heads, head_dim)
        offsets = self.sampling_offsets(queries).view(
            batch_size, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(queries).view(
            batch_size, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            batch_size, num_queries, self.num_heads, self.num_levels, self.num_points
        )
        # Offsets are in cells of each level: divide by (w, h) to get normalised coordinates.
        normalizer = torch.tensor(
            [[w, h] for h, w in value_shapes], device=queries.device, dtype=queries.dtype
        )
        locations = (
            reference_points[None, :, None, None, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attention(value, value_shapes, locations, weights)
        return self.output_proj(output)


def drop_path(hidden: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zeroes a residual branch per sample with probability ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return hidden
    keep = 1.0 - drop_prob
    mask = hidden.new_empty((hidden.shape[0],) + (1,) * (hidden.dim() - 1)).bernoulli_(keep)
    return hidden * mask / keep


class ConvFFN(nn.Module):
    """FFN with a 3x3 depthwise convolution applied to each level's token grid separately."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """``tokens`` ``(B, S, C)`` holding the grids ``shapes`` in order -> ``(B, S, C)``."""
        hidden = self.fc1(tokens)
        batch_size, _, channels = hidden.shape
        pieces = hidden.split([h * w for h, w in shapes], dim=1)
        convolved = []
        for piece, (height, width) in zip(pieces, shapes, strict=True):
            grid = piece.transpose(1, 2).reshape(batch_size, channels, height, width)
            convolved.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.fc2(self.act(torch.cat(convolved, dim=1)))


class Injector(GradientCheckpointingLayer):
    """ViT tokens <- spatial-prior pyramid: ``x + gamma * attn(norm(x), norm(c))``.

    A ``GradientCheckpointingLayer``: ``activation_checkpointing_enable()`` recomputes it in the
    backward pass (deformable attention over every stride-8 token is the adapter's largest
    activation).

    ``gamma`` starts at ``init_values`` (0 by default) so the pre-trained ViT is untouched at the
    first step and the injection is learned gradually (ViT-Adapter section 3.2).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_points: int,
        num_levels: int,
        value_ratio: float,
        init_values: float,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.feature_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attention = MultiScaleDeformableAttention(
            embed_dim, num_heads, num_levels, num_points, value_ratio
        )
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((embed_dim,), float(init_values)))

    def forward(
        self,
        vit_tokens: torch.Tensor,
        reference_points: torch.Tensor,
        prior_tokens: torch.Tensor,
        prior_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """``vit_tokens`` ``(B, N, C)`` patch tokens; ``prior_tokens`` ``(B, S, C)`` -> ``(B, N, C)``."""
        update = self.attention(
            self.query_norm(vit_tokens), reference_points, self.feature_norm(prior_tokens), prior_shapes
        )
        return vit_tokens + self.gamma * update


class Extractor(GradientCheckpointingLayer):
    """Spatial-prior pyramid <- ViT tokens, then an optional convolutional FFN.

    Recomputed in the backward pass under ``activation_checkpointing_enable()``, like the
    injector; drop path draws the same mask again (checkpointing restores the RNG state).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_points: int,
        value_ratio: float,
        use_cffn: bool,
        cffn_ratio: float,
        drop_path_rate: float,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.feature_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attention = MultiScaleDeformableAttention(embed_dim, num_heads, 1, num_points, value_ratio)
        self.use_cffn = use_cffn
        self.drop_path_rate = drop_path_rate
        if use_cffn:
            self.ffn_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
            self.ffn = ConvFFN(embed_dim, int(embed_dim * cffn_ratio))

    def forward(
        self,
        prior_tokens: torch.Tensor,
        reference_points: torch.Tensor,
        prior_shapes: list[tuple[int, int]],
        vit_tokens: torch.Tensor,
        vit_shape: tuple[int, int],
    ) -> torch.Tensor:
        """Updates ``prior_tokens`` ``(B, S, C)`` from ``vit_tokens`` ``(B, N, C)``; returns ``(B, S, C)``."""
        prior_tokens = prior_tokens + self.attention(
            self.query_norm(prior_tokens), reference_points, self.feature_norm(vit_tokens), [vit_shape]
        )
        if self.use_cffn:
            update = self.ffn(self.ffn_norm(prior_tokens), prior_shapes)
            prior_tokens = prior_tokens + drop_path(update, self.drop_path_rate, self.training)
        return prior_tokens


def _conv_norm_relu(in_channels: int, out_channels: int, stride: int, num_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(num_groups, out_channels),
        nn.ReLU(inplace=True),
    )


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving ``embed_dim``-channel maps at strides 4, 8, 16 and 32.

    Stem (three 3x3 convolutions, the first with stride 2, then a stride-2 max pool) -> stride 4;
    then one stride-2 convolution per further level. Widths ``inplanes``, ``2x``, ``4x``, ``4x``
    are projected to ``embed_dim`` by 1x1 convolutions.
    """

    def __init__(self, inplanes: int, embed_dim: int, num_groups: int, num_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_norm_relu(num_channels, inplanes, 2, num_groups),
            _conv_norm_relu(inplanes, inplanes, 1, num_groups),
            _conv_norm_relu(inplanes, inplanes, 1, num_groups),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = _conv_norm_relu(inplanes, 2 * inplanes, 2, num_groups)
        self.conv3 = _conv_norm_relu(2 * inplanes, 4 * inplanes, 2, num_groups)
        self.conv4 = _conv_norm_relu(4 * inplanes, 4 * inplanes, 2, num_groups)
        self.proj1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.proj2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1)
        self.proj3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)
        self.proj4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)

    def forward(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> four ``(B, embed_dim, H/s, W/s)`` maps for ``s`` = 4, 8, 16, 32."""
        c1 = self.stem(pixel_values)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.proj1(c1), self.proj2(c2), self.proj3(c3), self.proj4(c4)
