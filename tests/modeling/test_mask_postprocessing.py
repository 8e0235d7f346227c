"""Windowed mask post-processing against the straightforward full-size computation.

The reference (``_full_size``) is what the processor did before: ``F.interpolate`` every query to
the padded size, crop, ``F.interpolate`` to the target size, binarise at 0, score with the mean
sigmoid over the mask, encode with pycocotools through :func:`sohes_hf.masks.encode_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from torch.nn import functional as F

from sohes_hf.masks import encode_masks
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.mask_postprocessing import (
    _encode_window,
    _linear_taps,
    _resize_window,
    _window_rle,
    binarize_mask_logits,
)

# (low-res size, padded size, valid size, target size)
GEOMETRIES = [
    pytest.param(((64, 64), (256, 256), (256, 192), (300, 225)), id="target-larger-nonsquare"),
    pytest.param(((64, 64), (256, 256), (192, 256), (71, 97)), id="target-smaller"),
    pytest.param(((64, 64), (256, 256), (256, 192), (256, 192)), id="valid-equals-target"),
    pytest.param(((32, 32), (128, 128), (128, 128), (128, 128)), id="all-equal-but-low-res"),
    pytest.param(((30, 44), (120, 176), (97, 176), (61, 333)), id="odd-sizes"),
    pytest.param(((40, 40), (160, 160), (160, 120), (40, 30)), id="downscale-to-low-res-size"),
]


def _full_size(
    logits: torch.Tensor,
    probs: torch.Tensor,
    padded: tuple[int, int],
    valid: tuple[int, int],
    target: tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, list[dict], np.ndarray, np.ndarray, torch.Tensor]:
    """Kept query indices, RLEs, areas, scores and the target-size logits, at full size."""
    full = F.interpolate(logits[None], size=padded, mode="bilinear", align_corners=False)[0]
    cropped = full[:, : valid[0], : valid[1]]
    if tuple(valid) != tuple(target):
        cropped = F.interpolate(cropped[None], size=target, mode="bilinear", align_corners=False)[0]
    binary = cropped > 0
    areas = binary.flatten(1).sum(1).numpy()
    prob_sums = (cropped.sigmoid() * binary).double().flatten(1).sum(1).numpy()
    scores = probs.double().numpy() * prob_sums / np.maximum(areas, 1)
    keep = (areas > 0) & (scores >= threshold)
    return np.flatnonzero(keep), encode_masks(binary.numpy()[keep]), areas[keep], scores[keep], cropped


def _smooth_logits(num: int, size: tuple[int, int], seed: int, offset: float = -3.0) -> torch.Tensor:
    """Blobby logits: coarse noise upsampled, shifted so most masks cover part of the image."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num, 1, 5, 5, generator=generator) * 4.0 + offset
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[:, 0].contiguous()


