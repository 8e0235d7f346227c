"""Tests of the DINO patch-feature extractor (paper section 3.1 step 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import ViTModel

from sohes_hf.modeling.testing_utils import tiny_dino_vit
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor, preprocess_images


def _tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    return tiny_dino_vit()


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8),
        rng.integers(0, 256, (48, 48, 3), np.uint8),
    ]


def _manual_projections(model: ViTModel, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keys/queries/values of the last layer from its weights and its input hidden states."""
    with torch.no_grad():
        output = model(pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
        last_input = output.hidden_states[-2]  # input of the last block
        block = model.layers[-1]
        normed = F.layer_norm(
            last_input,
            (model.config.hidden_size,),
            block.layernorm_before.weight,
            block.layernorm_before.bias,
            model.config.layer_norm_eps,
        )
        attention = block.attention
        return {
            "keys": normed @ attention.k_proj.weight.T + attention.k_proj.bias,
            "queries": normed @ attention.q_proj.weight.T + attention.q_proj.bias,
            "values": normed @ attention.v_proj.weight.T + attention.v_proj.bias,
            "tokens": output.last_hidden_state,
        }


@pytest.mark.parametrize("kind", ["keys", "queries", "values", "tokens"])
def test_features_match_manual_computation(kind: str) -> None:
    model = _tiny_vit()
    extractor = DinoFeatureExtractor(model, feature_kind=kind, device="cpu", batch_size=1)
    images = _images()
    features = extractor.extract(images, size=64)
    assert features.shape == (2, 8, 8, 32)
    expected = _manual_projections(model, preprocess_images(images, 64))[kind][:, 1:]
    np.testing.assert_allclose(features, expected.reshape(2, 8, 8, 32).numpy(), rtol=1e-4, atol=1e-5)


def test_preprocess_resizes_and_normalises_like_imagenet() -> None:
    image = np.full((20, 30, 3), 255, dtype=np.uint8)
    pixels = preprocess_images([image], 16)
    assert pixels.shape == (1, 3, 16, 16)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels[0, :, 5, 5].numpy(), expected, rtol=1e-5)


def test_loads_saved_model_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny_vit()
    model.save_pretrained(tmp_path / "vit")
    extractor = DinoFeatureExtractor(tmp_path / "vit", device="cpu")
    assert extractor.model.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(
        extractor.extract(_images(), 64),
        DinoFeatureExtractor(model, device="cpu").extract(_images(), 64),
        rtol=1e-5,
        atol=1e-6,
    )
    assert extractor.patch_size == 8 and extractor.feature_dim == 32


def test_bad_arguments_raise() -> None:
    model = _tiny_vit()
    with pytest.raises(ValueError, match="feature_kind"):
        DinoFeatureExtractor(model, feature_kind="cls")
    with pytest.raises(ValueError, match="precision"):
        DinoFeatureExtractor(model, precision="fp8")
    extractor = DinoFeatureExtractor(model, device="cpu")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        extractor.extract(_images(), 60)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        extractor.extract([np.zeros((8, 8), dtype=np.uint8)], 64)
    with pytest.raises(TypeError, match="model"):
        DinoFeatureExtractor(torch.nn.Linear(2, 2))
    assert extractor.extract([], 64).shape == (0, 8, 8, 32)
