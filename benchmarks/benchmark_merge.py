"""Benchmark: global clustering (paper section 3.1, step 1) on a 128 x 128 x 768 feature grid.

Run: ``python benchmarks/benchmark_merge.py [--repeats 5]``

A 1024 x 1024 image gives DINO ViT-B/8 a 128 x 128 grid of 768-d patch features. Three synthetic
grids stand in for it: gaussian-smoothed noise, "segments" (a Voronoi partition into 60
pieces, each with its own random mean feature, plus smoothed noise), and "flat segments" (the
same pieces with weak white noise, like flat image areas: each piece is grown by one region
absorbing patches one by one, so regions have long boundaries; this is the case the lazily
evaluated similarity bounds of ``merge.py`` are for). The six thresholds of appendix A are
used. The numba kernel runs on one thread (``NUMBA_NUM_THREADS=1``; the kernel has no parallel
loops anyway); times are taken after a warm-up call (the first call compiles or loads the
cached machine code). CPU time is printed next to wall time because a shared machine inflates
the latter.

Figures (CPU medians of 5, 2026-12-03, load ~2.5 from two training jobs on the 2 cores; main
e6003e5 and the ``_lane_dot`` kernel run alternately twice): smooth noise 103.7 / 96.8 -> 92.4 /
84.9 ms, segments 91.3 / 93.8 -> 84.6 / 82.2 ms, flat segments 149.4 / 150.4 -> 131.3 / 130.5 ms,
identical label maps (docs/benchmarks.md, docs/self_exploration_algorithms.md). With 4-ary heaps and the
finiteness check in the kernel's norm pass (2026-12-03, quiet machine, three runs): smooth
54.7-55.8, segments 50.7-53.0, flat segments 97.0-98.9 ms CPU.

It also times a straightforward quadratic implementation (one full scan of the edges per
merge, as in the paper's description and HASSOD's ``hier_cluster.py``) on a 24 x 24 grid,
checks that both give the same label maps, and prints the speed-up. For each 128 x 128 grid it
also times the region pool built from the six label maps at 1024 x 1024.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # imported after setting NUMBA_NUM_THREADS, before numba loads
import math
import statistics
import time

import numpy as np
from scipy import ndimage

from sohes_hf.pseudo_labeling.merge import DEFAULT_MERGE_THRESHOLDS, agglomerative_merge
from sohes_hf.pseudo_labeling.region_pool import build_region_pool


def smooth_noise(size: int, channels: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((size, size, channels)).astype(np.float32)
    return ndimage.gaussian_filter(noise, sigma=(sigma, sigma, 0)).astype(np.float32)


def _voronoi_means(size: int, channels: int, rng: np.random.Generator, num_segments: int) -> np.ndarray:
    """(size, size, channels) float32: a random mean feature per cell of a random Voronoi partition."""
    centres = rng.uniform(0, size, (num_segments, 2))
    yy, xx = np.mgrid[:size, :size]
    distances = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    owner = distances.argmin(axis=-1)
    means = rng.standard_normal((num_segments, channels)).astype(np.float32)
    return means[owner]


def segments(size: int, channels: int, seed: int = 0, num_segments: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces = _voronoi_means(size, channels, rng, num_segments)
    return pieces + 0.8 * smooth_noise(size, channels, seed + 1, sigma=1.5)


def flat_segments(size: int, channels: int, seed: int = 0, num_segments: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces = _voronoi_means(size, channels, rng, num_segments)
    return pieces + 0.15 * rng.standard_normal((size, size, channels)).astype(np.float32)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Float64 products; channel k summed into lane k % 64 in order; lanes halved pairwise."""
    products = x.astype(np.float64) * y.astype(np.float64)
    padded = np.concatenate([products, np.zeros((-len(products)) % 64)]).reshape(-1, 64)
    lanes = np.cumsum(padded, axis=0)[-1]  # cumsum adds strictly in order
    while len(lanes) > 1:
        half = len(lanes) // 2
        lanes = lanes[:half] + lanes[half:]
    return float(lanes[0])


