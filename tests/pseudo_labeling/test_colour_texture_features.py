"""The colour-texture stand-in for DINO features: its kernel, its statistics, and what it achieves
end to end (``sohes explore`` + ``sohes evaluate`` on synthetic scenes with exact ground truth)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sohes_hf.pseudo_labeling.colour_texture_features import ColourTextureFeatureExtractor

SRC = str(Path(__file__).parents[2] / "src")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 255], from the CIE/IEC formulas."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_cosine_of_the_features_is_the_laplacian_kernel() -> None:
    extractor = ColourTextureFeatureExtractor(bandwidth=30.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 12)) * 30
    y = x + rng.normal(size=(3000, 12)) * rng.uniform(0, 25, (3000, 1))
    cosine = _cosine(extractor.embed(x.astype(np.float32)), extractor.embed(y.astype(np.float32)))
    kernel = np.exp(-np.linalg.norm(x - y, axis=1) / 30.0)
    assert np.abs(cosine - kernel).mean() < 0.05
    distance = np.linalg.norm(x - y, axis=1)
    # The thresholds 0.6 ... 0.1 map to descriptor distances 30 ln(1/t): 15 ... 69 Lab units.
    near, far = cosine[(distance > 10) & (distance < 13)], cosine[(distance > 75) & (distance < 90)]
    assert near.mean() > 0.6 and far.mean() < 0.1


def test_flat_colours_give_their_lab_and_separate() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32] = (200, 40, 30)
    image[:, 32:] = (30, 60, 190)
    extractor = ColourTextureFeatureExtractor(context_weight=0.0)
    descriptors = extractor.descriptors(image, grid=8)
    assert descriptors[3, 1, :3] == pytest.approx(_srgb_to_lab(np.array([200.0, 40.0, 30.0])), abs=0.5)
    assert np.abs(descriptors[3, 1, 3:9]).max() < 0.05  # flat area: no spread, no gradient
    features = extractor.extract([image], 64)[0]
    assert features.shape == (8, 8, 384) and features.dtype == np.float32
    assert _cosine(features[0, 0], features[7, 2]) > 0.9
    assert _cosine(features[0, 0], features[0, 7]) < 0.15


def test_a_zoomed_crop_is_described_by_its_own_pixels() -> None:
    """A local crop (section 3.1 step 2) zoomed 10x looks like the same area at native size."""
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64, 3), dtype=np.float64)
    image[:, :32] = (180, 150, 60)
    image[:, 32:] = (60, 90, 140)
    image = np.clip(image + rng.normal(0, 4, size=image.shape), 0, 255).astype(np.uint8)
    extractor = ColourTextureFeatureExtractor()
    native = extractor.extract([image], 64)[0]
    zoomed = extractor.extract([image[20:44, 4:28]], 256)[0].reshape(-1, 384).mean(0)
    assert _cosine(native[:, 1:3].reshape(-1, 384).mean(0), zoomed) > 0.9
    assert _cosine(native[:, 5:7].reshape(-1, 384).mean(0), zoomed) < 0.15


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_features"):
        ColourTextureFeatureExtractor(num_features=1)
    with pytest.raises(ValueError, match="bandwidth"):
        ColourTextureFeatureExtractor(bandwidth=0.0)
    with pytest.raises(ValueError, match="size"):
        ColourTextureFeatureExtractor().extract([np.zeros((8, 8, 3), np.uint8)], 12)
    with pytest.raises(ValueError, match="images"):
        ColourTextureFeatureExtractor().extract([np.zeros((8, 8), np.uint8)], 8)
    assert ColourTextureFeatureExtractor().extract([], 16).shape == (0, 2, 2, 384)


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sohes_hf.cli.main", "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, timeout=600)


def test_explore_with_colour_texture_finds_the_synthetic_hierarchy(tmp_path: Path) -> None:
    """Pseudo-labels of 4 synthetic scenes against their exact ground truth.

    Measured (benchmarks/benchmark_synthetic.py --parts explore --explore-images 4): AR 0.345 for
    this backbone, 0.108 for a random ViT-B/8-shaped ViT on the same images; 0.25 leaves margin.
    """
    data = tmp_path / "data"
    made = _sohes("data", "make-synthetic", "--num-images", "8", "--seed", "0", "--val-fraction", "0.5",
                  "--output", str(data))  # fmt: skip
    assert made.returncode == 0, made.stderr
    explored = _sohes("explore", str(data / "val" / "images"), "--backbone", "colour-texture", "--refiner",
                      "none", "--image-size", "512", "--output", str(tmp_path / "pseudo"), "--no-progress",
                      "--num-shards", "1", "--shard-index", "0")  # fmt: skip
    assert explored.returncode == 0, explored.stderr
    labels = tmp_path / "pseudo" / "pseudo_labels.shard-00000-of-00001.json"
    assert json.loads(labels.read_text())["info"]["backbone"] == "colour-texture"
    results = tmp_path / "results.json"
    evaluated = _sohes("evaluate", "--dataset", f"synthetic={data / 'val' / 'annotations.json'}",
                       "--predictions", str(labels), "--output", str(results))  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    payload = json.loads(results.read_text())
    assert payload["datasets"]["synthetic"]["num_images"] == 4
    assert payload["datasets"]["synthetic"]["AR"] > 0.25
    hierarchy = payload["hierarchy"]["synthetic"]
    assert min(hierarchy["AR_wholes"], hierarchy["AR_parts"], hierarchy["AR_subparts"]) > 0.2


def test_colour_texture_has_no_vit_feature_kinds(tmp_path: Path) -> None:
    result = _sohes("explore", str(tmp_path), "--backbone", "colour-texture", "--feature", "values",
                    "--output", str(tmp_path / "out"), "--refiner", "none")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sohes: error: --feature: only for ViT backbones" in result.stderr
