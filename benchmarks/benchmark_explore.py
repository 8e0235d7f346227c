"""Speed of self-exploration (paper section 3.1): prints figures, asserts nothing.

Three measurements:

1. ``non-network``: everything but the neural networks for one S x S = 1,024 x 1,024 image
   (clustering at 6 thresholds, pool + NMS, local re-clustering of small regions, mask resizing,
   hierarchy). The backbone is replaced by precomputed 768-D features (ViT-B width) made from a
   synthetic scene of coloured shapes projected through a random matrix plus noise, and the
   refiner is the identity; target < 1 s per image on CPU. Besides ``explore_image``'s own
   wall-clock timings it prints the CPU time (``time.process_time``) of each step, measured
   by wrapping the step functions (:class:`StepTimer`).
2. ``tiny``: the whole job loop (image decode excluded) with a tiny random ViT on CPU, images/s.
3. ``vitb8``: DINO ViT-B/8-sized backbone (random weights from ``ViTConfig``, nothing
   downloaded) at 1,024 px on a GPU when one is available: backbone seconds per image.

Also ``pool``: the region pool and its NMS (both exact paths) on ~1,600 regions, and ``workers``:
the explore job (``run_explore_job``: PNG decode, journal and COCO file included) on 1,024 px
images with the stand-in backbone of (1), images/s for each ``--workers`` value (threads
exploring images concurrently), checking that every value writes the same file.

Usage: ``python benchmarks/benchmark_explore.py [--parts non-network,pool,tiny,vitb8,workers] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
        self.seed = seed
        self._noise_fields: dict[int, np.ndarray] = {}

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        grid = size // self.patch_size
        out = []
        for image in images:
            small = (
                cv2.resize(image, (grid, grid), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
            )
            features = small @ self.projection
            # One white-noise field per size, shifted by a hash of the image: the same image gets
            # the same features whatever the order of the calls (worker threads reorder them), and
            # drawing fresh noise per call would cost more than the CPU steps being measured.
            if grid not in self._noise_fields:
                rng = np.random.default_rng([self.seed, grid])
                self._noise_fields[grid] = self.noise * rng.normal(size=features.shape).astype(np.float32)
            shift = zlib.crc32(image.tobytes()) % (grid * grid)
            features += np.roll(self._noise_fields[grid].reshape(grid * grid, -1), shift, axis=0).reshape(
                features.shape
            )
            out.append(features)
        return np.stack(out) if out else np.zeros((0, grid, grid, self.projection.shape[1]), np.float32)


#: Non-network steps timed by :class:`StepTimer`: (label, module, attribute) of the function
#: that does the step. ``explore_image`` calls them through these module attributes.
TIMED_STEPS: tuple[tuple[str, str, str], ...] = (
    ("merge kernel (global)", "self_exploration", "agglomerative_merge"),
    ("region pool (RLE + exact dedup)", "self_exploration", "regions_from_label_maps"),
    ("pool NMS", "self_exploration", "deduplicate_regions"),
    ("crop boxes", "local_reclustering", "mask_boxes_xywh"),
    ("crop windows", "local_reclustering", "crop_window"),
    ("crop extraction", "local_reclustering", "crop_original"),
    ("crop merges (all crops)", "local_reclustering", "agglomerative_merge_batch"),
    ("complete_subregions", "local_reclustering", "complete_subregions"),
    ("subregion run lengths (window_run_lengths)", "local_reclustering", "window_run_lengths"),
    ("subregion RLE compression", "local_reclustering", "encode_rle_counts"),
    ("_remove_duplicates NMS", "self_exploration", "_remove_duplicates"),
    ("resize to original size", "self_exploration", "_resize_masks"),
    ("clean-up (area, corners)", "self_exploration", "clean_masks"),
    ("hierarchy", "self_exploration", "_hierarchy"),
    ("final areas + boxes", "self_exploration", "mask_areas"),
    ("final areas + boxes", "self_exploration", "mask_boxes_xywh"),
    ("refine_and_filter (identity; 'network')", "self_exploration", "refine_and_filter"),
)


class StepTimer:
    """Accumulates the CPU time (``time.process_time``) of each step in :data:`TIMED_STEPS`.

    Used as a context manager, it replaces each step's module attribute by a wrapper that adds
    the CPU seconds of the call to ``seconds[label]`` and restores the attributes on exit. A
    timed step called from inside another (``mask_areas`` within ``_resize_masks``) counts for
    the outer one only, so the steps add up without double counting. CPU time rather than wall
    time because the development VM is shared: other jobs' load moves wall times by up to ~50%
    but a process's CPU time much less.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {label: 0.0 for label, _, _ in TIMED_STEPS}
        self.calls: dict[str, int] = {label: 0 for label, _, _ in TIMED_STEPS}
        self._saved: list[tuple[object, str, object]] = []
        self._active = False

    def __enter__(self) -> StepTimer:
        import importlib

        for label, module_name, attribute in TIMED_STEPS:
            module = importlib.import_module(f"sohes_hf.pseudo_labeling.{module_name}")
            original = getattr(module, attribute)
            self._saved.append((module, attribute, original))
            setattr(module, attribute, self._wrap(label, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, attribute, original in reversed(self._saved):
            setattr(module, attribute, original)
        self._saved.clear()

    def _wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._active:
                return function(*args, **kwargs)
            self._active = True
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.process_time() - start
                self.calls[label] += 1
                self._active = False

        return timed


class _CpuTimedExtractor:
    """Wraps an extractor to add the CPU time of its ``extract`` calls to ``seconds``."""

    def __init__(self, extractor: ProjectedColorFeatures) -> None:
        self.extractor = extractor
        self.patch_size = extractor.patch_size
        self.seconds = 0.0

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        start = time.process_time()
        try:
            return self.extractor.extract(images, size)
        finally:
            self.seconds += time.process_time() - start


def bench_non_network(repeats: int) -> None:
    config = SelfExplorationConfig(refiner="none")
    extractor = ProjectedColorFeatures()
    refiner = IdentityRefiner()
    explore_image(
        synthetic_scene(256, 99), extractor, refiner, SelfExplorationConfig(image_size=256, refiner="none")
    )
    rows = []
    steps: list[dict[str, float]] = []
    calls: list[dict[str, int]] = []
    cpu_totals: list[float] = []
    for seed in range(repeats):
        image = synthetic_scene(1024, seed)
        features = extractor.extract([image], 1024)[0]
        timed_extractor = _CpuTimedExtractor(extractor)
        with StepTimer() as timer:
            start = time.process_time()
            labels = explore_image(image, timed_extractor, refiner, config, global_features=features)
            cpu = time.process_time() - start
        refine = timer.seconds["refine_and_filter (identity; 'network')"]
        cpu_totals.append(cpu - timed_extractor.seconds - refine)
        steps.append(timer.seconds)
        calls.append(timer.calls)
        rows.append(labels)
    t = [r.timings for r in rows]
    print("== non-network time per 1024 x 1024 image (CPU, 768-D features, refiner none) ==")
    print(f"  wall-clock timings of explore_image (median of {repeats}):")
    for name in ("global_clustering", "local_reclustering", "resize", "cleanup", "hierarchy"):
        print(f"    {name:20s} {statistics.median(getattr(x, name) for x in t):7.3f} s")
    print(f"    {'non_network total':20s} {statistics.median(x.non_network for x in t):7.3f} s")
    crop_features = statistics.median(x.local_features for x in t)
    print(f"    (stand-in feature time of the crops: {crop_features:.3f} s, excluded)")
    print(f"  CPU time (time.process_time) per step, median of {repeats} images [calls, first image]:")
    labels_seen: list[str] = []
    for label, _, _ in TIMED_STEPS:
        if label not in labels_seen:
            labels_seen.append(label)
    for label in labels_seen:
        value = statistics.median(s[label] for s in steps)
        print(f"    {label:42s} {value:7.3f} s  [{calls[0][label]}]")
    refine_label = "refine_and_filter (identity; 'network')"
    glue = [
        total - sum(v for k, v in s.items() if k != refine_label)
        for total, s in zip(cpu_totals, steps, strict=True)
    ]
    print(f"    {'other (loops and glue between the steps)':42s} {statistics.median(glue):7.3f} s")
    merges = [s["merge kernel (global)"] + s["crop merges (all crops)"] for s in steps]
    print(f"    {'non-network CPU total':42s} {statistics.median(cpu_totals):7.3f} s")
    others = [total - merge for total, merge in zip(cpu_totals, merges, strict=True)]
    print(f"    {'  of which outside the merges':42s} {statistics.median(others):7.3f} s")
    c = rows[0].counts
    print(
        f"  masks: pool {c.global_regions} -> NMS {c.after_nms} -> small {c.small_regions} -> "
        f"local subregions {c.local_subregions} -> refined {c.after_refinement} -> final {c.after_cleanup} "
        "(first image)"
    )


def bench_pool(repeats: int) -> None:
    """Region pool and its NMS on the six label maps of a 128 x 128 smooth-noise grid.

    Smooth noise (gaussian-filtered, sigma 2, 768-D, as in ``benchmark_merge.py``) gives
    ~1,600 distinct regions, the hard case for NMS; both NMS paths are timed on the same pool
    and must keep the same regions.
    """
    from scipy import ndimage

    from sohes_hf.pseudo_labeling.merge import agglomerative_merge
    from sohes_hf.pseudo_labeling.region_pool import deduplicate_regions, regions_from_label_maps

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((128, 128, 768)).astype(np.float32)
    grid = ndimage.gaussian_filter(noise, sigma=(2.0, 2.0, 0)).astype(np.float32)
    maps = agglomerative_merge(grid, SelfExplorationConfig().merge_thresholds)

    def cpu(function: Callable[[], Any]) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(repeats):
            start = time.process_time()
            result = function()
            times.append(time.process_time() - start)
        return statistics.median(times), result

    pool_seconds, pool = cpu(lambda: regions_from_label_maps(maps, (1024, 1024)))
    nested_seconds, kept = cpu(lambda: deduplicate_regions(pool, 0.9))
    generic = dataclasses.replace(pool, containers=None)
    generic_seconds, generic_kept = cpu(lambda: deduplicate_regions(generic, 0.9))
    same = [r["counts"] for r in kept.rles] == [r["counts"] for r in generic_kept.rles]
    print(
        f"== region pool at 1024 x 1024 from a 128 x 128 smooth-noise grid (CPU time, median of {repeats}) =="
    )
    print(
        f"  RLE + exact dedup: {pool_seconds * 1e3:.1f} ms for {len(pool)} regions "
        f"(nested: {pool.containers is not None})"
    )
    print(
        f"  NMS 0.9, containment chains: {nested_seconds * 1e3:.2f} ms; "
        f"pairwise mask IoU: {generic_seconds * 1e3:.1f} ms"
    )
    print(f"  kept {len(kept)} regions; both paths keep the same regions: {same}")


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


def bench_workers(num_images: int, workers_values: Sequence[int]) -> None:
    from PIL import Image

    from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, run_explore_job

    extractor = ProjectedColorFeatures()
    explore_image(  # warm-up (numba)
        synthetic_scene(256, 99),
        extractor,
        IdentityRefiner(),
        SelfExplorationConfig(image_size=256, refiner="none"),
    )
    print(f"== explore job, {num_images} images at 1024 px, stand-in 768-D features, refiner none ==")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        for seed in range(num_images):
            Image.fromarray(synthetic_scene(1024, seed)).save(root / "images" / f"{seed:03d}.png")
        files = []
        for workers in workers_values:
            job = ExploreJobConfig(
                inputs=(str(root / "images"),),
                output_dir=str(root / f"out_{workers}"),
                exploration=SelfExplorationConfig(refiner="none"),
                workers=workers,
            )
            start, cpu_start = time.perf_counter(), time.process_time()
            summary = run_explore_job(job, extractor, IdentityRefiner(), show_progress=False)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            files.append(summary.paths.annotations)
            print(
                f"  workers {workers}: {num_images / seconds:.2f} images/s "
                f"({seconds / num_images:.2f} s/image wall, {cpu / num_images:.2f} s/image CPU), "
                f"{summary.masks_per_image:.1f} masks/image"
            )
        same = all(filecmp.cmp(files[0], other, shallow=False) for other in files[1:])
        print(f"  same output file for every workers value: {same}")


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
    parser.add_argument("--parts", default="non-network,pool,tiny,vitb8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--tiny-image-size", type=int, default=256)
    parser.add_argument("--workers", default="1,2", help="workers values of the 'workers' part")
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "non-network" in parts:
        bench_non_network(args.repeats)
    if "pool" in parts:
        bench_pool(args.repeats)
    if "tiny" in parts:
        bench_tiny(args.num_images, args.tiny_image_size)
    if "vitb8" in parts:
        bench_vitb8(args.repeats)
    if "workers" in parts:
        bench_workers(args.num_images, [int(value) for value in args.workers.split(",")])


if __name__ == "__main__":
    main()
