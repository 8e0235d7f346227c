"""Tests of step 3 of self-exploration: refinement and the before/after IoU filter (section 3.1)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sohes_hf.masks import decode_mask, encode_mask
from sohes_hf.pseudo_labeling.refinement import (
    CascadePSPRefiner,
    IdentityRefiner,
    MaskRefiner,
    build_refiner,
    refine_and_filter,
)


class ShiftRefiner(MaskRefiner):
    """Moves every mask right by a fixed number of pixels (a refiner that disagrees by a known amount)."""

    name = "shift"

    def __init__(self, shift: int) -> None:
        self.shift = shift

    def refine(self, image: np.ndarray, masks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for rle in masks:
            mask = decode_mask(rle)
            moved = np.zeros_like(mask)
            moved[:, self.shift :] = mask[:, : mask.shape[1] - self.shift]
            out.append(encode_mask(moved))
        return out


def _squares() -> list[dict[str, Any]]:
    masks = []
    for side in (4, 8, 16):
        mask = np.zeros((32, 48), dtype=bool)
        mask[2 : 2 + side, 2 : 2 + side] = True
        masks.append(encode_mask(mask))
    return masks


def _brute_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def test_identity_keeps_everything() -> None:
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    result = refine_and_filter(image, _squares(), IdentityRefiner(), iou_threshold=0.5)
    assert result.masks == _squares()
    np.testing.assert_array_equal(result.kept_indices, [0, 1, 2])
    np.testing.assert_allclose(result.ious, 1.0)


def test_masks_with_poor_iou_are_dropped() -> None:
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    masks = _squares()
    result = refine_and_filter(image, masks, ShiftRefiner(3), iou_threshold=0.5)
    moved = ShiftRefiner(3).refine(image, masks)
    expected_ious = [_brute_iou(decode_mask(a), decode_mask(b)) for a, b in zip(masks, moved, strict=True)]
    np.testing.assert_allclose(result.ious, expected_ious)
    # side 4 shifted by 3: IoU 1/7; side 8: 5/11; side 16: 13/19 -> only the largest passes 0.5
    np.testing.assert_allclose(expected_ious, [1 / 7, 5 / 11, 13 / 19])
    np.testing.assert_array_equal(result.kept_indices, [2])
    assert result.masks == [moved[2]]


def test_bad_arguments_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="iou_threshold"):
        refine_and_filter(image, _squares(), IdentityRefiner(), iou_threshold=1.5)
    with pytest.raises(ValueError, match="image"):
        refine_and_filter(image.astype(np.float32), _squares(), IdentityRefiner(), iou_threshold=0.5)
    with pytest.raises(ValueError, match="backend"):
        build_refiner("densecrf")
    with pytest.raises(FileNotFoundError, match="weights_folder"):
        CascadePSPRefiner(weights_folder=tmp_path)
    with pytest.raises(ValueError, match="max_side"):
        CascadePSPRefiner(weights_folder=tmp_path, max_side=32)
    monkeypatch.setitem(sys.modules, "segmentation_refinement", None)
    with pytest.raises(ImportError, match=r"sohes-hf\[refine\]"):
        CascadePSPRefiner(weights_folder=tmp_path)
