"""How far transformers' ViT is from DINO's own ViT, and what sohes-hf computes (random weights).

Prints the max |difference| of last-layer keys (HASSOD's self-exploration feature) against DINO's
ViT forward with HASSOD's key extraction, written out in plain torch
(``tests/pseudo_labeling/dino_reference.py``), for:

1. the position-table resize at the paper's sizes S = 1,024 and S' = 256 and a non-square input:
   transformers' ``interpolate_pos_encoding=True`` (what sohes-hf did before) and
   ``DinoFeatureExtractor`` (DINO's rule), on a patch-8 ViT with ViT-B/8's 28 x 28 table;
2. the LayerNorm epsilon: a DINO ViT-B/8-shaped model built as the Hub config says (1e-12) and
   as DINO builds it (1e-6), and what ``DinoFeatureExtractor`` makes of a Hub-style folder.

    python benchmarks/benchmark_dino_fidelity.py                  # tiny-width ViT, ~1 min on CPU
    python benchmarks/benchmark_dino_fidelity.py --arch vitb8 --sizes 256 224
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.*

from tests.pseudo_labeling.dino_reference import dino_layout_weights, hassod_keys

from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor

VITB8 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def build_vit(shape: dict[str, int], layer_norm_eps: float, seed: int = 0) -> ViTModel:
    torch.manual_seed(seed)
    config = ViTConfig(patch_size=8, image_size=224, qkv_bias=True, layer_norm_eps=layer_norm_eps, **shape)
    return ViTModel(config, add_pooling_layer=False).eval()


def reference_keys(vit: ViTModel, pixels: torch.Tensor, layer_norm_eps: float = 1e-6) -> np.ndarray:
    heads = vit.config.num_attention_heads
    keys = hassod_keys(dino_layout_weights(vit), pixels, 8, heads, layer_norm_eps)
    return keys.transpose(1, 2).reshape(len(pixels), pixels.shape[-2] // 8, pixels.shape[-1] // 8, -1).numpy()


def transformers_keys(vit: ViTModel, pixels: torch.Tensor) -> np.ndarray:
    captured: list[torch.Tensor] = []
    handle = vit.layers[-1].attention.k_proj.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        vit(pixel_values=pixels, interpolate_pos_encoding=True)
    handle.remove()
    return captured[0][:, 1:].reshape(len(pixels), pixels.shape[-2] // 8, pixels.shape[-1] // 8, -1).numpy()


def image_pixels(height: int, width: int) -> torch.Tensor:
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - mean) / std


def position_rule(shape: dict[str, int], sizes: list[tuple[int, int]]) -> None:
    vit = build_vit(shape, 1e-6)
    extractor = DinoFeatureExtractor(vit, device="cpu", precision="fp32")
    width, layers = shape["hidden_size"], shape["num_hidden_layers"]
    print(f"position table resize (ViT width {width}, {layers} layers, patch 8)")
    print(f"{'input':>11}  {'max|ref|':>9}  {'transformers (before)':>22}  {'sohes-hf (after)':>17}")
    for height, width in sizes:
        pixels = image_pixels(height, width)
        reference = reference_keys(vit, pixels)
        before = np.abs(transformers_keys(vit, pixels) - reference).max()
        after = np.abs(extractor.extract_pixels(pixels) - reference).max()
        scale = np.abs(reference).max()
        print(f"{height:>5}x{width:<5}  {scale:9.3g}  {before:22.2e}  {after:17.2e}")


def grey_pixels(size: int) -> torch.Tensor:
    """Near the ImageNet mean: LayerNorm sees mostly the small position embeddings, where the
    epsilon shows with random weights (trained DINO weights show it on any image)."""
    rng = np.random.default_rng(size)
    image = np.array([124, 116, 104]) + rng.integers(-2, 3, (size, size, 3))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - mean) / std


def layer_norm_epsilon(shape: dict[str, int], size: int) -> None:
    dino = build_vit(shape, 1e-6)
    hub_built = build_vit(shape, 1e-12)  # same weights (same seed), the Hub config's epsilon
    with tempfile.TemporaryDirectory() as folder:
        hub_built.save_pretrained(folder)
        assert json.loads((Path(folder) / "config.json").read_text())["layer_norm_eps"] == 1e-12
        loaded = DinoFeatureExtractor(folder, device="cpu", precision="fp32")
    as_built = DinoFeatureExtractor(hub_built, device="cpu", precision="fp32")
    converted = DinoFeatureExtractor(dino, device="cpu", precision="fp32")
    width, layers = shape["hidden_size"], shape["num_hidden_layers"]
    print(f"\nlayer_norm_eps (ViT width {width}, {layers} layers, {size} px): max |keys - DINO's|")
    columns = ("Hub 1e-12 as built (before)", "Hub folder via sohes-hf (after)", ".pth")
    print(f"{'image':>10}  {columns[0]:>28}  {columns[1]:>32}  {columns[2]:>9}")
    for name, pixels in (("random", image_pixels(size, size)), ("near-grey", grey_pixels(size))):
        reference = reference_keys(dino, pixels)
        before, after, pth = (
            np.abs(extractor.extract_pixels(pixels) - reference).max()
            for extractor in (as_built, loaded, converted)
        )
        print(f"{name:>10}  {before:28.2e}  {after:32.2e}  {pth:9.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("tiny", "vitb8"), default="tiny", help="ViT for the position part")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 256], help="square input sizes")
    parser.add_argument("--non-square", type=int, nargs=2, default=[200, 328], metavar=("H", "W"))
    parser.add_argument("--eps-size", type=int, default=224, help="input size of the epsilon part (ViT-B/8)")
    args = parser.parse_args()
    sizes = [(s, s) for s in args.sizes] + [tuple(args.non_square)]
    position_rule(VITB8 if args.arch == "vitb8" else TINY, sizes)  # type: ignore[arg-type]
    layer_norm_epsilon(VITB8, args.eps_size)


if __name__ == "__main__":
    main()
