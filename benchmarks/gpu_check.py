"""One-shot check of the speeds users wait for, on one GPU with random weights: prints figures.

Four parts, each printed as soon as it ends (nothing is downloaded; every model has random
weights of the real architecture):

1. ``explore``: self-exploration (paper section 3.1) seconds per 1,024 px image with a DINO
   ViT-B/8-sized backbone and CascadePSP refinement in batches (L = 900), both in bf16, split
   into network and non-network time, and the number of masks refined;
2. ``training``: self-instruction steps (paper section 3.2: forward, backward, Adan) at 1,024 px,
   batch 2, bf16 autocast: images/s and peak CUDA memory, without and with activation
   checkpointing (``model.activation_checkpointing_enable()``);
3. ``pipeline``: the hierarchical-segmentation pipeline at 1,024 px, images/s per stage;
4. ``metric``: class-agnostic mask AR (``evaluate_class_agnostic``) on a synthetic set.

The paper sizes are meant to fit in 8 minutes on one H100 or H200 (each part prints its own time;
``--parts`` runs a subset). ``--cpu-smoke`` (automatic
without CUDA) runs every part at toy sizes, in seconds on a CPU, so the script itself is tested
(tests/test_benchmarks_gpu_check.py); its figures mean nothing.

    python benchmarks/gpu_check.py                      # one GPU, paper sizes
    python benchmarks/gpu_check.py --parts explore,training
    python benchmarks/gpu_check.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

PARTS = ("explore", "training", "pipeline", "metric")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything the two modes differ in."""

    explore_size: int
    explore_images: int
    warmup: bool
    vit: dict[str, int]
    refiner_side: int
    refiner_fast: bool
    refiner_batch: int
    precision: str
    train_model: str
    train_size: int
    train_batch: int
    train_steps: int
    pipeline_model: str
    pipeline_size: int
    pipeline_repeats: int
    metric_images: int
    metric_gt: int
    metric_predictions: int
    metric_size: int


