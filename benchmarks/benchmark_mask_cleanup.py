"""Speed of the mask clean-up after refinement (HASSOD's steps; prints figures, asserts nothing).

100 synthetic masks (discs, a third of them rings) of an SA-1B-sized 1500 x 2250 image, plus one
whole-frame mask, through :func:`sohes_hf.pseudo_labeling.mask_cleanup.clean_masks` with the
defaults (area and corner tests; only masks whose box reaches three corners are decoded) and with
hole filling (every mask decoded). Median wall time and CPU time of ``--repeats`` runs.

Usage: ``python benchmarks/benchmark_mask_cleanup.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from sohes_hf.masks import encode_mask
from sohes_hf.pseudo_labeling.mask_cleanup import clean_masks


def synthetic_masks(height: int, width: int, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    masks = [encode_mask(np.ones((height, width), dtype=bool))]
    for index in range(count):
        canvas = np.zeros((height, width), dtype=np.uint8)
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(5, 600))
        cv2.circle(canvas, center, radius, 1, -1)
        if index % 3 == 0:
            cv2.circle(canvas, center, radius // 3, 0, -1)
        masks.append(encode_mask(canvas > 0))
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    masks = synthetic_masks(1500, 2250, 100, seed=0)
    print(f"== clean_masks on {len(masks)} masks of 1500 x 2250 (median of {args.repeats}) ==")
    for label, fill in (("defaults (area, corners)", False), ("with hole filling", True)):
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            result = clean_masks(masks, use_hole_filling=fill)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(
            f"  {label:26s} wall {statistics.median(walls) * 1e3:7.1f} ms, CPU "
            f"{statistics.median(cpus) * 1e3:7.1f} ms; kept {len(result.masks)}, "
            f"corner-dropped {result.num_corner}, filled {result.num_filled}"
        )


if __name__ == "__main__":
    main()
