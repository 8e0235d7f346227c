"""Bit-for-bit regression tests of the merge kernel (paper section 3.1, step 1).

The kernel is rewritten for speed from time to time; its results must not move. Two checks:

* ``_lane_dot``, the one dot product of the kernel (LLVM vectors in registers), against the
  documented summation order written in numpy (``test_merge._dot``), bit for bit, for every
  operand kind, odd channel counts (the ``C % 64`` tail), zero and extreme values.
* The label maps of the benchmark grids (``benchmarks/benchmark_merge.py``, 128 x 128 x 768) and
  of small grids with ties and zero features, against SHA-256 digests of the maps computed by
  the kernel of commit e6003e5 (before the ``_lane_dot`` rewrite; that kernel also matched the
  quadratic reference of ``test_merge`` on every grid it was tested on). The digests rely on
  numpy's ``default_rng`` streams and on ``scipy.ndimage.gaussian_filter``, both stable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
import pytest

from sohes_hf.pseudo_labeling import merge_kernel
from sohes_hf.pseudo_labeling.merge import DEFAULT_MERGE_THRESHOLDS, agglomerative_merge

from .test_merge import _dot


def _load_benchmark_grids() -> ModuleType:
    """``benchmarks/benchmark_merge.py`` (not a package), for its grid generators."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_merge.py"
    spec = importlib.util.spec_from_file_location("benchmark_merge_grids", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_GRIDS = _load_benchmark_grids()
_lane_dot = merge_kernel._lane_dot


@numba.njit
def _dot_rows(x: np.ndarray, i: int, y: np.ndarray, j: int) -> float:
    return _lane_dot(x, i, y, j)


@numba.njit
def _dot_wide_row(v: np.ndarray, y: np.ndarray, j: int) -> float:
    return _lane_dot(v, 0, y, j)


@numba.njit
def _dot_wide_wide(v: np.ndarray) -> float:
    return _lane_dot(v, 0, v, 0)


def _same_bits(x: float, y: float) -> bool:
    return np.float64(x).tobytes() == np.float64(y).tobytes()


@pytest.mark.parametrize("channels", [1, 7, 8, 13, 63, 64, 65, 130, 768, 777])
def test_lane_dot_follows_the_documented_order_bit_for_bit(channels: int) -> None:
    rng = np.random.default_rng(channels)
    for trial in range(60):
        scale = (1e-20, 1.0, 1e18)[trial % 3]
        rows = (scale * rng.standard_normal((3, channels))).astype(np.float32)
        if trial % 4 == 1:
            rows[:, ::3] = 0.0
        if trial % 5 == 2:
            rows[1] = -rows[0]  # cancellation down to (signed) zero
        wide = rows[1].astype(np.float64)
        expected = _dot(rows[0], rows[1])
        assert _same_bits(_dot_rows(rows, 0, rows, 1), expected)
        assert _same_bits(_dot_rows(rows, 1, rows, 0), expected)
        assert _same_bits(_dot_wide_row(wide, rows, 0), expected)
        assert _same_bits(_dot_wide_wide(wide), _dot(rows[1], rows[1]))
        assert math.isfinite(expected)


def _digest(label_maps: list[np.ndarray]) -> str:
    return hashlib.sha256(np.stack(label_maps).astype("<i4").tobytes()).hexdigest()


def _tied_and_zero_grid(seed: int) -> np.ndarray:
    """Flat pieces from a 3-vector palette (exact ties everywhere), weak noise on half, zero patches."""
    rng = np.random.default_rng(seed)
    palette = rng.standard_normal((3, 96)).astype(np.float32)
    grid = palette[rng.integers(0, 3, (6, 6)).repeat(6, axis=0).repeat(6, axis=1)]
    grid[:, 18:] += 0.2 * rng.standard_normal((36, 18, 96)).astype(np.float32)
    grid[rng.random((36, 36)) < 0.05] = 0.0
    return grid


# Thresholds inside the growth of the flat pieces (neighbouring patches have cosines ~0.978-0.983,
# a patch and a large region ~0.989): the maps
# record large regions surrounded by single patches, the states where bounds matter most.
_FLAT_GROWTH = (0.9825, 0.982, 0.9815, 0.981, 0.9805, 0.98, 0.979, *DEFAULT_MERGE_THRESHOLDS)
_TIE_THRESHOLDS = (0.999, 0.99, 0.95, 0.9, 0.5, 0.0, -0.5)

# SHA-256 of the stacked int32 label maps from the kernel of commit e6003e5.
_EXPECTED = {
    "smooth noise": "79a39c50989ab010baf7ab2d749eb5e7a6cf0f5cbebd0e1435f49e13cfec1626",
    "segments": "8986095e105ef986aad52c7332003fc7e5c18c87860a657542861bd5760fd28c",
    "flat segments": "8986095e105ef986aad52c7332003fc7e5c18c87860a657542861bd5760fd28c",
    "flat segments, growth thresholds": "8e874078938e6dfeb91e136ec9f91563c74412849742e18b6401d39c3ba448ee",
    "tied and zero 0": "630943bd1d91292d6ee9539cb8a1e0b2256a19fadc25909059225711a913bfdf",
    "tied and zero 1": "17d1e7d57ade6f0dc9044b320e1b55b72adad1bb2c330474fa4f259460e9406d",
    "tied and zero 2": "4722db96b62e8dbf5972bc68d81c2cdf10d4b148f98e7e2d55403a4f85400431",
}


def _case(name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    if name == "smooth noise":
        return _GRIDS.smooth_noise(128, 768), DEFAULT_MERGE_THRESHOLDS
    if name == "segments":
        return _GRIDS.segments(128, 768), DEFAULT_MERGE_THRESHOLDS
    if name == "flat segments":
        return _GRIDS.flat_segments(128, 768), DEFAULT_MERGE_THRESHOLDS
    if name == "flat segments, growth thresholds":
        return _GRIDS.flat_segments(64, 768, seed=2, num_segments=12), _FLAT_GROWTH
    return _tied_and_zero_grid(int(name.rsplit(" ", 1)[1])), _TIE_THRESHOLDS


@pytest.mark.parametrize("name", list(_EXPECTED))
def test_label_maps_equal_the_previous_kernel(name: str) -> None:
    features, thresholds = _case(name)
    assert _digest(agglomerative_merge(features, thresholds)) == _EXPECTED[name]
