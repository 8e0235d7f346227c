"""The mask toolkit against brute-force numpy on random masks, including empty and 1-pixel ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sohes_hf import masks


def _random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Random masks of mixed kinds: blobs of random density, rectangles, empty and 1-pixel."""
    stack = np.zeros((count, height, width), dtype=bool)
    for index in range(count):
        kind = index % 4
        if kind == 0:
            stack[index] = rng.random((height, width)) < rng.uniform(0.05, 0.9)
        elif kind == 1:
            top, left = rng.integers(0, height), rng.integers(0, width)
            stack[
                index, top : top + rng.integers(1, height + 1), left : left + rng.integers(1, width + 1)
            ] = True
        elif kind == 2:
            stack[index, rng.integers(0, height), rng.integers(0, width)] = True
        # kind 3 stays empty
    return stack


def _brute_force_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([[int(np.logical_and(x, y).sum()) for y in b] for x in a], dtype=np.int64)


@pytest.fixture(params=[0, 1, 2])
def mask_pair(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    height, width = (int(v) for v in rng.integers(1, 24, size=2))
    return _random_masks(rng, 9, height, width), _random_masks(rng, 7, height, width)


def test_encode_decode_round_trip_is_json_safe(mask_pair: tuple[np.ndarray, np.ndarray]) -> None:
    stack, _ = mask_pair
    rles = masks.encode_masks(stack)
    assert json.loads(json.dumps(rles)) == rles
    assert all(isinstance(rle["counts"], str) for rle in rles)
    np.testing.assert_array_equal(masks.decode_masks(rles), stack)
    np.testing.assert_array_equal(masks.decode_mask(masks.encode_mask(stack[0])), stack[0])


def test_areas_and_boxes_match_brute_force(mask_pair: tuple[np.ndarray, np.ndarray]) -> None:
    stack, _ = mask_pair
    rles = masks.encode_masks(stack)
    np.testing.assert_array_equal(masks.mask_areas(rles), stack.sum(axis=(1, 2)))
    boxes = masks.mask_boxes_xywh(rles)
    for mask, box in zip(stack, boxes, strict=True):
        if not mask.any():
            np.testing.assert_array_equal(box, 0)
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        expected = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
        np.testing.assert_array_equal(box, expected)


def test_pairwise_iou_coverage_and_intersection_match_brute_force(
    mask_pair: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = mask_pair
    rles_a, rles_b = masks.encode_masks(a), masks.encode_masks(b)
    inter = _brute_force_intersections(a, b)
    area_a, area_b = a.sum(axis=(1, 2))[:, None], b.sum(axis=(1, 2))[None, :]
    union = area_a + area_b - inter
    expected_iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    expected_coverage = np.divide(inter, area_a, out=np.zeros(inter.shape), where=area_a > 0)
    np.testing.assert_allclose(masks.pairwise_iou(rles_a, rles_b), expected_iou, atol=1e-12)
    np.testing.assert_allclose(masks.pairwise_coverage(rles_a, rles_b), expected_coverage, atol=1e-12)
    np.testing.assert_array_equal(masks.intersection_areas(rles_a, rles_b), inter)


def test_empty_lists_give_empty_results() -> None:
    one = masks.encode_masks(np.ones((1, 3, 4), dtype=bool))
    assert masks.pairwise_iou([], one).shape == (0, 1)
    assert masks.pairwise_coverage(one, []).shape == (1, 0)
    assert masks.mask_areas([]).shape == (0,)
    assert masks.mask_boxes_xywh([]).shape == (0, 4)
    assert masks.mask_nms([], [], 0.5).shape == (0,)
    assert masks.decode_masks([], height=3, width=4).shape == (0, 3, 4)
    assert masks.encode_masks(np.zeros((0, 3, 4), dtype=bool)) == []


def _brute_force_nms(stack: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            union = np.logical_or(stack[i], stack[j]).sum()
            iou = np.logical_and(stack[i], stack[j]).sum() / union if union else 0.0
            if iou > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_mask_nms_matches_brute_force(threshold: float) -> None:
    rng = np.random.default_rng(7)
    stack = _random_masks(rng, 24, 12, 10)
    stack[5] = stack[1]  # exact duplicate
    scores = rng.choice([0.1, 0.5, 0.9], size=len(stack))  # many ties: order by index
    kept = masks.mask_nms(masks.encode_masks(stack), scores, threshold)
    assert kept.dtype == np.int64
    assert kept.tolist() == _brute_force_nms(stack, scores, threshold)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 0.99])
def test_mask_nms_of_hundreds_of_near_duplicates_matches_brute_force(threshold: float) -> None:
    """Many masks over 255 (pycocotools' chunking), grown from shared seeds so IoUs straddle the threshold."""
    rng = np.random.default_rng(11)
    seeds = rng.random((12, 48, 48)) < 0.3
    stack = np.zeros((300, 48, 48), dtype=bool)
    for index in range(len(stack)):
        y, x = rng.integers(0, 40, 2)
        h, w = rng.integers(1, 20, 2)
        stack[index, y : y + h, x : x + w] = True
        if index % 3 == 0:  # a noisy copy of a seed pattern: IoUs near 1 with its siblings
            stack[index] = seeds[index % 12] ^ (rng.random((48, 48)) < 0.01)
    stack[7] = stack[3]
    stack[9] = False  # an empty mask
    scores = rng.choice([0.2, 0.4, 0.6, 0.8], size=len(stack))
    kept = masks.mask_nms(masks.encode_masks(stack), scores, threshold)
    assert kept.tolist() == _brute_force_nms(stack, scores, threshold)


def test_uncompressed_rle_is_normalized() -> None:
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2] = True
    # Column-major runs: 9 zeros, 2 ones, 9 zeros.
    uncompressed = {"size": [4, 5], "counts": [9, 2, 9]}
    normalized = masks.normalize_rle(uncompressed)
    assert normalized == masks.encode_mask(mask)
    np.testing.assert_array_equal(masks.decode_mask(uncompressed), mask)
    bytes_form = {"size": [4, 5], "counts": normalized["counts"].encode()}
    assert masks.normalize_rle(bytes_form) == normalized


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"size": [4, 5]}, "'size' and 'counts'"),
        ({"size": [4], "counts": "0"}, "'size'"),
        ({"size": [4, -5], "counts": "0"}, "'size'"),
        ({"size": [4, 5], "counts": 12}, "'counts'"),
        ({"size": [4, 5], "counts": [9, 2, 8]}, "sum to 19"),
        ({"size": [4, 5], "counts": [9, -2, 13]}, "non-negative"),
        ({"size": [4, 5], "counts": "zzz"}, "do not describe"),
        ({"size": [64, 64], "counts": "0"}, "do not describe"),
        ("not a dict", "COCO RLE dict"),
    ],
)
def test_malformed_rle_raises_value_error(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        masks.normalize_rle(bad)  # type: ignore[arg-type]


def test_bad_arrays_and_mismatched_sizes_raise() -> None:
    with pytest.raises(ValueError, match="bool or 0/1"):
        masks.encode_masks(np.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        masks.encode_masks(np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        masks.encode_mask(np.zeros((2, 2, 2), dtype=bool))
    small = masks.encode_masks(np.ones((1, 2, 2), dtype=bool))
    large = masks.encode_masks(np.ones((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="different sizes"):
        masks.pairwise_iou(small, large)
    with pytest.raises(ValueError, match="different sizes"):
        masks.mask_nms(small + large, [1.0, 0.5], 0.5)
    with pytest.raises(ValueError, match="scores"):
        masks.mask_nms(small, [1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        masks.mask_nms(small, [1.0], 1.5)
    with pytest.raises(ValueError, match="sequence of RLE"):
        masks.mask_areas(small[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="height and width"):
        masks.decode_masks([])
    # 0/1 integer arrays are accepted as binary masks
    np.testing.assert_array_equal(
        masks.decode_masks(masks.encode_masks(np.ones((1, 2, 2), dtype=np.uint8))), True
    )


def test_batched_normalization_names_the_bad_item_and_handles_many_masks() -> None:
    rng = np.random.default_rng(3)
    stack = _random_masks(rng, 300, 9, 7)  # pycocotools' area overflows at 256 masks in one call
    rles = masks.encode_masks(stack)
    np.testing.assert_array_equal(masks.mask_areas(rles), stack.sum(axis=(1, 2)))
    other_size = masks.encode_mask(np.ones((2, 3), dtype=bool))
    mixed = [*rles[:3], {"size": [9, 7], "counts": [60, 3]}, other_size]
    normalized = masks.normalize_rles(mixed)
    assert normalized[:3] == rles[:3]
    np.testing.assert_array_equal(masks.decode_mask(normalized[3]).ravel(order="F")[-3:], True)
    assert normalized[4] == other_size
    truncated = {"size": [9, 7], "counts": rles[0]["counts"][:-1]}
    with pytest.raises(ValueError, match=r"preds\[2\]: compressed RLE counts"):
        masks.normalize_rles([rles[1], rles[2], truncated], name="preds")
    with pytest.raises(ValueError, match="ASCII"):
        masks.normalize_rle({"size": [9, 7], "counts": "é"})


def _compressed(runs: list[int]) -> str:
    """pycocotools' rleToString written out here (independent of the code under test)."""
    out = []
    for j, run in enumerate(runs):
        x = run - runs[j - 2] if j > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


@pytest.mark.parametrize(
    "runs, valid",
    [
        ([3, 4, 5, 4], True),  # 16 pixels of a 4x4 image
        ([3, 4, 5, 5], False),  # sums to 17: wrong total
        ([10, 10, -4], False),  # a negative run that still sums to 16
        ([20, -4], False),  # a run larger than the image
    ],
)
def test_compressed_rle_run_checks(runs: list[int], valid: bool) -> None:
    rle = {"size": [4, 4], "counts": _compressed(runs)}
    if valid:
        assert masks.mask_areas([rle]).tolist() == [sum(runs[1::2])]
        assert masks.normalize_rles([rle, rle])[1]["counts"] == rle["counts"]
    else:
        with pytest.raises(ValueError, match=r"rles\[1\]: compressed RLE counts"):
            masks.normalize_rles([{"size": [4, 4], "counts": _compressed([3, 4, 5, 4])}, rle])


@pytest.mark.parametrize("counts", ["\x7f\x7f", "", "Z", "@@@@@@@@@@@@@@@@0"])
def test_garbage_compressed_counts_are_refused(counts: str) -> None:
    with pytest.raises(ValueError, match="compressed RLE counts"):
        masks.normalize_rles([{"size": [4, 4], "counts": counts}])
