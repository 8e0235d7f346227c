"""Targets: ancestor matrices from parent links and masks resized like the image (section 3.2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sohes_hf.masks import encode_masks
from sohes_hf.modeling.targets import ancestor_matrix, prepare_targets, resize_masks, validate_parents


def _random_parents(rng: np.random.Generator, num: int) -> list[int]:
    ordered = [-1] + [int(rng.integers(-1, node)) for node in range(1, num)]
    permutation = rng.permutation(num)
    parents = [-1] * num
    for node, parent in enumerate(ordered):
        if parent >= 0:
            parents[int(permutation[node])] = int(permutation[parent])
    return parents


def _ancestors_by_walking(parents: list[int]) -> np.ndarray:
    """Brute force: follow each node's parent chain and mark every node met."""
    num = len(parents)
    matrix = np.zeros((num, num), dtype=bool)
    for node in range(num):
        current = parents[node]
        while current != -1:
            matrix[current, node] = True
            current = parents[current]
    return matrix


@pytest.mark.parametrize("seed", range(6))
def test_ancestor_matrix_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parents = _random_parents(rng, int(rng.integers(1, 50)))
    np.testing.assert_array_equal(ancestor_matrix(parents), _ancestors_by_walking(parents))


def test_ancestor_matrix_small_example_and_empty() -> None:
    # 0 is the root, 1 its child, 2 a child of 1; 3 is a separate root.
    expected = np.array(
        [[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        dtype=bool,
    )
    np.testing.assert_array_equal(ancestor_matrix([-1, 0, 1, -1]), expected)
    assert ancestor_matrix([]).shape == (0, 0)


@pytest.mark.parametrize(
    ("parents", "message"),
    [
        ([-1, 5], r"parents\[1\] = 5 is outside"),
        ([-1, -2], r"parents\[1\] = -2 is outside"),
        ([0], r"parents\[0\] points to itself"),
        ([1, 2, 0], "cycle"),
        ([-1, 2, 1], "cycle"),
        ([0.5, -1], "int"),
    ],
)
def test_invalid_parents_raise(parents: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_parents(parents, len(parents))


def test_parents_length_must_match() -> None:
    with pytest.raises(ValueError, match="2 entries for 3 masks"):
        validate_parents([-1, 0], 3)


def test_resize_masks_matches_cv2_nearest_exact_and_pads_with_zeros() -> None:
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(3, 37, 53)) > 0.6
    resized = resize_masks(encode_masks(masks), (37, 53), (45, 64), (64, 96))
    assert resized.shape == (3, 64, 96)
    assert resized.dtype.is_floating_point
    for index in range(3):
        reference = cv2.resize(masks[index].astype(np.uint8), (64, 45), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(resized[index, :45, :64].numpy(), reference)
    assert resized[:, 45:, :].sum() == 0 and resized[:, :, 64:].sum() == 0


def test_prepare_targets_accepts_uncompressed_rle() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 1:7] = True
    fortran = np.asfortranarray(mask.astype(np.uint8))
    compressed = coco_mask.encode(fortran)
    uncompressed = {"size": [8, 8], "counts": _uncompressed_counts(mask)}
    assert coco_mask.decode(compressed).sum() == mask.sum()
    labels = prepare_targets({"masks": [uncompressed], "parents": [-1]}, (8, 8), (8, 8), (16, 16))
    np.testing.assert_array_equal(labels.mask_labels[0, :8, :8].numpy(), mask.astype(np.float32))
    assert labels.class_labels.tolist() == [0]
    assert labels.ancestor_labels.tolist() == [[0.0]]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths over the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def test_prepare_targets_errors_name_the_target() -> None:
    rles = encode_masks(np.ones((1, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"targets\[2\]\['masks'\]\[0\]: RLE size"):
        prepare_targets({"masks": rles, "parents": [-1]}, (5, 4), (5, 4), (8, 8), name="targets[2]")
    with pytest.raises(ValueError, match=r"targets\[2\]\['parents'\]"):
        prepare_targets({"masks": rles, "parents": [3]}, (4, 4), (4, 4), (8, 8), name="targets[2]")
    with pytest.raises(ValueError, match="missing key"):
        prepare_targets({"masks": rles}, (4, 4), (4, 4), (8, 8))
    with pytest.raises(TypeError, match="target"):
        prepare_targets([rles], (4, 4), (4, 4), (8, 8))  # type: ignore[arg-type]
