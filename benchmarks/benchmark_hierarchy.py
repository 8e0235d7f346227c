"""Benchmark: coverage hierarchy (paper section 3.1, step 4) of 200 RLE masks at 1024 x 1024.

Run: ``python benchmarks/benchmark_hierarchy.py [--num-masks 200] [--size 1024] [--repeats 5]``

The masks imitate a pseudo-label set: random whole-entity blobs and rectangles, parts nested
inside them (down to sub-parts), and scattered small regions. Prints the time of
``build_hierarchy`` on RLE input (what ``sohes explore`` calls), of the raw pycocotools
pairwise coverage alone (the floor), and the depth histogram of the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from pycocotools import mask as coco_mask

from sohes_hf.masks import encode_masks
from sohes_hf.pseudo_labeling.hierarchy import build_hierarchy, hierarchy_depths


def make_masks(num_masks: int, size: int, seed: int = 0) -> np.ndarray:
    """(num_masks, size, size) bool: entities with nested parts, as a pseudo-label set would hold."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((num_masks, size, size), dtype=bool)
    for index in range(num_masks):
        if index < num_masks // 5 or rng.random() < 0.2:  # entity: ellipse or rectangle
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(size // 16, size // 3, 2)
            if rng.random() < 0.5:
                masks[index] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                masks[index, max(cy - ry, 0) : cy + ry, max(cx - rx, 0) : cx + rx] = True
        else:  # part of an earlier mask: a blob centred inside it, mostly contained
            parent = masks[rng.integers(0, index)]
            ys, xs = np.nonzero(parent[::8, ::8])
            if len(ys) == 0:
                ys, xs = np.array([size // 16]), np.array([size // 16])
            pick = rng.integers(0, len(ys))
            cy, cx = ys[pick] * 8, xs[pick] * 8
            radius = max(int(np.sqrt(parent.sum() / np.pi) * rng.uniform(0.15, 0.6)), 4)
            masks[index] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2) & (parent | (rng.random() < 0.5))
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-masks", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rles = encode_masks(make_masks(args.num_masks, args.size))
    build_hierarchy(rles)  # warm-up
    wall, cpu = [], []
    for _ in range(args.repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        parents = build_hierarchy(rles)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    coco_rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    floor = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        coco_mask.iou(coco_rles, coco_rles, [1] * len(coco_rles))
        floor.append(time.perf_counter() - start)
    depths = hierarchy_depths(parents)
    print(f"{args.num_masks} RLE masks at {args.size}x{args.size}, {args.repeats} runs after warm-up")
    print(
        f"build_hierarchy (RLE input): median {statistics.median(wall) * 1e3:.1f} ms wall, "
        f"best {min(wall) * 1e3:.1f} ms; median {statistics.median(cpu) * 1e3:.1f} ms CPU"
    )
    print(f"pycocotools pairwise coverage alone: median {statistics.median(floor) * 1e3:.1f} ms wall")
    print("masks per depth:", np.bincount(depths).tolist())


if __name__ == "__main__":
    main()
