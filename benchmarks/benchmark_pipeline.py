"""Throughput of the hierarchical-segmentation pipeline (images/s), per stage.

Random weights (nothing is downloaded): ``tiny`` is the test configuration, ``vitb8`` the
paper's size (DINO ViT-B/8 + ViT-Adapter + Mask2Former, 1,000 queries). Images are square
random RGB of each ``--sizes`` side; the processor works at that side (``longest_edge``), so
the model sees 512 px or 1024 px inputs. ``--threshold 0`` (the default) keeps every non-empty
query up to ``--max-instances``: the worst case for post-processing (a random model's scores
are low, so a realistic threshold would make post-processing look cheaper than on a trained
model).

    python benchmarks/benchmark_pipeline.py                          # tiny+vitb8, 512+1024
    python benchmarks/benchmark_pipeline.py --configs tiny --sizes 512 --repeats 5
    python benchmarks/benchmark_pipeline.py --device cuda --configs vitb8
    python benchmarks/benchmark_pipeline.py --configs tiny --threads 1  # a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_sohes_config
from sohes_hf.pipelines import TASK_NAME, HierarchicalSegmentationPipeline

CONFIGS: dict[str, Callable[[], SohesConfig]] = {"tiny": tiny_sohes_config, "vitb8": SohesConfig}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    name: str,
    size: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    threshold: float,
    max_instances: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(CONFIGS[name]()).eval().to(device)
    processor = SohesImageProcessor(size={"longest_edge": size})
    segmenter = HierarchicalSegmentationPipeline(
        model=model, image_processor=processor, task=TASK_NAME, device=device
    )
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    stages: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": [], "total": []}
    entities = 0
    for iteration in range(warmup + repeats):
        start = time.perf_counter()
        inputs = segmenter.preprocess(image)
        after_pre = time.perf_counter()
        outputs = segmenter.forward(inputs)  # moves outputs to the CPU, which synchronises
        _sync(device)
        after_forward = time.perf_counter()
        result = segmenter.postprocess(outputs, threshold=threshold, max_instances=max_instances)
        end = time.perf_counter()
        if iteration >= warmup:
            stages["preprocess"].append(after_pre - start)
            stages["forward"].append(after_forward - after_pre)
            stages["postprocess"].append(end - after_forward)
            stages["total"].append(end - start)
            entities = len(result)
    medians = {stage: statistics.median(times) for stage, times in stages.items()}
    return {"config": name, "size": size, "entities": entities, **medians}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.0)
    parser.add_argument("--max-instances", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    label = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {label}; torch {torch.__version__}; "
        f"median of {args.repeats} runs after {args.warmup} warm-up"
    )
    print(
        f"{'config':<7} {'size':>5} {'entities':>8} {'pre s':>8} "
        f"{'forward s':>10} {'post s':>8} {'images/s':>9}"
    )
    for name in args.configs:
        for size in args.sizes:
            row = benchmark(name, size, device, args.repeats, args.warmup, args.threshold, args.max_instances)
            print(
                f"{row['config']:<7} {row['size']:>5} {row['entities']:>8} {row['preprocess']:>8.3f} "
                f"{row['forward']:>10.3f} {row['postprocess']:>8.3f} {1.0 / row['total']:>9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