def _quadratic_merge(features: np.ndarray, thresholds: tuple[float, ...]) -> list[np.ndarray]:
    """Full edge scan per merge, same arithmetic and tie rule as the library."""
    height, width, _ = features.shape
    count = height * width
    vector = dict(enumerate(features.reshape(count, -1)))
    norm = {p: math.sqrt(_dot(v, v)) for p, v in vector.items()}
    area = dict.fromkeys(range(count), 1)
    members = {p: [p] for p in range(count)}

    def cosine(a: int, b: int) -> float:
        return _dot(vector[a], vector[b]) / (norm[a] * norm[b]) if norm[a] > 0 and norm[b] > 0 else 0.0

    edges, rank = {}, 0
    for p in range(count):
        for q in (p + 1, p + width):
            if not ((q == p + 1 and q % width == 0) or q >= count):
                edges[(p, q)] = (cosine(p, q), rank)
                rank += 1
    next_region, results = count, {}
    for threshold in sorted(thresholds, reverse=True):
        while edges:
            (a, b), (best, _) = max(edges.items(), key=lambda item: (item[1][0], -item[1][1]))
            if best < threshold:
                break
            k, next_region = next_region, next_region + 1
            area[k] = area[a] + area[b]
            mean = (area[a] * vector[a].astype(np.float64) + area[b] * vector[b].astype(np.float64)) / area[k]
            vector[k] = mean.astype(np.float32)
            norm[k] = math.sqrt(_dot(vector[k], vector[k]))
            members[k] = members.pop(a) + members.pop(b)
            touching = [key for key in edges if a in key or b in key]
            for key in touching:
                del edges[key]
            for n in sorted({x for key in touching for x in key} - {a, b}):
                edges[(n, k)] = (cosine(n, k), rank)
                rank += 1
        labels = np.empty(count, dtype=np.int64)
        for region, pixels in members.items():
            labels[pixels] = region
        _, first = np.unique(labels, return_index=True)
        relabel = {region: index for index, region in enumerate(labels[np.sort(first)])}
        results[threshold] = np.array([relabel[r] for r in labels], dtype=np.int32).reshape(height, width)
    return [results[t] for t in thresholds]


def _time(function, repeats: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    thresholds = DEFAULT_MERGE_THRESHOLDS

    start = time.perf_counter()
    agglomerative_merge(smooth_noise(8, 8), thresholds)
    print(f"first call (compile or load cached code): {time.perf_counter() - start:.2f} s")

    grids = (
        ("smooth noise", smooth_noise(128, 768)),
        ("segments", segments(128, 768)),
        ("flat segments", flat_segments(128, 768)),
    )
    for name, grid in grids:
        maps = agglomerative_merge(grid, thresholds)
        wall, cpu = _time(lambda grid=grid: agglomerative_merge(grid, thresholds), args.repeats)
        print(
            f"128x128x768 {name:13s}: median {statistics.median(wall) * 1e3:6.1f} ms wall "
            f"(best {min(wall) * 1e3:6.1f}), median {statistics.median(cpu) * 1e3:6.1f} ms CPU; "
            f"regions per threshold {[int(m.max()) + 1 for m in maps]}"
        )
        pool = build_region_pool(maps, (1024, 1024))
        wall, cpu = _time(lambda maps=maps: build_region_pool(maps, (1024, 1024)), args.repeats)
        print(
            f"    region pool at 1024x1024 (RLE + exact dedup + NMS 0.9): median "
            f"{statistics.median(wall) * 1e3:6.1f} ms wall, {statistics.median(cpu) * 1e3:6.1f} ms CPU; "
            f"{len(pool)} regions kept"
        )

    small = segments(24, 768, seed=3, num_segments=12)
    fast_maps = agglomerative_merge(small, thresholds)
    slow_maps = _quadratic_merge(small, thresholds)
    same = all(np.array_equal(a, b) for a, b in zip(fast_maps, slow_maps, strict=True))
    fast_wall, _ = _time(lambda: agglomerative_merge(small, thresholds), args.repeats)
    slow_wall, _ = _time(lambda: _quadratic_merge(small, thresholds), 1)
    fast = statistics.median(fast_wall)
    print(
        f"24x24x768 quadratic reference {slow_wall[0] * 1e3:.0f} ms, heap/numba "
        f"{fast * 1e3:.2f} ms: speed-up x{slow_wall[0] / fast:.0f}; "
        f"identical label maps: {same}"
    )


if __name__ == "__main__":
    main()
