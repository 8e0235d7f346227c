"""DINO fidelity of the transformers ViT: LayerNorm epsilon of Hub configs, position-table rules.

The two routes to DINO weights are written as they exist: a Hub-style folder (the Hub config's
field set with ``layer_norm_eps`` 1e-12, weights under transformers-4 key names as the Hub's
``facebook/dino-vit*`` files hold them) and an original DINO ``.pth`` (DINO's key names, fused
``qkv``) converted with ``sohes convert``. The ViT has the shape of DINO ViT-S/8, the smallest
released DINO ViT with patch 8, since only a DINO architecture is corrected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests.pseudo_labeling.dino_reference import dino_layout_weights, hassod_keys
from transformers import ViTConfig, ViTModel

from sohes_hf.cli.main import main as sohes_main
from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.modeling.dino_vit import (
    apply_dino_layer_norm_eps,
    interpolate_position_embeddings,
    is_dino_vit_architecture,
)
from sohes_hf.modeling.testing_utils import tiny_dino_vit, tiny_sohes_config
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor, preprocess_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# facebook/dino-vits8's shape (DINO vit_small, patch 8) with the Hub config's fields.
HUB_STYLE_CONFIG = {
    "architectures": ["ViTModel"],
    "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 384,
    "image_size": 224,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "model_type": "vit",
    "num_attention_heads": 6,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "patch_size": 8,
    "qkv_bias": True,
    "torch_dtype": "float32",
    "transformers_version": "4.13.0.dev0",
}
# transformers 5 module names -> the transformers 4 names of the Hub's weight files.
_LEGACY_NAMES = (
    ("layers.", "encoder.layer."),
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)


@pytest.fixture(scope="module")
def dino_vit() -> ViTModel:
    """Random DINO ViT-S/8 weights (built with DINO's eps; only the weights are used)."""
    torch.manual_seed(0)
    config = {k: v for k, v in HUB_STYLE_CONFIG.items() if k not in ("architectures", "torch_dtype")}
    return ViTModel(ViTConfig(**{**config, "layer_norm_eps": 1e-6}), add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def routes(dino_vit: ViTModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Hub-style folder, ``sohes convert`` output of the original-layout .pth)."""
    root = tmp_path_factory.mktemp("dino_routes")
    hub = root / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps(HUB_STYLE_CONFIG, indent=2))
    legacy = {}
    for key, value in dino_vit.state_dict().items():
        for new, old in _LEGACY_NAMES:
            key = key.replace(new, old)
        legacy[key] = value.contiguous()
    save_file(legacy, hub / "model.safetensors", metadata={"format": "pt"})
    torch.save(dino_layout_weights(dino_vit), root / "dino_deitsmall8_pretrain.pth")
    converted = root / "converted"
    argv = [
        "convert",
        "--dino-checkpoint",
        str(root / "dino_deitsmall8_pretrain.pth"),
        "--output",
        str(converted),
    ]
    assert sohes_main(argv) == 0
    return hub, converted


def _flat_grey_image() -> np.ndarray:
    """Close to the ImageNet mean: LayerNorm inputs are mostly the small position embeddings,
    where the epsilon matters (real DINO features show it on any image)."""
    rng = np.random.default_rng(0)
    mean = np.array([124, 116, 104], dtype=np.int16)
    return (mean + rng.integers(-2, 3, (64, 64, 3))).astype(np.uint8)


def test_hub_config_and_converted_pth_give_the_same_features(
    routes: tuple[Path, Path], dino_vit: ViTModel, caplog: pytest.LogCaptureFixture
) -> None:
    hub, converted = routes
    assert json.loads((hub / "config.json").read_text())["layer_norm_eps"] == 1e-12
    assert json.loads((converted / "config.json").read_text())["layer_norm_eps"] == 1e-6
    images = [_flat_grey_image()]
    with caplog.at_level(logging.INFO, logger="sohes_hf"):
        from_hub = DinoFeatureExtractor(hub, device="cpu", precision="fp32")
    assert any("layer_norm_eps" in r.getMessage() and str(hub) in r.getMessage() for r in caplog.records)
    assert from_hub.model.config.layer_norm_eps == 1e-6
    assert all(m.eps == 1e-6 for m in from_hub.model.modules() if isinstance(m, torch.nn.LayerNorm))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sohes_hf"):
        from_pth = DinoFeatureExtractor(converted, device="cpu", precision="fp32")
    assert not any("layer_norm_eps" in r.getMessage() for r in caplog.records)  # nothing to correct
    hub_features = from_hub.extract(images, 64)
    pth_features = from_pth.extract(images, 64)
    assert np.abs(hub_features - pth_features).max() < 1e-5

    # Both equal DINO's own network (HASSOD's keys with DINO's eps 1e-6) ...
    pixels = torch.from_numpy(_pixels(images))
    reference = hassod_keys(dino_layout_weights(dino_vit), pixels, patch_size=8, num_heads=6)
    reference_map = reference.transpose(1, 2).reshape(1, 8, 8, -1).numpy()
    assert np.abs(hub_features - reference_map).max() < 1e-5
    # ... and the Hub config's 1e-12, as transformers builds it, is measurably different.
    as_built = ViTModel.from_pretrained(hub, add_pooling_layer=False)
    assert as_built.config.layer_norm_eps == 1e-12
    uncorrected = DinoFeatureExtractor(as_built, device="cpu", precision="fp32").extract(images, 64)
    assert np.abs(uncorrected - pth_features).max() > 1e-4


def _pixels(images: list[np.ndarray]) -> np.ndarray:
    return preprocess_images(images, 64).numpy()


def test_from_dino_corrects_the_hub_config_like_the_converted_pth(routes: tuple[Path, Path]) -> None:
    hub, converted = routes
    config = tiny_sohes_config(
        backbone_config=ViTConfig(**{k: v for k, v in HUB_STYLE_CONFIG.items() if k != "architectures"}),
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        adapter_num_heads=4,
    )
    from_hub = SohesForHierarchicalSegmentation.from_dino(hub, config=config).eval()
    from_pth = SohesForHierarchicalSegmentation.from_dino(converted, config=config).eval()
    for model in (from_hub, from_pth):
        assert model.config.backbone_config.layer_norm_eps == 1e-6
        assert all(m.eps == 1e-6 for m in model.backbone.vit.modules() if isinstance(m, torch.nn.LayerNorm))
    pixel_values = torch.from_numpy(_pixels([_flat_grey_image()]))
    with torch.no_grad():
        hub_tokens = from_hub.backbone.vit(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        pth_tokens = from_pth.backbone.vit(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    assert (hub_tokens - pth_tokens).abs().max().item() < 1e-5


def test_only_dino_shaped_configs_with_the_default_epsilon_change(dino_vit: ViTModel) -> None:
    torch.manual_seed(0)
    tiny = tiny_dino_vit()  # 1e-12 but not a DINO architecture: left as built
    assert not is_dino_vit_architecture(tiny.config)
    assert not apply_dino_layer_norm_eps(tiny, "tiny") and tiny.config.layer_norm_eps == 1e-12
    shape = {k: v for k, v in HUB_STYLE_CONFIG.items() if k not in ("architectures", "torch_dtype")}
    for patch, width, heads in ((8, 384, 6), (16, 384, 6), (8, 768, 12), (16, 768, 12)):
        config = ViTConfig(
            **{
                **shape,
                "patch_size": patch,
                "hidden_size": width,
                "num_attention_heads": heads,
                "intermediate_size": 4 * width,
            }
        )
        assert is_dino_vit_architecture(config), (patch, width)
    # A DINO-shaped model whose epsilon was chosen (here DINO's own) is left alone.
    assert not apply_dino_layer_norm_eps(dino_vit, "converted") and dino_vit.config.layer_norm_eps == 1e-6


def test_position_rules_keep_the_training_grid_and_reject_unknown_rules() -> None:
    table = torch.randn(1, 1 + 28 * 28, 4)
    for rule in ("dino", "vit_adapter"):
        assert interpolate_position_embeddings(table, (28, 28), rule) is table
        assert interpolate_position_embeddings(table, (128, 96), rule).shape == (1, 1 + 128 * 96, 4)
    with pytest.raises(ValueError, match="rule"):
        interpolate_position_embeddings(table, (32, 32), "bilinear")
    with pytest.raises(ValueError, match="square"):
        interpolate_position_embeddings(torch.randn(1, 1 + 12, 4), (4, 4), "dino")
