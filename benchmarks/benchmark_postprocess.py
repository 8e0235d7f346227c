"""Times SohesImageProcessor.post_process_hierarchical_segmentation on CPU.

Random logits shaped like the model's outputs at 1024 px input (masks at 1/4: 256 x 256) for
N = 200 and 1000 queries, a 1024 x 1024 target size, and class logits chosen so that a given
fraction of queries survives the score threshold. Prints one row per setting (median of runs)
and the split between mask upsampling/encoding and forest construction.

Usage:
    python benchmarks/benchmark_postprocess.py [--repeats 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sohes_hf.modeling.forest import build_forest
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor


@dataclass
class _Outputs:
    class_queries_logits: torch.Tensor
    masks_queries_logits: torch.Tensor
    ancestor_logits: torch.Tensor


def _make_outputs(num_queries: int, keep_fraction: float, seed: int = 0) -> _Outputs:
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.zeros(1, num_queries, 2)
    num_kept = round(keep_fraction * num_queries)
    class_logits[0, :num_kept, 0] = 6.0  # entity prob ~0.998: passes threshold 0.5
    class_logits[0, num_kept:, 0] = -6.0
    # Smooth blobs: low-frequency noise upsampled, so masks look like regions, not salt.
    coarse = torch.randn(1, num_queries, 16, 16, generator=generator) * 6.0
    masks = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear", align_corners=False)
    ancestors = torch.randn(1, num_queries, num_queries, generator=generator) * 4.0
    return _Outputs(class_logits, masks, ancestors)


def _timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls, and the last call's result."""
    durations, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    processor = SohesImageProcessor()  # longest_edge 1024, padded 1024 x 1024
    target = [(1024, 1024)]
    processor.post_process_hierarchical_segmentation(_make_outputs(8, 1.0), target)  # warm-up
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs (load average {load}), "
        f"target 1024x1024, median of {args.repeats}",
        flush=True,
    )
    print(
        f"{'queries':>8} {'kept':>6} {'entities':>9} {'total s':>9} {'ms/entity':>10} {'forest ms':>10}",
        flush=True,
    )
    for num_queries in (200, 1000):
        for keep_fraction in (0.1, 1.0):
            outputs = _make_outputs(num_queries, keep_fraction)
            seconds, results = _timed(
                lambda outputs=outputs: processor.post_process_hierarchical_segmentation(
                    outputs, target, max_instances=1000
                ),
                args.repeats,
            )
            num_entities = len(results[0])
            probs = torch.sigmoid(outputs.ancestor_logits[0, :num_entities, :num_entities]).double().numpy()
            scores = np.linspace(1.0, 0.5, num_entities)
            forest_seconds, _ = _timed(lambda p=probs, s=scores: build_forest(p, s), args.repeats)
            per_entity = 1000 * seconds / max(num_entities, 1)
            print(
                f"{num_queries:>8} {keep_fraction:>6.0%} {num_entities:>9} {seconds:>9.2f} "
                f"{per_entity:>10.1f} {1000 * forest_seconds:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
