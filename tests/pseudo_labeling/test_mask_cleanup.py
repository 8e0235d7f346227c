"""HASSOD's mask clean-up (area, three corners, holes) against brute forces written here."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from scipy import ndimage

from sohes_hf.masks import decode_mask, encode_mask
from sohes_hf.pseudo_labeling.mask_cleanup import clean_masks, count_corners, fill_holes


def _flood_fill_holes(mask: np.ndarray) -> np.ndarray:
    """Brute force: breadth-first search of the background from every border pixel (4-neighbours)."""
    height, width = mask.shape
    outside = np.zeros_like(mask)
    queue = deque(
        (y, x) for y in range(height) for x in range(width) if (y in (0, height - 1) or x in (0, width - 1))
    )
    while queue:
        y, x = queue.popleft()
        if not (0 <= y < height and 0 <= x < width) or mask[y, x] or outside[y, x]:
            continue
        outside[y, x] = True
        queue.extend(((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)))
    return ~outside


def _hassod_kept(masks: list[np.ndarray], min_area: int, max_corners: int) -> list[int]:
    """HASSOD's tests (``hac/hac.py``), written out: area, then corners; returns kept indices."""
    kept = []
    for index, mask in enumerate(masks):
        if mask.sum() < min_area:
            continue
        if int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1]) > max_corners:
            continue
        kept.append(index)
    return kept


def _random_masks(rng: np.random.Generator, height: int, width: int, count: int) -> list[np.ndarray]:
    """Blobs, rings, noise, full frames and border bands: every corner count and hole kind."""
    masks = []
    yy, xx = np.mgrid[:height, :width]
    for index in range(count):
        kind = index % 5
        if kind == 0:  # disc or ring, anywhere (may touch the border)
            cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
            radius = rng.uniform(1, max(height, width) + 2)
            distance = np.hypot(yy - cy, xx - cx)
            mask = distance < radius
            if rng.random() < 0.6:
                mask &= distance >= radius * rng.uniform(0.2, 0.8)
        elif kind == 1:  # sparse or dense noise: holes touching diagonally, single-pixel holes
            mask = rng.random((height, width)) < rng.uniform(0.3, 0.95)
        elif kind == 2:  # the whole frame, possibly with holes
            mask = np.ones((height, width), dtype=bool)
            mask[rng.random((height, width)) < rng.uniform(0, 0.05)] = False
        elif kind == 3:  # a band along one or two sides (0 to 3 corners)
            mask = np.zeros((height, width), dtype=bool)
            mask[: int(rng.integers(1, height + 1)), :] = rng.random() < 0.5
            mask[:, : int(rng.integers(1, width + 1))] |= rng.random() < 0.5
            mask[int(rng.integers(0, height)) :, int(rng.integers(0, width)) :] |= rng.random() < 0.3
        else:  # a small box
            mask = np.zeros((height, width), dtype=bool)
            y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
            mask[y : y + int(rng.integers(1, 14)), x : x + int(rng.integers(1, 14))] = True
        masks.append(mask)
    return masks


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (5, 6), (31, 47), (64, 64)])
def test_fill_holes_matches_scipy_and_a_flood_fill(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for mask in _random_masks(rng, *shape, count=40):
        expected = ndimage.binary_fill_holes(mask)
        np.testing.assert_array_equal(fill_holes(mask), expected)
        if mask.size <= 31 * 47:
            np.testing.assert_array_equal(expected, _flood_fill_holes(mask))


def test_fill_holes_uses_4_connectivity() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    mask[2:5, 2:5] = False  # a 3 x 3 hole
    mask[1, 1] = False  # a pixel of the ring's corner, touching the outside only at its side
    mask[2, 2] = True  # the hole's corner now touches (1, 1) diagonally
    filled = fill_holes(mask)
    assert filled[2:5, 2:5].all()  # a diagonal contact does not connect the hole to the outside
    assert not filled[1, 1]  # (1, 1) is 4-connected to the outside
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))


@pytest.mark.parametrize(("corners", "kept"), [(0, True), (1, True), (2, True), (3, False), (4, False)])
def test_masks_with_three_or_four_corners_are_dropped(corners: int, kept: bool) -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[8:12, 8:20] = True
    for y, x in [(0, 0), (0, 29), (19, 0), (19, 29)][:corners]:
        mask[y, x] = True
    assert count_corners(mask) == corners
    result = clean_masks([encode_mask(mask)], min_area=0, max_corners=2, use_hole_filling=False)
    assert (len(result.masks) == 1) is kept
    assert result.num_corner == int(not kept)


def test_clean_masks_is_hassods_loop() -> None:
    rng = np.random.default_rng(0)
    masks = [m for m in _random_masks(rng, 40, 56, count=150) if m.any()]
    rles = [encode_mask(m) for m in masks]
    corner_counts = [count_corners(m) for m in masks]
    assert set(corner_counts) == {0, 1, 2, 3, 4}  # every case occurs
    for min_area, max_corners, fill in [(100, 2, True), (0, 4, False), (1, 0, True), (500, 3, False)]:
        expected = _hassod_kept(masks, min_area, max_corners)
        result = clean_masks(rles, min_area=min_area, max_corners=max_corners, use_hole_filling=fill)
        np.testing.assert_array_equal(result.kept_indices, expected)
        assert result.num_too_small == sum(m.sum() < min_area for m in masks)
        assert result.num_corner == sum(
            m.sum() >= min_area and c > max_corners for m, c in zip(masks, corner_counts, strict=True)
        )
        for index, rle in zip(expected, result.masks, strict=True):
            want = ndimage.binary_fill_holes(masks[index]) if fill else masks[index]
            np.testing.assert_array_equal(decode_mask(rle), want)
        assert result.num_filled == (
            sum(not np.array_equal(ndimage.binary_fill_holes(masks[i]), masks[i]) for i in expected)
            if fill
            else 0
        )
    assert clean_masks([]).masks == []


def test_a_small_ring_is_dropped_even_if_its_filled_disc_is_not_small() -> None:
    ring = np.zeros((30, 30), dtype=bool)
    ring[5:17, 5:17] = True
    ring[7:15, 7:15] = False  # 144 - 64 = 80 px; filled: 144 px
    assert clean_masks([encode_mask(ring)], min_area=100, use_hole_filling=True).masks == []
    (filled,) = clean_masks([encode_mask(ring)], min_area=80, use_hole_filling=True).masks
    assert decode_mask(filled).sum() == 144
