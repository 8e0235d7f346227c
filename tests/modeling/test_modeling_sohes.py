"""SohesForHierarchicalSegmentation: shapes, losses against transformers' Mask2Former, init, I/O."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, ViTConfig, ViTModel
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

from sohes_hf.modeling import (
    SohesConfig,
    SohesForHierarchicalSegmentation,
    SohesModelOutput,
    register_auto_classes,
)
from sohes_hf.modeling.adapter_blocks import MultiScaleDeformableAttention
from sohes_hf.modeling.ancestor_head import ancestor_loss
from sohes_hf.modeling.testing_utils import tiny_sohes_config

HEIGHT, WIDTH = 64, 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _labels() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Image 0: a whole (0) with two parts (1, 2) and a subpart (3) of part 1; image 1: nothing."""
    masks = torch.zeros(4, HEIGHT, WIDTH)
    masks[0, 8:56, 8:88] = 1
    masks[1, 8:56, 8:40] = 1
    masks[2, 8:56, 48:88] = 1
    masks[3, 16:32, 16:32] = 1
    ancestors = torch.zeros(4, 4)
    ancestors[0, 1:] = 1
    ancestors[1, 3] = 1
    return (
        [masks, torch.zeros(0, HEIGHT, WIDTH)],
        [torch.zeros(4, dtype=torch.long), torch.zeros(0, dtype=torch.long)],
        [ancestors, torch.zeros(0, 0)],
    )


@pytest.fixture(scope="module")
def model() -> SohesForHierarchicalSegmentation:
    torch.manual_seed(0)
    return SohesForHierarchicalSegmentation(tiny_sohes_config()).eval()


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