GPU_SIZES = Sizes(
    explore_size=1024,
    explore_images=3,
    warmup=True,
    vit={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    refiner_side=900,
    refiner_fast=False,
    refiner_batch=8,
    precision="bf16",
    train_model="vitb8",
    train_size=1024,
    train_batch=2,
    train_steps=5,
    pipeline_model="vitb8",
    pipeline_size=1024,
    pipeline_repeats=5,
    metric_images=500,
    metric_gt=30,
    metric_predictions=300,
    metric_size=256,
)
CPU_SMOKE_SIZES = Sizes(
    explore_size=24,  # a 3 x 3 patch grid: ~10 masks, each a ResNet-50 pass of ~0.3 s on one core
    explore_images=1,
    warmup=False,
    vit={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    refiner_side=16,
    refiner_fast=True,
    refiner_batch=8,
    precision="fp32",  # CPU bf16 is emulated: slower, not faster
    train_model="tiny",
    train_size=64,
    train_batch=2,
    train_steps=1,
    pipeline_model="tiny",
    pipeline_size=64,
    pipeline_repeats=1,
    metric_images=2,
    metric_gt=3,
    metric_predictions=5,
    metric_size=32,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return "n/a on CPU"


def check_explore(sizes: Sizes, device: torch.device) -> None:
    from benchmark_explore import synthetic_scene
    from segmentation_refinement.models.psp.pspnet import RefinementModule
    from transformers import ViTConfig, ViTModel

    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
    from sohes_hf.pseudo_labeling.refinement import CascadePSPRefiner
    from sohes_hf.pseudo_labeling.self_exploration import explore_image

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(patch_size=8, image_size=224, layer_norm_eps=1e-12, **sizes.vit), add_pooling_layer=False
    )
    extractor = DinoFeatureExtractor(vit, device=device, precision=sizes.precision, batch_size=8)
    config = SelfExplorationConfig(
        image_size=sizes.explore_size,
        min_image_side=min(32, sizes.explore_size),
        refinement_max_side=sizes.refiner_side,
        refinement_fast=sizes.refiner_fast,
        refinement_batch_size=sizes.refiner_batch,
        refinement_precision=sizes.precision,
    )
    with tempfile.TemporaryDirectory() as folder:
        state = {f"module.{k}": v for k, v in RefinementModule().state_dict().items()}
        torch.save(state, Path(folder) / "model")
        refiner = CascadePSPRefiner(
            weights_folder=folder,
            device=str(device),
            max_side=sizes.refiner_side,
            fast=sizes.refiner_fast,
            batch_size=sizes.refiner_batch,
            precision=sizes.precision,
        )
    images = [synthetic_scene(sizes.explore_size, seed) for seed in range(sizes.explore_images + 1)]
    if sizes.warmup:
        explore_image(images[0], extractor, refiner, config)  # numba, cuDNN, allocator
    rows = []
    for image in images[1:]:
        _sync(device)
        start = time.perf_counter()
        labels = explore_image(image, extractor, refiner, config)
        _sync(device)
        rows.append((time.perf_counter() - start, labels))
    median = statistics.median(seconds for seconds, _ in rows)
    timings = [labels.timings for _, labels in rows]
    refined = statistics.median(labels.counts.after_local for _, labels in rows)
    print(
        f"explore: {median:.2f} s/image at {sizes.explore_size} px (median of {len(rows)}): backbone "
        f"{statistics.median(t.global_features + t.local_features for t in timings):.2f} s, CascadePSP "
        f"{statistics.median(t.refinement for t in timings):.2f} s for {refined:.0f} masks "
        f"(L={sizes.refiner_side}, batch {sizes.refiner_batch}, {sizes.precision}), non-network "
        f"{statistics.median(t.non_network for t in timings):.2f} s"
    )


def check_training(sizes: Sizes, device: torch.device) -> None:
    from benchmark_training import _synthetic_batch, _vit_b8_config

    from sohes_hf.modeling import SohesForHierarchicalSegmentation
    from sohes_hf.modeling.testing_utils import tiny_sohes_config
    from sohes_hf.training.config import SelfInstructionConfig
    from sohes_hf.training.self_instruction import build_optimizer

    batch = _synthetic_batch(sizes.train_batch, sizes.train_size, 20, device)
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = tiny_sohes_config() if sizes.train_model == "tiny" else _vit_b8_config()
        model = SohesForHierarchicalSegmentation(config).to(device).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        optimizer = build_optimizer(model, SelfInstructionConfig(train_annotations="unused"), 1e-4)

        def step(model: Any = model, optimizer: Any = optimizer) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sizes.precision == "bf16"):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(sizes.train_steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
        print(
            f"training ({sizes.train_model}, {sizes.train_size} px, batch {sizes.train_batch}, "
            f"{sizes.precision}, "
            f"activation checkpointing {'on' if checkpointing else 'off'}): "
            f"{sizes.train_steps * sizes.train_batch / seconds:.2f} images/s, "
            f"peak memory {_peak_memory(device)}"
        )
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_pipeline(sizes: Sizes, device: torch.device) -> None:
    from benchmark_pipeline import benchmark

    row = benchmark(
        sizes.pipeline_model,
        sizes.pipeline_size,
        device,
        repeats=sizes.pipeline_repeats,
        warmup=1,
        threshold=0.0,
        max_instances=1000,
    )
    print(
        f"pipeline ({sizes.pipeline_model}, {sizes.pipeline_size} px, fp32): {1 / row['total']:.2f} images/s "
        f"(preprocess {row['preprocess']:.3f} s, forward {row['forward']:.3f} s, "
        f"postprocess {row['postprocess']:.3f} s, {row['entities']} entities)"
    )


def check_metric(sizes: Sizes, device: torch.device) -> None:
    from benchmark_evaluation import make_dataset

    from sohes_hf.evaluation import evaluate_class_agnostic

    predictions, references = make_dataset(
        sizes.metric_images, sizes.metric_gt, sizes.metric_predictions, sizes.metric_size
    )
    start = time.perf_counter()
    result = evaluate_class_agnostic(predictions, references, max_detections=1000)
    seconds = time.perf_counter() - start
    print(
        f"AR metric: {seconds:.2f} s for {sizes.metric_images} images ({sizes.metric_gt} GT, "
        f"{sizes.metric_predictions} predictions each, {sizes.metric_size} px; CPU): "
        f"AR {result.metrics()['AR']:.3f}"
    )


CHECKS: dict[str, Callable[[Sizes, torch.device], None]] = {
    "explore": check_explore,
    "training": check_training,
    "pipeline": check_pipeline,
    "metric": check_metric,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU (automatic without CUDA)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    sizes = CPU_SMOKE_SIZES if smoke else GPU_SIZES
    if smoke:
        torch.set_num_threads(1)  # toy models: thread start-up costs more than it saves
    name = "CPU smoke test (toy sizes: figures mean nothing)" if smoke else torch.cuda.get_device_name(device)
    print(f"gpu_check on {name}; torch {torch.__version__}; random weights")
    total = time.perf_counter()
    for part in parts:
        start = time.perf_counter()
        CHECKS[part](sizes, device)
        print(f"  ({part} took {time.perf_counter() - start:.1f} s)", flush=True)
    print(f"gpu_check done in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
