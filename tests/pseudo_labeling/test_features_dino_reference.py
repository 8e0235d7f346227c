"""Self-exploration features equal DINO's / HASSOD's own computation at the paper's sizes.

The reference (``dino_reference.py``) is DINO's ViT forward and HASSOD's ``ViTFeat`` key
extraction written out in plain torch from the same weights. The ViT is tiny in width and depth
but has ViT-B/8's patch size and 28 x 28 position table (224 px training size), so the position
interpolation at S = 1,024 and S' = 256 (paper appendix A) is exactly the one DINO ViT-B/8 does.
At 1,024 px (16,384 tokens) the ViT has one block, so the plain-torch reference needs no
16,384^2 attention (minutes on the 2-core test machine); two blocks elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.pseudo_labeling.dino_reference import dino_layout_weights, hassod_keys
from transformers import ViTModel

from sohes_hf.modeling.testing_utils import tiny_dino_vit
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor, preprocess_images

# The acceptance bound of the fidelity requirement; float32 reaches ~1e-6 here.
MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def vit() -> ViTModel:
    torch.manual_seed(0)
    return tiny_dino_vit(image_size=224, layer_norm_eps=1e-6)


@pytest.fixture(scope="module")
def one_block_vit() -> ViTModel:
    torch.manual_seed(1)
    return tiny_dino_vit(image_size=224, layer_norm_eps=1e-6, num_hidden_layers=1)


def _pixels(height: int, width: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _reference(vit: ViTModel, pixels: torch.Tensor) -> np.ndarray:
    """HASSOD's keys (B, C, h*w) as (B, h, w, C)."""
    keys = hassod_keys(
        dino_layout_weights(vit), pixels, patch_size=8, num_heads=vit.config.num_attention_heads
    )
    grid = (pixels.shape[-2] // 8, pixels.shape[-1] // 8)
    return keys.transpose(1, 2).reshape(len(pixels), *grid, -1).numpy()


def _transformers_keys(vit: ViTModel, pixels: torch.Tensor) -> np.ndarray:
    """Last-layer keys of transformers' own forward (its exact-grid position resize)."""
    captured: list[torch.Tensor] = []
    handle = vit.layers[-1].attention.k_proj.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.no_grad():
            vit(pixel_values=pixels, interpolate_pos_encoding=True)
    finally:
        handle.remove()
    grid = (pixels.shape[-2] // 8, pixels.shape[-1] // 8)
    return captured[0][:, 1:].reshape(len(pixels), *grid, -1).numpy()


@pytest.mark.parametrize(("size", "model"), [(1024, "one_block_vit"), (256, "vit")])
def test_keys_equal_hassod_at_paper_sizes(size: int, model: str, request: pytest.FixtureRequest) -> None:
    vit: ViTModel = request.getfixturevalue(model)
    rng = np.random.default_rng(size)
    images = [rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)]
    extractor = DinoFeatureExtractor(vit, feature_kind="keys", device="cpu", precision="fp32")
    features = extractor.extract(images, size)
    expected = _reference(vit, preprocess_images(images, size))
    assert features.shape == expected.shape == (1, size // 8, size // 8, 32)
    assert np.abs(features - expected).max() < MAX_ABS_DIFF
    # The comparison can fail: transformers' own resize is measurably different here.
    assert np.abs(_transformers_keys(vit, preprocess_images(images, size)) - expected).max() > 1e-3


@pytest.mark.parametrize("shape", [(200, 328), (203, 330)])
def test_keys_equal_hassod_on_non_square_inputs(vit: ViTModel, shape: tuple[int, int]) -> None:
    """Height and width get their own scale factor (and sizes not divisible by 8 are floored)."""
    pixels = _pixels(*shape, seed=1)
    extractor = DinoFeatureExtractor(vit, feature_kind="keys", device="cpu", precision="fp32")
    features = extractor.extract_pixels(pixels)
    expected = _reference(vit, pixels)
    assert features.shape == expected.shape == (1, shape[0] // 8, shape[1] // 8, 32)
    assert np.abs(features - expected).max() < MAX_ABS_DIFF


def test_training_size_is_untouched(vit: ViTModel) -> None:
    """At 224 px both rules use the table as trained: DINO, transformers and sohes-hf agree."""
    pixels = _pixels(224, 224, seed=2)
    features = DinoFeatureExtractor(vit, device="cpu", precision="fp32").extract_pixels(pixels)
    expected = _reference(vit, pixels)
    assert np.abs(features - expected).max() < MAX_ABS_DIFF
    assert np.abs(_transformers_keys(vit, pixels) - expected).max() < MAX_ABS_DIFF
