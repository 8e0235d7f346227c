"""ViT-Adapter on a patch-8 ViT: output strides, the zero-gated injector, reference points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.pseudo_labeling.dino_reference import dino_layout_weights, dino_prepare_tokens

from sohes_hf.modeling.adapter_blocks import MultiScaleDeformableAttention, token_grid_reference_points
from sohes_hf.modeling.testing_utils import tiny_sohes_config
from sohes_hf.modeling.vit_adapter import SohesViTAdapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter() -> SohesViTAdapter:
    torch.manual_seed(0)
    return SohesViTAdapter(tiny_sohes_config()).eval()


def test_outputs_at_strides_4_8_16_32(adapter: SohesViTAdapter) -> None:
    pixel_values = torch.randn(2, 3, 64, 96)
    features = adapter(pixel_values)
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 16, 24),
        (2, 64, 8, 12),
        (2, 64, 4, 6),
        (2, 64, 2, 3),
    ]
    assert all(torch.isfinite(f).all() for f in features)


def test_zero_gate_leaves_the_vit_unchanged(adapter: SohesViTAdapter) -> None:
    """With gamma = 0 (ViT-Adapter's init), the ViT computes exactly what the plain ViTModel does."""
    for injector in adapter.injectors:
        assert torch.count_nonzero(injector.gamma) == 0
    captured: list[torch.Tensor] = []
    last_layer = adapter.vit.layers[-1]
    hook = last_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        adapter(pixel_values)
        hook.remove()
        reference = adapter.vit(pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
    expected = reference.hidden_states[-1]
    torch.testing.assert_close(captured[0], expected)
    # A non-zero gate must change them (the injector is really wired in).
    with torch.no_grad():
        adapter.injectors[0].gamma.fill_(1.0)
        hook = last_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        adapter(pixel_values)
        hook.remove()
        adapter.injectors[0].gamma.zero_()
    assert not torch.allclose(captured[1], expected)


def test_vit_feature_addition_follows_the_official_rule() -> None:
    """Official ViT-Adapter: stage k's token map (no final LayerNorm) goes to output k, resized.

    The outputs are recomputed with the addition switched off (same weights) and the per-stage
    ViT maps, captured at the last layer of each group, added by hand with F.interpolate scale
    factors as the official forward does (patch 8: x2, x1, x0.5, x0.25) before the GroupNorms.
    """
    torch.manual_seed(0)
    model = SohesViTAdapter(tiny_sohes_config()).eval()
    with torch.no_grad():  # non-zero gates and norms so every part contributes
        for injector in model.injectors:
            injector.gamma.fill_(0.5)
    pixel_values = torch.randn(1, 3, 64, 96)
    stage_outputs: list[torch.Tensor] = []
    hooks = [
        model.vit.layers[end].register_forward_hook(lambda _m, _i, out: stage_outputs.append(out))
        for _start, end in model.interaction_indexes
    ]
    pre_norm: list[torch.Tensor] = []
    norm_hooks = [
        norm.register_forward_hook(lambda _m, inputs, _o: pre_norm.append(inputs[0]))
        for norm in model.output_norms
    ]
    with torch.no_grad():
        actual = model(pixel_values)
        model.add_vit_feature = False
        pre_norm.clear()
        stage_outputs.clear()
        model(pixel_values)
        model.add_vit_feature = True
    for hook in hooks + norm_hooks:
        hook.remove()
    grid = (64 // 8, 96 // 8)
    maps = [out[:, 1:].transpose(1, 2).reshape(1, -1, *grid) for out in stage_outputs]
    scales = (2.0, 1.0, 0.5, 0.25)
    expected = []
    for norm, base, vit_map, scale in zip(model.output_norms, pre_norm, maps, scales, strict=True):
        if scale != 1.0:
            vit_map = F.interpolate(vit_map, scale_factor=scale, mode="bilinear", align_corners=False)
        expected.append(norm(base + vit_map))
    for ours, ref in zip(actual, expected, strict=True):
        assert (ours - ref).abs().max().item() < 1e-5
    # The previous rule (last map after the final LayerNorm, added to every output) differs.
    last = model.vit.layernorm(stage_outputs[-1][:, 1:]).transpose(1, 2).reshape(1, -1, *grid)
    old = [
        norm(base + F.interpolate(last, size=base.shape[-2:], mode="bilinear", align_corners=False))
        for norm, base in zip(model.output_norms, pre_norm, strict=True)
    ]
    assert max((o - a).abs().max().item() for o, a in zip(old, actual, strict=True)) > 1e-3


def _tokens_entering_the_vit(model: SohesViTAdapter, pixel_values: torch.Tensor) -> torch.Tensor:
    """Input of ViT layer 0; the zero-gated injector passes the embeddings through unchanged."""
    captured: list[torch.Tensor] = []
    hook = model.vit.layers[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        model(pixel_values)
    hook.remove()
    return captured[0]


def test_default_position_rule_is_vit_adapters_exact_grid_resize() -> None:
    """Official ViT-Adapter ``_get_pos_embed``: bicubic to exactly (H/p, W/p), align_corners=False."""
    torch.manual_seed(0)
    model = SohesViTAdapter(tiny_sohes_config()).eval()
    pixel_values = torch.randn(1, 3, 96, 160)
    tokens = _tokens_entering_the_vit(model, pixel_values)
    embeddings = model.vit.embeddings
    with torch.no_grad():
        table = embeddings.position_embeddings[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(12, 20), mode="bicubic", align_corners=False)
        positions = table.reshape(1, table.shape[1], -1).permute(0, 2, 1)
        patches = embeddings.patch_embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
        expected = torch.cat(
            (embeddings.cls_token + embeddings.position_embeddings[:, :1], patches + positions), dim=1
        )
        transformers_tokens = embeddings(pixel_values, interpolate_pos_encoding=True)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens, transformers_tokens, rtol=0, atol=1e-6)


def test_dino_position_rule_matches_dinos_prepare_tokens() -> None:
    """``backbone_position_interpolation="dino"``: the ViT input equals DINO's ``prepare_tokens``."""
    torch.manual_seed(0)
    model = SohesViTAdapter(tiny_sohes_config(backbone_position_interpolation="dino")).eval()
    pixel_values = torch.randn(1, 3, 96, 160)
    tokens = _tokens_entering_the_vit(model, pixel_values)
    expected = dino_prepare_tokens(dino_layout_weights(model.vit), pixel_values, patch_size=8)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        exact_grid = model.vit.embeddings(pixel_values, interpolate_pos_encoding=True)
    assert (tokens - exact_grid).abs().max().item() > 1e-4  # the two rules really differ here


def test_sizes_must_be_multiples_of_32(adapter: SohesViTAdapter) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        adapter(torch.randn(1, 3, 64, 72))


def test_reference_points_are_cell_centres() -> None:
    points = token_grid_reference_points([(2, 3), (1, 1)], torch.device("cpu"), torch.float32)
    expected = [[x / 6, y / 4] for y in (1, 3) for x in (1, 3, 5)] + [[0.5, 0.5]]
    torch.testing.assert_close(points, torch.tensor(expected))


def test_deformable_attention_with_zero_offsets_samples_the_reference_cell() -> None:
    """Zero offsets + one point: each query reads the value at its own cell (bilinear at a centre)."""
    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=1, num_points=1)
    with torch.no_grad():
        attention.sampling_offsets.weight.zero_()
        attention.sampling_offsets.bias.zero_()
        for linear in (attention.value_proj, attention.output_proj):
            linear.weight.copy_(torch.eye(8))
            linear.bias.zero_()
    values = torch.randn(1, 6, 8)
    points = token_grid_reference_points([(2, 3)], torch.device("cpu"), torch.float32)
    output = attention(torch.randn(1, 6, 8), points, values, [(2, 3)])
    torch.testing.assert_close(output, values)


def test_deformable_attention_matches_transformers_module() -> None:
    """With a full-width value projection it computes what Mask2Former's own module computes."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as Reference,
    )

    torch.manual_seed(0)
    ours = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=3)
    reference = Reference(embed_dim=16, num_heads=2, n_levels=2, n_points=3)
    with torch.no_grad():
        for linear in (ours.sampling_offsets, ours.attention_weights, ours.value_proj, ours.output_proj):
            linear.weight.normal_(std=0.3)
            linear.bias.normal_(std=0.3)
    reference.load_state_dict(ours.state_dict())
    shapes = [(4, 6), (2, 3)]
    values = torch.randn(2, 30, 16)
    queries = torch.randn(2, 5, 16)
    points = torch.rand(5, 2)
    expected, _ = reference(
        queries,
        encoder_hidden_states=values,
        reference_points=points[None, :, None, :].expand(2, 5, 2, 2),
        spatial_shapes_list=shapes,
    )
    torch.testing.assert_close(ours(queries, points, values, shapes), expected)
