"""Speed of self-exploration (paper section 3.1): prints figures, asserts nothing.

Three measurements:

1. ``non-network``: everything but the neural networks for one S x S = 1,024 x 1,024 image
   (clustering at 6 thresholds, pool + NMS, local re-clustering of small regions, mask resizing,
   hierarchy). The backbone is replaced by precomputed 768-D features (ViT-B width) made from a
   synthetic scene of coloured shapes projected through a random matrix plus noise, and the
   refiner is the identity; target < 1 s per image on CPU.
2. ``tiny``: the whole job loop (image decode excluded) with a tiny random ViT on CPU, images/s.
3. ``vitb8``: DINO ViT-B/8-sized backbone (random weights from ``ViTConfig``, nothing
   downloaded) at 1,024 px on a GPU when one is available: backbone seconds per image.

Usage: ``python benchmarks/benchmark_explore.py [--parts non-network,tiny,vitb8] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
from sohes_hf.pseudo_labeling.self_exploration import explore_image


def synthetic_scene(size: int, seed: int) -> np.ndarray:
    """An RGB scene of random rectangles and ellipses of many sizes (uint8, size x size)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    for _ in range(60):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(4, size // 4)), int(rng.integers(4, size // 4)))
        if rng.random() < 0.5:
            cv2.ellipse(image, center, axes, float(rng.integers(0, 180)), 0, 360, color, -1)
        else:
            x, y = center
            cv2.rectangle(image, (x, y), (x + axes[0], y + axes[1]), color, -1)
    return image


class ProjectedColorFeatures:
    """A stand-in backbone: patch colours projected to ``dim`` channels plus noise (no network)."""

    patch_size = 8

    def __init__(self, dim: int = 768, noise: float = 0.15, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.projection = rng.normal(size=(3, dim)).astype(np.float32)
        self.noise = noise
        self.rng = rng

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        grid = size // self.patch_size
        out = []
        for image in images:
            small = (
                cv2.resize(image, (grid, grid), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
            )
            features = small @ self.projection
            features += self.noise * self.rng.normal(size=features.shape).astype(np.float32)
            out.append(features)
        return np.stack(out) if out else np.zeros((0, grid, grid, self.projection.shape[1]), np.float32)


def bench_non_network(repeats: int) -> None:
    config = SelfExplorationConfig(refiner="none")
    extractor = ProjectedColorFeatures()
    refiner = IdentityRefiner()
    explore_image(
        synthetic_scene(256, 99), extractor, refiner, SelfExplorationConfig(image_size=256, refiner="none")
    )
    rows = []
    for seed in range(repeats):
        image = synthetic_scene(1024, seed)
        features = extractor.extract([image], 1024)[0]
        labels = explore_image(image, extractor, refiner, config, global_features=features)
        rows.append(labels)
    t = [r.timings for r in rows]
    print("== non-network time per 1024 x 1024 image (CPU, 768-D features, refiner none) ==")
    for name in ("global_clustering", "local_reclustering", "resize", "hierarchy"):
        print(f"  {name:20s} {statistics.median(getattr(x, name) for x in t):7.3f} s (median of {repeats})")
    print(f"  {'non_network total':20s} {statistics.median(x.non_network for x in t):7.3f} s")
    crop_features = statistics.median(x.local_features for x in t)
    print(f"  (stand-in feature time of the crops: {crop_features:.3f} s, excluded)")
    c = rows[0].counts
    print(
        f"  masks: pool {c.global_regions} -> NMS {c.after_nms} -> small {c.small_regions} -> "
        f"local subregions {c.local_subregions} -> final {c.after_refinement} (first image)"
    )


def bench_tiny(num_images: int, image_size: int) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        ),
        add_pooling_layer=False,
    )
    extractor = DinoFeatureExtractor(vit, device="cpu", batch_size=4)
    config = SelfExplorationConfig(image_size=image_size, refiner="none")
    images = [synthetic_scene(image_size, seed) for seed in range(num_images)]
    explore_image(images[0], extractor, IdentityRefiner(), config)  # warm-up (numba, torch)
    start = time.perf_counter()
    total_masks = 0
    for index in range(0, num_images, 4):
        batch = images[index : index + 4]
        features = extractor.extract(batch, image_size)
        for image, f in zip(batch, features, strict=True):
            total_masks += len(explore_image(image, extractor, IdentityRefiner(), config, global_features=f))
    seconds = time.perf_counter() - start
    print(f"== tiny random ViT end to end on CPU, S={image_size}, refiner none ==")
    print(
        f"  {num_images} images in {seconds:.2f} s: {num_images / seconds:.2f} images/s, "
        f"{total_masks / num_images:.1f} masks/image (random net: not meaningful)"
    )


def bench_vitb8(repeats: int) -> None:
    if not torch.cuda.is_available():
        print("== ViT-B/8 at 1024 px: skipped (no GPU) ==")
        return
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(patch_size=8, image_size=224, layer_norm_eps=1e-12), add_pooling_layer=False)
    extractor = DinoFeatureExtractor(vit, device="cuda", batch_size=4)
    images = [synthetic_scene(1024, seed) for seed in range(4)]
    extractor.extract(images[:1], 1024)
    torch.cuda.synchronize()
    for batch in (1, 4):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            extractor.extract(images[:batch], 1024)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / batch)
        print(
            f"== ViT-B/8 keys at 1024 px on {torch.cuda.get_device_name()} ({extractor.autocast_dtype}), "
            f"batch {batch}: {statistics.median(times):.3f} s/image =="
        )
    crops = [synthetic_scene(256, seed) for seed in range(64)]
    start = time.perf_counter()
    extractor.extract(crops, 256)
    torch.cuda.synchronize()
    print(f"   64 local crops at 256 px: {(time.perf_counter() - start):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="non-network,tiny,vitb8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--tiny-image-size", type=int, default=256)
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "non-network" in parts:
        bench_non_network(args.repeats)
    if "tiny" in parts:
        bench_tiny(args.num_images, args.tiny_image_size)
    if "vitb8" in parts:
        bench_vitb8(args.repeats)


if __name__ == "__main__":
    main()