def _with_edge_cases(logits: torch.Tensor) -> torch.Tensor:
    """Overwrites the first queries with empty, single-pixel and border-touching masks."""
    logits = logits.clone()
    height, width = logits.shape[1:]
    logits[0] = -1.0  # empty
    logits[1] = -1.0
    logits[1, height // 2, width // 3] = 4.0  # one low-res pixel
    logits[2] = -1.0
    logits[2, 0, :] = 3.0  # top row and right column
    logits[2, :, -1] = 3.0
    logits[3] = -1.0
    logits[3, -1, 0] = 2.0  # bottom-left corner pixel
    logits[4] = 2.0  # everything positive
    logits[5] = -1.0
    logits[5, height - 3 :, width - 3 :] = 1.0  # bottom-right corner: may lie in the padding only
    logits[6] = -1.0
    logits[6, 0, 0] = 0.01  # barely positive, top-left
    return logits


@dataclass
class _Case:
    logits: torch.Tensor
    probs: torch.Tensor
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


def _case(geometry: tuple, seed: int) -> _Case:
    low, _, _, _ = geometry
    logits = _with_edge_cases(_smooth_logits(24, low, seed))
    probs = torch.rand(24, generator=torch.Generator().manual_seed(seed + 1)) * 0.5 + 0.5
    return _Case(logits, probs, geometry)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("threshold", [0.0, 0.45])
def test_matches_full_size_path(geometry: tuple, threshold: float) -> None:
    case = _case(geometry, seed=3)
    _, padded, valid, target = geometry
    expected_queries, expected_rles, expected_areas, expected_scores, _ = _full_size(
        case.logits, case.probs, padded, valid, target, threshold
    )
    result = binarize_mask_logits(case.logits, case.probs, padded, valid, target, threshold)
    np.testing.assert_array_equal(result.query_indices, expected_queries)
    assert result.rles == expected_rles
    np.testing.assert_array_equal(result.areas, expected_areas)
    np.testing.assert_allclose(result.scores, expected_scores, rtol=0, atol=1e-6)
    expected_boxes = coco_mask.toBbox(
        [{"size": rle["size"], "counts": rle["counts"].encode()} for rle in expected_rles]
    )
    np.testing.assert_array_equal(result.boxes, np.reshape(expected_boxes, (-1, 4)))
    assert 0 not in result.query_indices.tolist()  # the empty mask is dropped
    if threshold == 0.0:
        assert 4 in result.query_indices.tolist()  # the all-positive mask is kept
        assert len(result.query_indices) > 5


def test_single_pixel_masks_and_corners() -> None:
    """With no resize at all (identity geometry) a positive low-res pixel is a 1-pixel mask."""
    logits = torch.full((4, 16, 20), -2.0)
    logits[0, 0, 0] = 1.0
    logits[1, 15, 19] = 1.0
    logits[2, 15, 0] = 1.0
    logits[3, 7, 11] = 1.0
    probs = torch.ones(4)
    size = (16, 20)
    result = binarize_mask_logits(logits, probs, size, size, size, 0.5)
    expected_queries, expected_rles, expected_areas, expected_scores, _ = _full_size(
        logits, probs, size, size, size, 0.5
    )
    np.testing.assert_array_equal(result.query_indices, expected_queries)
    np.testing.assert_array_equal(result.query_indices, [0, 1, 2, 3])
    np.testing.assert_array_equal(expected_areas, [1, 1, 1, 1])
    np.testing.assert_array_equal(result.areas, [1, 1, 1, 1])
    assert result.rles == expected_rles
    np.testing.assert_allclose(result.scores, 1 / (1 + np.exp(-1.0)), atol=1e-6)
    np.testing.assert_allclose(result.scores, expected_scores, atol=1e-6)


def test_mask_only_in_padding_is_dropped() -> None:
    logits = torch.full((1, 32, 32), -1.0)
    logits[0, 30:, :] = 5.0  # rows 120.. of the 128-px padded input; the image is 100 px tall
    result = binarize_mask_logits(logits, torch.ones(1), (128, 128), (100, 128), (50, 64), 0.0)
    assert result.query_indices.size == 0
    assert _full_size(logits, torch.ones(1), (128, 128), (100, 128), (50, 64), 0.0)[0].size == 0


@pytest.mark.parametrize(
    ("in_size", "out_size"), [(64, 256), (256, 1000), (48, 517), (1000, 600), (37, 20), (17, 17)]
)
def test_window_values_match_interpolate(in_size: int, out_size: int) -> None:
    """Any window of the resize equals the same pixels of F.interpolate (to 1e-6).

    Bit-equal on torch 2.14's AVX2 CPU kernel except in small downscales (a few ulp there).
    """
    generator = torch.Generator().manual_seed(in_size)
    source = torch.randn(in_size // 2 + 1, in_size, generator=generator)
    reference = F.interpolate(
        source[None, None], size=(out_size // 2 + 3, out_size), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    rows = _linear_taps(source.shape[0], out_size // 2 + 3)
    cols = _linear_taps(in_size, out_size)
    row_range = (1, out_size // 2 + 2)
    col_range = (out_size // 3, out_size - 1)
    # The source handed over is a window too: only what the output window reads.
    top, left = int(rows.index0[row_range[0]]), int(cols.index0[col_range[0]])
    window_source = source.numpy()[top:, left:]
    window = _resize_window(window_source, (top, left), rows, cols, row_range, col_range)
    expected = reference[row_range[0] : row_range[1] + 1, col_range[0] : col_range[1] + 1]
    np.testing.assert_allclose(window, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(window > 0, expected > 0)


@pytest.mark.parametrize("seed", range(6))
def test_window_rle_matches_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    win_h, win_w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
    # Windows at random places, and at the corners (runs that cross column boundaries).
    origins = [
        (int(rng.integers(0, height - win_h + 1)), int(rng.integers(0, width - win_w + 1))),
        (0, 0),
        (height - win_h, width - win_w),
    ]
    windows = [
        rng.random((win_h, win_w)) > 0.5,
        np.ones((win_h, win_w), dtype=bool),
        np.eye(win_h, win_w, dtype=bool),
    ]
    for origin in origins:
        for window in windows:
            if not window.any():
                continue
            full = np.zeros((height, width), dtype=bool)
            full[origin[0] : origin[0] + win_h, origin[1] : origin[1] + win_w] = window
            expected = encode_masks(full[None])[0]
            assert _window_rle(window, origin, (height, width)) == expected
            assert _encode_window(window, origin, (height, width)) == expected


def test_full_height_columns_merge_into_one_run() -> None:
    window = np.ones((10, 3), dtype=bool)
    rle = _window_rle(window, (0, 2), (10, 6))
    full = np.zeros((10, 6), dtype=bool)
    full[:, 2:5] = True
    assert rle == encode_masks(full[None])[0]


def test_processor_post_processing_matches_full_size() -> None:
    """End to end through SohesImageProcessor: kept entities' masks, areas and scores."""

    @dataclass
    class Outputs:
        class_queries_logits: torch.Tensor
        masks_queries_logits: torch.Tensor
        ancestor_logits: torch.Tensor

    processor = SohesImageProcessor(size={"longest_edge": 128})
    num = 20
    logits = _with_edge_cases(_smooth_logits(num, (32, 32), seed=11))
    class_logits = torch.randn(1, num, 2, generator=torch.Generator().manual_seed(5)) * 3
    outputs = Outputs(class_logits, logits[None], torch.randn(1, num, num))
    target = (90, 60)  # resized to 128 x 85 inside the 128 x 128 padded input
    entities = processor.post_process_hierarchical_segmentation(outputs, [target], threshold=0.3)[0]
    probs = torch.softmax(class_logits[0], dim=-1)[:, 0]
    valid = processor.get_resized_size(*target)
    _, rles, areas, scores, _ = _full_size(logits, probs, processor.get_padded_size(), valid, target, 0.3)
    by_rle = {
        rle["counts"]: (int(area), float(score)) for rle, area, score in zip(rles, areas, scores, strict=True)
    }
    assert len(entities) == len(rles) > 0
    for entity in entities:
        area, score = by_rle[entity.mask["counts"]]
        assert entity.area == area
        assert entity.score == pytest.approx(score, abs=1e-6)


def test_leaves_the_torch_thread_setting_alone() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        binarize_mask_logits(torch.randn(2, 8, 8), torch.ones(2), (32, 32), (32, 32), (20, 20), 0.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_no_queries() -> None:
    result = binarize_mask_logits(torch.zeros(0, 8, 8), torch.zeros(0), (32, 32), (30, 32), (60, 64), 0.5)
    assert result.query_indices.shape == (0,)
    assert result.rles == []
    assert result.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mask_logits": torch.zeros(2, 8)}, "mask_logits"),
        ({"class_probs": torch.zeros(3)}, "class_probs"),
        ({"valid_size": (40, 8)}, "valid_size"),
        ({"target_size": (0, 8)}, "target_size"),
        ({"padded_size": (32,)}, "padded_size"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    arguments = {
        "mask_logits": torch.zeros(2, 8, 8),
        "class_probs": torch.zeros(2),
        "padded_size": (32, 32),
        "valid_size": (32, 32),
        "target_size": (16, 16),
        "threshold": 0.5,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        binarize_mask_logits(**arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs() -> None:
    case = _case(GEOMETRIES[0].values[0], seed=4)
    _, padded, valid, target = case.geometry
    on_cpu = binarize_mask_logits(case.logits, case.probs, padded, valid, target, 0.3)
    on_gpu = binarize_mask_logits(case.logits.cuda(), case.probs.cuda(), padded, valid, target, 0.3)
    np.testing.assert_array_equal(on_gpu.query_indices, on_cpu.query_indices)
    assert on_gpu.rles == on_cpu.rles
