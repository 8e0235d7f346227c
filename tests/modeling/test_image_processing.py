"""SohesImageProcessor: preprocessing geometry, targets, save/load and hierarchical post-processing."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.masks import decode_mask, encode_masks
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor, register_image_processor

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@dataclass
class FakeOutputs:
    """Stands in for SohesModelOutput: only the three logits post-processing reads."""

    class_queries_logits: torch.Tensor
    masks_queries_logits: torch.Tensor
    ancestor_logits: torch.Tensor


# ----------------------------------------------------------------------------------- preprocess


def test_geometry_and_normalisation_of_a_constant_image() -> None:
    processor = SohesImageProcessor(size={"longest_edge": 64})
    colour = np.array([10, 128, 250], dtype=np.uint8)
    image = np.broadcast_to(colour, (30, 50, 3)).copy()
    batch = processor(image, return_tensors="pt")
    # 30 x 50 -> longest side 64: 30 * 64 / 50 = 38.4 -> 38; padded to the 64 x 64 square.
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert batch["pixel_mask"].shape == (1, 64, 64)
    mask = batch["pixel_mask"][0]
    assert mask[:38, :64].all() and mask[38:].sum() == 0
    values = batch["pixel_values"][0].numpy()
    expected = (colour / 255.0 - MEAN) / STD
    for channel in range(3):
        np.testing.assert_allclose(values[channel, :38, :64], expected[channel], atol=1e-5)
    assert np.all(values[:, 38:, :] == 0)


def test_resize_matches_independent_bilinear_resize() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(100, 80, 3), dtype=np.uint8)
    processor = SohesImageProcessor(size={"longest_edge": 64})
    assert processor.get_resized_size(100, 80) == (64, 51)  # 80 * 0.64 = 51.2
    values = processor(image, return_tensors="pt")["pixel_values"][0]
    source = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    reference = torch.nn.functional.interpolate(
        source, size=(64, 51), mode="bilinear", align_corners=False, antialias=True
    )[0].numpy()
    reference = (reference / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    # torchvision resizes uint8 in fixed point and rounds to integers: at most one grey level off.
    difference = np.abs(values[:, :64, :51].numpy() - reference) * STD[:, None, None] * 255
    assert difference.max() <= 1.0 + 1e-3
    assert difference.mean() < 0.5
    assert torch.all(values[:, :, 51:] == 0)


def test_pil_numpy_and_torch_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    processor = SohesImageProcessor(size={"longest_edge": 32})
    batch = processor(
        [Image.fromarray(image), image, torch.from_numpy(image).permute(2, 0, 1).contiguous()],
        return_tensors="pt",
    )
    values = batch["pixel_values"]
    assert values.shape == (3, 3, 32, 32)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])


def test_padded_size_rounds_up_to_size_divisor_and_validates() -> None:
    assert SohesImageProcessor(size={"longest_edge": 100}).get_padded_size() == (128, 128)
    custom = SohesImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 96})
    assert custom(np.zeros((64, 64, 3), dtype=np.uint8))["pixel_values"].shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="pad_size"):
        SohesImageProcessor(size={"longest_edge": 64}, pad_size={"height": 80, "width": 80})
    with pytest.raises(ValueError, match="pad_size"):
        SohesImageProcessor(size={"longest_edge": 64}, pad_size={"height": 32, "width": 64})
    with pytest.raises(ValueError, match="size"):
        SohesImageProcessor(size={"height": 64, "width": 64})


def test_targets_are_aligned_with_the_resized_image() -> None:
    rng = np.random.default_rng(2)
    masks = rng.uniform(size=(3, 30, 50)) > 0.5
    parents = [-1, 0, 1]
    processor = SohesImageProcessor(size={"longest_edge": 64})
    batch = processor(
        [np.zeros((30, 50, 3), dtype=np.uint8), np.zeros((20, 20, 3), dtype=np.uint8)],
        targets=[{"masks": encode_masks(masks), "parents": parents}, {"masks": [], "parents": []}],
        return_tensors="pt",
    )
    labels = batch["mask_labels"][0]
    assert labels.shape == (3, 64, 64) and labels.dtype == torch.float32
    for index in range(3):
        reference = cv2.resize(masks[index].astype(np.uint8), (64, 38), interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(labels[index, :38, :64].numpy(), reference)
    assert labels[:, 38:].sum() == 0
    assert batch["class_labels"][0].tolist() == [0, 0, 0]
    expected_ancestors = [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert batch["ancestor_labels"][0].tolist() == expected_ancestors
    assert batch["mask_labels"][1].shape == (0, 64, 64)
    assert batch["class_labels"][1].shape == (0,)
    assert batch["ancestor_labels"][1].shape == (0, 0)


def test_target_errors_name_the_image() -> None:
    processor = SohesImageProcessor(size={"longest_edge": 32})
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    good = {"masks": encode_masks(np.ones((2, 8, 8), dtype=bool)), "parents": [-1, 0]}
    cyclic = {"masks": good["masks"], "parents": [1, 0]}
    with pytest.raises(ValueError, match=r"targets\[1\]\['parents'\].*cycle"):
        processor(images, targets=[good, cyclic])
    with pytest.raises(ValueError, match=r"targets\[1\]\['parents'\]\[1\] = 7"):
        processor(images, targets=[good, {"masks": good["masks"], "parents": [-1, 7]}])
    with pytest.raises(ValueError, match="2 images"):
        processor(images, targets=[good])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    processor = SohesImageProcessor(size={"longest_edge": 96}, pad_size={"height": 96, "width": 128})
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = SohesImageProcessor.from_pretrained(tmp_path)
    assert loaded.get_padded_size() == (96, 128)
    assert loaded.size.longest_edge == 96
    image = np.random.default_rng(3).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    torch.testing.assert_close(processor(image)["pixel_values"], loaded(image)["pixel_values"])


def test_auto_image_processor_after_registration(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    from sohes_hf.modeling.configuration_sohes import SohesConfig

    register_image_processor()
    register_image_processor()  # idempotent
    SohesConfig().save_pretrained(tmp_path)
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, SohesImageProcessor)
    assert loaded.get_padded_size() == (64, 64)


# -------------------------------------------------------------------------------- post-process


def _bilinear_1d(values: np.ndarray, out_len: int) -> np.ndarray:
    """Half-pixel (align_corners=False) linear interpolation along one axis, from its definition."""
    in_len = values.shape[0]
    result = np.empty(out_len)
    for x in range(out_len):
        source = max((x + 0.5) * in_len / out_len - 0.5, 0.0)
        left = min(math.floor(source), in_len - 1)
        right = min(left + 1, in_len - 1)
        weight = source - left
        result[x] = (1 - weight) * values[left] + weight * values[right]
    return result


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _column_masks(columns: list[np.ndarray]) -> torch.Tensor:
    """(Q, 16, 16) mask logits that vary only along columns (so each row is the 1-D profile)."""
    return torch.tensor(np.stack([np.tile(column, (16, 1)) for column in columns]), dtype=torch.float32)


def _chain_outputs(class_logits: np.ndarray, columns: list[np.ndarray], ancestors: np.ndarray) -> FakeOutputs:
    return FakeOutputs(
        class_queries_logits=torch.tensor(class_logits, dtype=torch.float32)[None],
        masks_queries_logits=_column_masks(columns)[None],
        ancestor_logits=torch.tensor(ancestors, dtype=torch.float32)[None],
    )


@pytest.mark.parametrize("target_size", [(32, 64), (60, 120)])
def test_scores_and_masks_follow_the_manual_formula(target_size: tuple[int, int]) -> None:
    # Padded input 64 x 64, mask logits at 1/4 (16 x 16). Target (32, 64) or (60, 120) both resize
    # to a valid region of 32 x 64 (rows 0-31 of the padded input).
    processor = SohesImageProcessor(size={"longest_edge": 64})
    whole = np.full(16, 6.0)
    left = np.where(np.arange(16) < 8, 4.0, -4.0)
    quarter = np.where(np.arange(16) < 4, 3.0, -3.0)
    class_logits = np.array([[3.0, 0.0], [2.0, 0.0], [1.5, 0.0]])
    ancestors = np.full((3, 3), -8.0)
    ancestors[0, 1] = ancestors[0, 2] = ancestors[1, 2] = 8.0
    outputs = _chain_outputs(class_logits, [whole, left, quarter], ancestors)
    entities = processor.post_process_hierarchical_segmentation(outputs, [target_size], threshold=0.0)[0]

    height, width = target_size
    class_probs = np.exp(class_logits[:, 0]) / np.exp(class_logits).sum(1)
    expected = []
    for query, column in enumerate([whole, left, quarter]):
        profile = _bilinear_1d(column, 64)  # 16 -> padded width 64; the crop keeps all 64 columns
        profile = _bilinear_1d(profile, width)  # valid width 64 -> target width
        inside = profile > 0
        expected.append((class_probs[query] * _sigmoid(profile[inside]).mean(), inside))
    # Scores 0.95 x ~1, 0.88 x ..., 0.82 x ...: the chain 0 -> 1 -> 2 is also score order.
    assert [e.id for e in entities] == [0, 1, 2]
    assert [e.parent_id for e in entities] == [None, 0, 1]
    assert [e.depth for e in entities] == [0, 1, 2]
    assert [e.children for e in entities] == [[1], [2], []]
    for entity, (score, inside) in zip(entities, expected, strict=True):
        assert entity.score == pytest.approx(score, rel=1e-5)
        mask = decode_mask(entity.mask)
        assert mask.shape == target_size
        np.testing.assert_array_equal(mask, np.tile(inside, (height, 1)))
        assert entity.area == int(inside.sum()) * height
        assert entity.bbox == (0.0, 0.0, float(inside.sum()), float(height))


def test_threshold_max_instances_and_empty_masks() -> None:
    processor = SohesImageProcessor(size={"longest_edge": 64})
    positive = np.full(16, 5.0)
    columns = [positive, positive, np.full(16, -5.0), positive, positive]
    # Class probabilities: 0.98, 0.5, 0.98 (empty mask), 0.12 (below threshold), 0.88.
    class_logits = np.array([[4.0, 0.0], [0.0, 0.0], [4.0, 0.0], [-2.0, 0.0], [2.0, 0.0]])
    outputs = _chain_outputs(class_logits, columns, np.zeros((5, 5)))
    all_kept = processor.post_process_hierarchical_segmentation(outputs, [(32, 64)], threshold=0.3)[0]
    mask_score = _sigmoid(5.0)
    class_probs = 1.0 / (1.0 + np.exp(-class_logits[:, 0]))
    expected_scores = sorted([class_probs[i] * mask_score for i in (0, 1, 4)], reverse=True)
    # ancestor logits 0 -> probability 0.5, not above 0.5: all roots, ordered by score.
    assert [e.score for e in all_kept] == pytest.approx(expected_scores, rel=1e-5)
    assert all(e.parent_id is None and e.depth == 0 for e in all_kept)
    top_two = processor.post_process_hierarchical_segmentation(
        outputs, [(32, 64)], threshold=0.3, max_instances=2
    )[0]
    assert [e.score for e in top_two] == pytest.approx(expected_scores[:2], rel=1e-5)
    strict = processor.post_process_hierarchical_segmentation(outputs, [(32, 64)], threshold=0.9)[0]
    assert [e.score for e in strict] == pytest.approx(expected_scores[:1], rel=1e-5)


def test_non_finite_logits_do_not_crash() -> None:
    processor = SohesImageProcessor(size={"longest_edge": 64})
    generator = torch.Generator().manual_seed(0)
    ancestors = torch.randn(2, 12, 12, generator=generator)
    ancestors[0, :4, :4] = float("nan")
    ancestors[0, 5, :] = float("inf")
    ancestors[1] = float("inf")
    class_logits = torch.randn(2, 12, 2, generator=generator)
    class_logits[1, 0] = float("nan")
    outputs = FakeOutputs(class_logits, torch.randn(2, 12, 16, 16, generator=generator), ancestors)
    results = processor.post_process_hierarchical_segmentation(outputs, torch.tensor([[40, 64], [64, 30]]))
    for entities, size in zip(results, [(40, 64), (64, 30)], strict=True):
        for position, entity in enumerate(entities):
            assert entity.id == position
            assert entity.parent_id is None or entity.parent_id < position
            assert tuple(entity.mask["size"]) == size
            assert entity.area > 0 and entity.score >= 0.5


def test_post_process_validates_arguments() -> None:
    processor = SohesImageProcessor(size={"longest_edge": 64})
    outputs = FakeOutputs(torch.zeros(1, 3, 2), torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_hierarchical_segmentation(outputs, [(10, 10), (10, 10)])
    with pytest.raises(ValueError, match="max_instances"):
        processor.post_process_hierarchical_segmentation(outputs, [(10, 10)], max_instances=0)
    with pytest.raises(ValueError, match="threshold"):
        processor.post_process_hierarchical_segmentation(outputs, [(10, 10)], threshold=2.0)
    bad = FakeOutputs(torch.zeros(1, 3, 2), torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="ancestor_logits"):
        processor.post_process_hierarchical_segmentation(bad, [(10, 10)])
    with pytest.raises(TypeError, match="class_queries_logits"):
        processor.post_process_hierarchical_segmentation(object(), [(10, 10)])


def test_entity_tree_nests_post_processed_entities() -> None:
    from sohes_hf.structures import entity_tree

    processor = SohesImageProcessor(size={"longest_edge": 64})
    whole = np.full(16, 6.0)
    left = np.where(np.arange(16) < 8, 4.0, -4.0)
    right = np.where(np.arange(16) >= 8, 4.0, -4.0)
    ancestors = np.full((3, 3), -8.0)
    ancestors[0, 1] = ancestors[0, 2] = 8.0
    class_logits = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    outputs = _chain_outputs(class_logits, [whole, left, right], ancestors)
    entities = processor.post_process_hierarchical_segmentation(outputs, [(32, 64)], threshold=0.0)[0]
    roots = entity_tree(entities)
    assert len(roots) == 1 and roots[0].entity.id == 0
    # Siblings ordered by score: query 2 (right half) before query 1 (left half).
    assert [node.entity.bbox[0] for node in roots[0].children] == [32.0, 0.0]
    assert [node.entity.depth for node in roots[0].children] == [1, 1]
    assert entities[0].to_dict()["children"] == [1, 2]
    late_parent = dataclasses.replace(entities[1], parent_id=2)
    with pytest.raises(ValueError, match="parents must precede children"):
        entity_tree([entities[0], late_parent, entities[2]])
    with pytest.raises(ValueError, match=r"entities\[0\]\.id is 1"):
        entity_tree([entities[1], entities[0]])


def test_more_than_255_entities_keep_exact_areas() -> None:
    # 300 queries survive; each mask is a column band whose width grows with the query index.
    processor = SohesImageProcessor(size={"longest_edge": 32})
    num = 300
    class_logits = torch.zeros(1, num, 2)
    class_logits[0, :, 0] = 8.0
    masks = torch.full((1, num, 8, 8), -10.0)
    for query in range(num):
        masks[0, query, :, : 1 + query % 8] = 10.0
    outputs = FakeOutputs(class_logits, masks, torch.full((1, num, num), -10.0))
    entities = processor.post_process_hierarchical_segmentation(outputs, [(32, 32)], max_instances=1000)[0]
    assert len(entities) == num
    for entity in entities:
        assert entity.area == int(decode_mask(entity.mask).sum())


def test_round_trip_through_the_tiny_model() -> None:
    """Processor output feeds the real model, and its outputs post-process at original sizes."""
    from sohes_hf.modeling import SohesForHierarchicalSegmentation
    from sohes_hf.modeling.testing_utils import tiny_sohes_config

    torch.manual_seed(0)
    model = SohesForHierarchicalSegmentation(tiny_sohes_config())
    processor = SohesImageProcessor(size={"longest_edge": 64})
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 40, 3), dtype=np.uint8),
    ]
    masks = np.zeros((2, 48, 64), dtype=bool)
    masks[0, :, :40] = True
    masks[1, :20, :20] = True
    targets = [{"masks": encode_masks(masks), "parents": [-1, 0]}, {"masks": [], "parents": []}]
    batch = processor(images, targets=targets, return_tensors="pt")
    model.train()
    assert torch.isfinite(model(**batch).loss)
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    results = processor.post_process_hierarchical_segmentation(outputs, [(48, 64), (64, 40)], threshold=0.0)
    for entities, size in zip(results, [(48, 64), (64, 40)], strict=True):
        assert len(entities) <= outputs.class_queries_logits.shape[1]
        for position, entity in enumerate(entities):
            assert entity.id == position and tuple(entity.mask["size"]) == size
            assert entity.parent_id is None or entity.parent_id < position