def test_forward_shapes(model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor) -> None:
    with torch.no_grad():
        output = model(pixel_values)
    assert isinstance(output, SohesModelOutput)
    assert output.loss is None and output.loss_dict is None
    n, c = model.config.num_queries, model.config.hidden_dim
    assert output.class_queries_logits.shape == (2, n, 2)
    assert output.masks_queries_logits.shape == (2, n, HEIGHT // 4, WIDTH // 4)
    assert output.ancestor_logits.shape == (2, n, n)
    assert output.query_features.shape == (2, n, c)
    num_aux = model.config.decoder_layers - 1
    assert len(output.auxiliary_masks_queries_logits) == num_aux
    assert len(output.auxiliary_class_queries_logits) == num_aux
    assert len(output.auxiliary_ancestor_logits) == num_aux
    # The ancestor logits are the head applied to the returned query features.
    torch.testing.assert_close(output.ancestor_logits, model.ancestor_head(output.query_features))


def test_loss_is_finite_and_reaches_every_parameter(pixel_values: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(tiny_sohes_config(adapter_init_values=0.1))
    mask_labels, class_labels, ancestor_labels = _labels()
    output = model(
        pixel_values, mask_labels=mask_labels, class_labels=class_labels, ancestor_labels=ancestor_labels
    )
    assert torch.isfinite(output.loss)
    names = {"loss_cross_entropy", "loss_mask", "loss_dice", "loss_ancestor"}
    expected = names | {f"{n}_{i}" for n in names for i in range(model.config.decoder_layers - 1)}
    assert set(output.loss_dict) == expected
    torch.testing.assert_close(output.loss, sum(output.loss_dict.values()))
    output.loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def _mask2former_reference(
    model: SohesForHierarchicalSegmentation, output: SohesModelOutput, mask_labels, class_labels
) -> dict[str, torch.Tensor]:
    """transformers' own Mask2Former loss, weighted as Mask2FormerForUniversalSegmentation does."""
    config = model.config
    weights = {
        "loss_cross_entropy": config.class_weight,
        "loss_mask": config.mask_weight,
        "loss_dice": config.dice_weight,
    }
    criterion = Mask2FormerLoss(config.to_mask2former_config(), weights)
    auxiliary = [
        {"masks_queries_logits": m, "class_queries_logits": c}
        for m, c in zip(
            output.auxiliary_masks_queries_logits, output.auxiliary_class_queries_logits, strict=True
        )
    ]
    losses = criterion(
        output.masks_queries_logits, output.class_queries_logits, mask_labels, class_labels, auxiliary
    )
    return {
        key: value * next(w for name, w in weights.items() if name in key) for key, value in losses.items()
    }


def test_without_ancestor_weight_the_loss_is_mask2formers(pixel_values: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(tiny_sohes_config(ancestor_loss_weight=0.0)).eval()
    mask_labels, class_labels, _ = _labels()
    torch.manual_seed(123)
    output = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    torch.manual_seed(123)
    reference = _mask2former_reference(model, output, mask_labels, class_labels)
    assert set(output.loss_dict) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(output.loss_dict[key], value, msg=key)
    torch.testing.assert_close(output.loss, sum(reference.values()))


def test_ancestor_loss_uses_the_same_matching(
    model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor
) -> None:
    mask_labels, class_labels, ancestor_labels = _labels()
    torch.manual_seed(7)
    with torch.no_grad():
        output = model(
            pixel_values, mask_labels=mask_labels, class_labels=class_labels, ancestor_labels=ancestor_labels
        )
    torch.manual_seed(7)
    reference = _mask2former_reference(model, output, mask_labels, class_labels)
    for key, value in reference.items():
        torch.testing.assert_close(output.loss_dict[key], value, msg=key)
    # Re-run the last layer's matching with the generator state it saw (first draw after the seed).
    torch.manual_seed(7)
    indices = model.criterion.matcher(
        output.masks_queries_logits, output.class_queries_logits, mask_labels, class_labels
    )
    expected = (
        ancestor_loss(output.ancestor_logits, ancestor_labels, indices) * model.config.ancestor_loss_weight
    )
    torch.testing.assert_close(output.loss_dict["loss_ancestor"], expected)
    assert output.loss_dict["loss_ancestor"] > 0


def test_batch_without_targets_supervises_only_no_object(
    model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor
) -> None:
    empty_masks = [torch.zeros(0, HEIGHT, WIDTH)] * 2
    empty_classes = [torch.zeros(0, dtype=torch.long)] * 2
    with torch.no_grad():
        output = model(
            pixel_values,
            mask_labels=empty_masks,
            class_labels=empty_classes,
            ancestor_labels=[torch.zeros(0, 0)] * 2,
        )
    for key, value in output.loss_dict.items():
        if key.startswith("loss_cross_entropy"):
            assert value > 0
        else:
            assert value.item() == 0.0, key
    # Every query's target is no-object: the CE is the weighted mean of -log p(no-object).
    log_no_object = output.class_queries_logits.log_softmax(-1)[..., 1]
    expected = -log_no_object.mean() * model.config.class_weight
    torch.testing.assert_close(output.loss_dict["loss_cross_entropy"], expected)


def test_eager_attention_matches_sdpa(
    model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor
) -> None:
    assert model.backbone.vit.config._attn_implementation == "sdpa"
    with torch.no_grad():
        expected = model(pixel_values).masks_queries_logits
        model.set_attn_implementation("eager")
        try:
            assert model.backbone.vit.config._attn_implementation == "eager"
            actual = model(pixel_values).masks_queries_logits
        finally:
            model.set_attn_implementation("sdpa")
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients(pixel_values: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(tiny_sohes_config(adapter_init_values=0.1)).train()
    labels = dict(zip(("mask_labels", "class_labels", "ancestor_labels"), _labels(), strict=True))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        model(pixel_values, **labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # A child of every layer meant to be checkpointed counts its forward calls: a recomputed
    # layer runs its children again in the backward pass.
    layers = {
        "vit": model.backbone.vit.layers,
        "injector": model.backbone.injectors,
        "extractor": model.backbone.extractors,
        "pixel decoder encoder": model.pixel_decoder.encoder.layers,
        "mask decoder": model.transformer_module.decoder.layers,
    }
    calls = dict.fromkeys(layers, 0)

    def counter(kind: str):  # type: ignore[no-untyped-def]
        def hook(*_: object) -> None:
            calls[kind] += 1

        return hook

    for kind, group in layers.items():
        assert len(group) > 0, kind
        for layer in group:
            next(layer.children()).register_forward_hook(counter(kind))

    plain = gradients()
    plain_calls = dict(calls)
    calls.update(dict.fromkeys(calls, 0))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.backbone.vit.layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert calls == {kind: 2 * count for kind, count in plain_calls.items()}, (calls, plain_calls)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_labels_raise(model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor) -> None:
    mask_labels, class_labels, ancestor_labels = _labels()
    with pytest.raises(ValueError, match="ancestor_labels is required"):
        model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    with pytest.raises(ValueError, match="mask_labels"):
        model(
            pixel_values,
            mask_labels=mask_labels[:1],
            class_labels=class_labels,
            ancestor_labels=ancestor_labels,
        )
    with pytest.raises(ValueError, match=r"class_labels\[0\]"):
        bad = [torch.ones(4, dtype=torch.long), class_labels[1]]
        model(pixel_values, mask_labels=mask_labels, class_labels=bad, ancestor_labels=ancestor_labels)
    with pytest.raises(ValueError, match=r"ancestor_labels\[0\]"):
        bad_anc = [torch.zeros(3, 3), ancestor_labels[1]]
        model(pixel_values, mask_labels=mask_labels, class_labels=class_labels, ancestor_labels=bad_anc)
    with pytest.raises(ValueError, match="pixel_mask"):
        model(pixel_values, pixel_mask=torch.ones(2, HEIGHT, WIDTH + 1))


def test_initialisation_covers_parameterless_containers(model: SohesForHierarchicalSegmentation) -> None:
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        assert parameter.abs().max() < 50, name
    deformable = [
        m
        for m in model.modules()
        if isinstance(
            m, (MultiScaleDeformableAttention, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention)
        )
    ]
    assert len(deformable) == len(model.backbone.injectors) + len(model.backbone.extractors) + 1
    for module in deformable:
        heads = getattr(module, "num_heads", None) or module.n_heads
        levels = getattr(module, "num_levels", None) or module.n_levels
        points = getattr(module, "num_points", None) or module.n_points
        bias = module.sampling_offsets.bias.view(heads, levels, points, 2)
        # Head h points along angle 2*pi*h/heads (max-normalised), point p is p+1 steps out.
        angle = torch.arange(heads) * 2 * torch.pi / heads
        direction = torch.stack([angle.cos(), angle.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        for p in range(points):
            torch.testing.assert_close(bias[:, 0, p], direction * (p + 1))
        assert torch.count_nonzero(module.sampling_offsets.weight) == 0
        assert torch.count_nonzero(module.attention_weights.weight) == 0
    level_embed = model.pixel_decoder.level_embed
    assert 0.3 < level_embed.std().item() < 3.0
    decoder_layer = model.transformer_module.decoder.layers[0]
    assert torch.count_nonzero(decoder_layer.cross_attn.in_proj_bias) == 0
    assert model.criterion.empty_weight.tolist() == pytest.approx([1.0, model.config.no_object_weight])


@pytest.mark.parametrize("feature_size", [32, 64])
def test_mask_projection_has_mask2formers_c2_xavier_init(feature_size: int) -> None:
    """The per-pixel embedding conv gets detectron2's c2_xavier_fill, not the generic N(0, 0.02).

    c2_xavier_fill is kaiming_uniform(a=1): U(-b, b) with b = sqrt(3 / fan_in), so std
    1 / sqrt(fan_in); bias 0. With N(0, 0.02) every initial mask logit was ~0 and a tiny
    from-scratch model stayed on an all-empty-mask plateau (tests/training/test_overfit.py).
    """
    torch.manual_seed(0)
    config = tiny_sohes_config(feature_size=feature_size)
    model = SohesForHierarchicalSegmentation(config).eval()
    conv = model.pixel_decoder.mask_projection
    fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
    assert fan_in == feature_size
    bound = (3.0 / fan_in) ** 0.5
    weight = conv.weight.detach().flatten()
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.95 * bound  # uniform up to the bound, not a narrow normal
    assert weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.1)
    assert torch.count_nonzero(conv.bias) == 0
    # The effect: O(1) per-pixel embeddings and mask logits at initialisation (with N(0, 0.02)
    # both were ~0.08 / ~0.05 for this model).
    with torch.no_grad():
        output = model(torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)))
    assert output.mask_features.std().item() > 0.3
    assert output.masks_queries_logits.std().item() > 0.2


def test_loading_keeps_the_saved_mask_projection(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(tiny_sohes_config())
    with torch.no_grad():
        model.pixel_decoder.mask_projection.weight.fill_(0.5)
    model.save_pretrained(tmp_path)
    loaded = SohesForHierarchicalSegmentation.from_pretrained(tmp_path)
    assert torch.all(loaded.pixel_decoder.mask_projection.weight == 0.5)


def test_save_and_load_round_trip(
    model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor, tmp_path: Path
) -> None:
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = SohesForHierarchicalSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(pixel_values)
        actual = loaded(pixel_values)
    for key in ("class_queries_logits", "masks_queries_logits", "ancestor_logits", "query_features"):
        torch.testing.assert_close(actual[key], expected[key], msg=key)
    register_auto_classes()
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, SohesForHierarchicalSegmentation)
    assert auto.backbone.vit.config._attn_implementation == "sdpa"


def test_from_dino_loads_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(3)
    base = tiny_sohes_config()
    vit = ViTModel(ViTConfig(**base.backbone_config.to_dict()), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "dino")
    model = SohesForHierarchicalSegmentation.from_dino(tmp_path / "dino", config=base)
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(model.backbone.vit.state_dict()[key], value, msg=key)
    assert isinstance(model.config, SohesConfig)
    mismatch = tiny_sohes_config(backbone_config={"num_hidden_layers": 2}, interaction_indexes=[[0, 1]])
    with pytest.raises(ValueError, match="interaction_indexes"):
        SohesForHierarchicalSegmentation.from_dino(tmp_path / "dino", config=mismatch)


@pytest.mark.slow  # a fresh interpreter must import torch and transformers (10-50 s here)
def test_saved_directory_loads_as_remote_code(
    model: SohesForHierarchicalSegmentation, pixel_values: torch.Tensor, tmp_path: Path
) -> None:
    """save_pretrained copies the flat code files; a process without sohes_hf loads them."""
    register_auto_classes()
    model.save_pretrained(tmp_path / "repo")
    code_files = {p.name for p in (tmp_path / "repo").glob("*.py")}
    assert {
        "modeling_sohes.py",
        "configuration_sohes.py",
        "vit_adapter.py",
        "adapter_blocks.py",
    } <= code_files
    torch.save(pixel_values[:1].clone(), tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(model(pixel_values[:1]).masks_queries_logits, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path / 'repo')!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "assert not any(name.startswith('sohes_hf') for name in sys.modules)\n"
        f"pixels = torch.load({str(tmp_path / 'pixels.pt')!r})\n"
        "with torch.no_grad():\n"
        "    actual = model(pixels).masks_queries_logits\n"
        f"torch.testing.assert_close(actual, torch.load({str(tmp_path / 'expected.pt')!r}))\n"
    )
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_push_to_hub_uploads_the_sohes_model_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline: the Hub calls are replaced, the uploaded folder is inspected."""
    import json

    import transformers.utils.hub as hub

    model = SohesForHierarchicalSegmentation(tiny_sohes_config())
    model.save_pretrained(tmp_path / "trained")
    record = {"phase": "self-correction", "steps": 123, "global_batch_size": 8, "learning_rate": 4e-4}
    (tmp_path / "trained" / "training_record.json").write_text(json.dumps(record))
    loaded = SohesForHierarchicalSegmentation.from_pretrained(tmp_path / "trained")

    class FakeApi:
        def create_repo(self, repo_id: str, **kwargs: object) -> object:
            return type("Repo", (), {"repo_id": repo_id})()

    uploaded: dict[str, str] = {}

    def fake_upload(self: object, work_dir: str, repo_id: str, **kwargs: object) -> str:
        for name in os.listdir(work_dir):
            uploaded[name] = name
        uploaded["README"] = Path(work_dir, "README.md").read_text()
        return repo_id

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(type(loaded), "_upload_modified_files", fake_upload)
    loaded.push_to_hub("someone/sohes-tiny", evaluation={"SA-1B": {"AR": 33.3}})
    assert {"config.json", "model.safetensors", "training_record.json", "README.md"} <= set(uploaded)
    card = uploaded["README"]
    assert "someone/sohes-tiny" in card
    assert "self-correction" in card and "123" in card
    assert "33.3" in card
