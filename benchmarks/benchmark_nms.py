"""Benchmark: greedy mask NMS (``sohes_hf.masks.mask_nms``) against a dense IoU matrix.

Run: ``python benchmarks/benchmark_nms.py [--sizes 100 1000 3000]``

``mask_nms`` compares only the pairs whose IoU can exceed the threshold (boxes that intersect,
areas within the threshold's ratio); the dense variant computes all N x N IoUs with pycocotools
first, as ``mask_nms`` did before, and needs N^2 floats of memory. Masks are discs at 1024 x 1024
with log-uniform radii (4-300 px) plus 10% exact duplicates; threshold 0.9 (the self-exploration
NMS). Both must keep the same masks; the script checks it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from sohes_hf import masks


def dense_nms(rles: Sequence[Mapping[str, Any]], scores: np.ndarray, threshold: float) -> np.ndarray:
    order = np.lexsort((np.arange(len(rles)), -scores))
    ordered = [rles[i] for i in order]
    ious = masks.pairwise_iou(ordered, ordered)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for rank in range(len(order)):
        if not suppressed[rank]:
            kept.append(int(order[rank]))
            suppressed |= ious[rank] > threshold
    return np.asarray(kept, dtype=np.int64)


def discs(count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        canvas = np.zeros((1024, 1024), dtype=np.uint8)
        radius = int(np.exp(rng.uniform(np.log(4), np.log(300))))
        cv2.circle(canvas, tuple(int(v) for v in rng.integers(0, 1024, 2)), radius, 1, -1)
        out.append(masks.encode_mask(canvas.astype(bool)))
    return out + out[: count // 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes:
        rles = discs(size, seed=size)
        scores = np.random.default_rng(size).random(len(rles))
        times: dict[str, list[float]] = {"mask_nms": [], "dense": []}
        results = {}
        functions: dict[str, Callable[..., np.ndarray]] = {"mask_nms": masks.mask_nms, "dense": dense_nms}
        for _ in range(args.repeats):
            for name, function in functions.items():
                start = time.perf_counter()
                results[name] = function(rles, scores, 0.9)
                times[name].append(time.perf_counter() - start)
        same = np.array_equal(results["mask_nms"], results["dense"])
        pruned, dense = statistics.median(times["mask_nms"]), statistics.median(times["dense"])
        print(
            f"{len(rles)} masks: mask_nms {pruned * 1e3:.1f} ms, dense {dense * 1e3:.1f} ms "
            f"(x{dense / pruned:.1f}), kept {len(results['mask_nms'])}, same result: {same}"
        )


if __name__ == "__main__":
    main()
