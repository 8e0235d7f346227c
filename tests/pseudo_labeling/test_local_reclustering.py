"""Tests of step 2 of self-exploration: local re-clustering of small regions (section 3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from sohes_hf.masks import decode_mask, encode_mask
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.local_reclustering import (
    CropWindow,
    complete_subregions,
    crop_window,
    local_recluster,
    paste_grid_mask,
)


class ColorFeatures:
    """A transparent backbone: each patch's feature is its mean colour minus mid-gray.

    Distinct saturated colours then have negative cosine similarity (never merged) and equal
    colours similarity 1 (always merged), so the expected clustering is known exactly.
    """

    patch_size = 8

    def __init__(self) -> None:
        self.calls: list[int] = []

    def extract(self, images: Sequence[np.ndarray], size: int) -> np.ndarray:
        self.calls.append(len(images))
        grid = size // self.patch_size
        out = np.zeros((len(images), grid, grid, 3), dtype=np.float32)
        for i, image in enumerate(images):
            resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)
            out[i] = resized.reshape(grid, 8, grid, 8, 3).mean(axis=(1, 3)) - 127.5
        return out


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((30, 30, 4, 4), CropWindow(x0=16, y0=16, side=32)),  # min side, centred
        ((0, 2, 4, 4), CropWindow(x0=0, y0=0, side=32)),  # shifted inside at the corner
        ((10, 20, 20, 10), CropWindow(x0=0, y0=5, side=40)),  # context 2 x larger side, clipped x
        ((0, 0, 50, 50), CropWindow(x0=0, y0=0, side=64)),  # capped at the image size
    ],
)
def test_crop_window_is_a_square_inside_the_image_holding_the_box(
    box: tuple[int, int, int, int], expected: CropWindow
) -> None:
    window = crop_window(box, image_size=64, context=2.0, min_side=32)
    assert window == expected
    x, y, w, h = box
    assert window.x0 <= x and window.y0 <= y
    assert x + w <= window.x0 + window.side <= 64 and y + h <= window.y0 + window.side <= 64


def test_subregions_touching_inner_crop_sides_are_discarded() -> None:
    labels = np.array(
        [
            [0, 0, 0, 1],
            [0, 2, 2, 1],
            [0, 2, 2, 1],
            [0, 3, 3, 1],
        ]
    )
    inner = CropWindow(x0=8, y0=8, side=16)  # all four sides inside a 64 px image
    kept, discarded, _ = complete_subregions([labels], inner, image_size=64)
    assert discarded == 3 and len(kept) == 1
    np.testing.assert_array_equal(kept[0], labels == 2)
    corner = CropWindow(x0=48, y0=48, side=16)  # right and bottom sides on the image border
    kept, discarded, _ = complete_subregions([labels, labels], corner, image_size=64)
    # label 0 touches the inner top/left sides; 1 touches the inner top; 2 and 3 are complete
    assert discarded == 4
    assert [m.tolist() for m in kept] == [(labels == 2).tolist(), (labels == 3).tolist()]  # deduplicated


def _brute_force_complete_subregions(
    label_maps: list[np.ndarray], window: CropWindow, image_size: int, min_area: int = 0
) -> tuple[list[np.ndarray], int, int]:
    """The definition, one label at a time on full masks (areas from the pasted masks)."""
    inner = (
        window.y0 > 0,
        window.y0 + window.side < image_size,
        window.x0 > 0,
        window.x0 + window.side < image_size,
    )
    kept: list[np.ndarray] = []
    too_small: list[np.ndarray] = []
    discarded = 0
    for labels in label_maps:
        for label in range(int(labels.max()) + 1):
            mask = labels == label
            edges = (mask[0, :], mask[-1, :], mask[:, 0], mask[:, -1])
            if any(side and edge.any() for side, edge in zip(inner, edges, strict=True)):
                discarded += 1
            elif paste_grid_mask(mask, window, image_size).sum() < min_area:
                if mask.any() and not any(np.array_equal(mask, other) for other in too_small):
                    too_small.append(mask)
            elif not any(np.array_equal(mask, other) for other in kept):
                kept.append(mask)
    return kept, discarded, len(too_small)


@pytest.mark.parametrize("min_area", [0, 40, 150])
@pytest.mark.parametrize("seed", range(8))
def test_complete_subregions_matches_the_definition(seed: int, min_area: int) -> None:
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 9, (7, 7))
    maps = [fine, fine // 2, fine // 3 * 2, np.where(fine > 6, 12, fine)]  # repeats, unused labels
    window = CropWindow(
        x0=int(rng.choice([0, 8])), y0=int(rng.choice([0, 8])), side=int(rng.choice([16, 56]))
    )
    kept, discarded, num_too_small = complete_subregions(maps, window, image_size=64, min_area=min_area)
    expected, expected_discarded, expected_too_small = _brute_force_complete_subregions(
        maps, window, 64, min_area
    )
    assert discarded == expected_discarded
    assert num_too_small == expected_too_small
    assert [m.tolist() for m in kept] == [m.tolist() for m in expected]


def test_paste_grid_mask_is_nearest_upsampling() -> None:
    grid_mask = np.random.default_rng(0).random((4, 4)) > 0.5
    window = CropWindow(x0=8, y0=16, side=8)
    full = paste_grid_mask(grid_mask, window, image_size=32)
    expected = np.zeros((32, 32), dtype=bool)
    expected[16:24, 8:16] = np.kron(grid_mask, np.ones((2, 2), dtype=bool))
    np.testing.assert_array_equal(full, expected)


def _image_with_squares() -> tuple[np.ndarray, list[np.ndarray]]:
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    squares = []
    for (y, x), color in (((24, 24), (255, 0, 0)), ((0, 56), (0, 0, 255))):
        image[y : y + 8, x : x + 8] = color
        mask = np.zeros((64, 64), dtype=bool)
        mask[y : y + 8, x : x + 8] = True
        squares.append(mask)
    return image, squares


def _dilated(squares: list[np.ndarray]) -> list[dict]:
    """The small regions as step 1 would give them: boxes a bit larger than each square."""
    return [encode_mask(cv2.dilate(s.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) for s in squares]


def test_small_entities_are_rediscovered_in_local_crops() -> None:
    image, squares = _image_with_squares()
    config = SelfExplorationConfig(image_size=64, local_crop_size=64, small_region_area_ratio=1 / 32)
    extractor = ColorFeatures()
    result = local_recluster(image, _dilated(squares), extractor, config)
    assert extractor.calls == [2]  # both crops in one backbone batch
    assert result.num_crops == 2
    found = sorted((decode_mask(m) for m in result.masks), key=lambda m: int(np.argmax(m.any(axis=0))))
    # the centre square is complete in its crop; the corner one touches only image-border sides;
    # the gray background touches inner crop sides in both crops and is discarded
    assert len(found) == 2
    np.testing.assert_array_equal(found[0], squares[0])
    np.testing.assert_array_equal(found[1], squares[1])
    assert result.num_discarded > 0


def test_no_small_regions_and_bad_crop_size() -> None:
    image, _ = _image_with_squares()
    config = SelfExplorationConfig(image_size=64, local_crop_size=64)
    result = local_recluster(image, [], ColorFeatures(), config)
    assert result.masks == [] and result.num_crops == 0
    with pytest.raises(ValueError, match="local_crop_size"):
        local_recluster(image, [], ColorFeatures(), SelfExplorationConfig(image_size=64, local_crop_size=60))


def test_only_the_largest_small_regions_are_cropped_beyond_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    image, squares = _image_with_squares()
    small = _dilated(squares)  # the corner square's region is clipped by the image: the smaller one
    assert int(decode_mask(small[0]).sum()) > int(decode_mask(small[1]).sum())
    config = SelfExplorationConfig(
        image_size=64, local_crop_size=64, small_region_area_ratio=1 / 32, max_local_crops=1
    )
    extractor = ColorFeatures()
    with caplog.at_level("INFO", logger="sohes_hf.pseudo_labeling.local_reclustering"):
        result = local_recluster(image, small[::-1], extractor, config)  # the larger one given last
    assert extractor.calls == [1] and result.num_crops == 1 and result.num_uncropped == 1
    assert len(result.masks) == 1
    np.testing.assert_array_equal(decode_mask(result.masks[0]), squares[0])
    assert "only the 1 largest" in caplog.text


@pytest.mark.parametrize(("min_area", "num_kept"), [(0, 2), (64, 2), (65, 0)])
def test_subregions_below_the_minimum_area_are_dropped(min_area: int, num_kept: int) -> None:
    image, squares = _image_with_squares()  # both squares are 8 x 8 = 64 px
    config = SelfExplorationConfig(
        image_size=64, local_crop_size=64, small_region_area_ratio=1 / 32, min_subregion_area=min_area
    )
    result = local_recluster(image, _dilated(squares), ColorFeatures(), config)
    assert len(result.masks) == num_kept
    assert result.num_too_small == 2 - num_kept


@pytest.mark.parametrize("field", ["max_local_crops", "min_subregion_area"])
def test_local_limits_must_be_non_negative_integers(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SelfExplorationConfig(**{field: -1})
    with pytest.raises(ValueError, match=field):
        SelfExplorationConfig(**{field: 1.5})


def test_no_crops_at_all_with_a_zero_limit() -> None:
    image, squares = _image_with_squares()
    config = SelfExplorationConfig(image_size=64, local_crop_size=64, max_local_crops=0)
    extractor = ColorFeatures()
    result = local_recluster(image, _dilated(squares), extractor, config)
    assert result.masks == [] and result.num_crops == 0 and result.num_uncropped == 2
    assert extractor.calls == []
