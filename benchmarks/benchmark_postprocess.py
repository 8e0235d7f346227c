"""Times the mask stage of SohesImageProcessor.post_process_hierarchical_segmentation, before/after.

"before" is the former full-size path, re-implemented here as the baseline: every candidate
query's low-res logits are upsampled with ``F.interpolate`` to the padded input size (16 queries
at a time), cropped, resized to the target size, binarised, scored (mean sigmoid over the mask)
and RLE-encoded with pycocotools. "after" is ``mask_postprocessing.binarize_mask_logits``, which
resizes each query only inside the window that can hold positive pixels. The script checks that
both give the same kept queries, RLEs and areas and prints the largest score difference.

Logits are shaped like the model's outputs (masks at 1/4 of the padded input: 256 x 256 for a
1024 px input, 128 x 128 for 512 px), target = padded size (a square image), every query passes
the class threshold. Two mask populations:

* ``entities``: one blob per query with a log-uniform radius between 1.5 and half the low-res
  side (6 to 512 px at 1024), irregular borders: mostly small masks, as entities and parts are.
* ``noise``: smooth noise over the whole map (the previous benchmark's data): every mask is
  spread over the whole image, so every window is the full image (worst case for windows).

The last column times the whole ``post_process_hierarchical_segmentation`` call (new path, plus
ranking, forest and entity building).

Usage:
    python benchmarks/benchmark_postprocess.py [--repeats 1] [--threads 2] [--queries 200 1000]
        [--sizes 1024 512] [--populations entities noise]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sohes_hf.masks import encode_masks
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.mask_postprocessing import binarize_mask_logits

_CHUNK = 16  # the former path's chunk: 16 full-size float maps at a time


@dataclass
class _Outputs:
    class_queries_logits: torch.Tensor
    masks_queries_logits: torch.Tensor
    ancestor_logits: torch.Tensor


def _blob_logits(num_queries: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """One elliptical blob per query, log-uniform radius, borders roughened by smooth noise."""
    radii = torch.exp(
        torch.empty(num_queries, 2).uniform_(math.log(1.5), math.log(side / 2), generator=generator)
    )
    centres = torch.rand(num_queries, 2, generator=generator) * side
    grid = torch.arange(side, dtype=torch.float32) + 0.5
    dy = (grid[None, :, None] - centres[:, 0, None, None]) / radii[:, 0, None, None]
    dx = (grid[None, None, :] - centres[:, 1, None, None]) / radii[:, 1, None, None]
    rough = torch.randn(num_queries, 1, 8, 8, generator=generator) * 0.6
    rough = F.interpolate(rough, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return 4.0 * (1.0 - dy**2 - dx**2) + rough


def _noise_logits(num_queries: int, side: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(1, num_queries, 16, 16, generator=generator) * 6.0
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[0]


def _make_outputs(num_queries: int, side: int, population: str, seed: int = 0) -> _Outputs:
    generator = torch.Generator().manual_seed(seed)
    make = _blob_logits if population == "entities" else _noise_logits
    masks = make(num_queries, side, generator)
    class_logits = torch.zeros(1, num_queries, 2)
    class_logits[0, :, 0] = 6.0  # entity prob ~0.998: every query passes threshold 0.5
    ancestors = torch.randn(1, num_queries, num_queries, generator=generator) * 4.0
    return _Outputs(class_logits, masks[None], ancestors)


def _full_size_masks(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    padded: tuple[int, int],
    valid: tuple[int, int],
    target: tuple[int, int],
    threshold: float,
) -> tuple[list[int], list[dict[str, Any]], list[int], list[float]]:
    """The former full-size path: kept query indices, RLEs, areas, scores."""
    kept: list[int] = []
    rles: list[dict[str, Any]] = []
    areas: list[int] = []
    scores: list[float] = []
    for start in range(0, mask_logits.shape[0], _CHUNK):
        queries = torch.arange(start, min(start + _CHUNK, mask_logits.shape[0]))
        full = F.interpolate(mask_logits[queries][None], size=padded, mode="bilinear", align_corners=False)[0]
        logits = full[:, : valid[0], : valid[1]]
        if tuple(valid) != tuple(target):
            logits = F.interpolate(logits[None], size=target, mode="bilinear", align_corners=False)[0]
        binary = logits > 0
        binary_np = binary.numpy()
        counts = np.count_nonzero(binary_np.reshape(binary_np.shape[0], -1), axis=1)
        prob_sums = logits.sigmoid_().mul_(binary).sum(dim=(1, 2)).double().numpy()
        query_scores = class_probs[queries].double().numpy() * prob_sums / np.maximum(counts, 1)
        keep = (counts > 0) & (query_scores >= threshold)
        kept.extend(queries.numpy()[keep].tolist())
        rles.extend(encode_masks(binary_np[keep]))
        areas.extend(counts[keep].tolist())
        scores.extend(query_scores[keep].tolist())
    return kept, rles, areas, scores


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
    parser.add_argument("--queries", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 512], help="input = target side")
    parser.add_argument(
        "--populations", nargs="+", default=["entities", "noise"], choices=["entities", "noise"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threshold = 0.5

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs (load average {load}), "
        f"median of {args.repeats}; mask stage before (full size) / after (windows)",
        flush=True,
    )
    print(
        f"{'size':>5} {'masks':>9} {'queries':>8} {'kept':>5} {'before s':>9} {'after s':>8} "
        f"{'before ms/e':>12} {'after ms/e':>11} {'speed-up':>9} {'max |dscore|':>13} {'call s':>7}",
        flush=True,
    )
    for side in args.sizes:
        processor = SohesImageProcessor(size={"longest_edge": side})
        padded = processor.get_padded_size()
        target = (side, side)
        valid = processor.get_resized_size(*target)
        low = (padded[0] // 4, padded[1] // 4)
        processor.post_process_hierarchical_segmentation(_make_outputs(4, low[0], "entities"), [target])
        for population in args.populations:
            for num_queries in args.queries:
                outputs = _make_outputs(num_queries, low[0], population)
                logits = outputs.masks_queries_logits[0]
                probs = torch.softmax(outputs.class_queries_logits[0], dim=-1)[:, 0]
                geometry = (padded, valid, target, threshold)
                before_s, before = _timed(partial(_full_size_masks, logits, probs, *geometry), args.repeats)
                after_s, after = _timed(partial(binarize_mask_logits, logits, probs, *geometry), args.repeats)
                if after.query_indices.tolist() != before[0] or after.rles != before[1]:
                    raise RuntimeError(f"{population} {num_queries}: windowed masks differ from full size")
                if after.areas.tolist() != before[2]:
                    raise RuntimeError(f"{population} {num_queries}: windowed areas differ from full size")
                score_gap = float(np.max(np.abs(after.scores - np.asarray(before[3])), initial=0.0))
                call = partial(
                    processor.post_process_hierarchical_segmentation,
                    outputs,
                    [target],
                    threshold=threshold,
                    max_instances=1000,
                )
                call_s, _ = _timed(call, args.repeats)
                kept = max(len(before[0]), 1)
                print(
                    f"{side:>5} {population:>9} {num_queries:>8} {len(before[0]):>5} {before_s:>9.2f} "
                    f"{after_s:>8.3f} {1000 * before_s / kept:>12.2f} {1000 * after_s / kept:>11.2f} "
                    f"{before_s / after_s:>8.1f}x {score_gap:>13.1e} {call_s:>7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
