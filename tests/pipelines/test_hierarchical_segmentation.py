"""The hierarchical-segmentation pipeline on a tiny random SOHES model saved to a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from sohes_hf.masks import decode_mask, mask_boxes_xywh
from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_sohes_config
from sohes_hf.pipelines import (
    TASK_NAME,
    HierarchicalSegmentationPipeline,
    as_tree,
    load_image_input,
    register_pipeline,
)

MODEL_SIZE = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_sohes")
    config = tiny_sohes_config(decoder_layers=1, num_queries=8)  # fewest layers: forwards dominate
    SohesForHierarchicalSegmentation(config).eval().save_pretrained(directory)
    SohesImageProcessor(size={"longest_edge": MODEL_SIZE}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def segmenter(model_dir: Path) -> HierarchicalSegmentationPipeline:
    register_pipeline()
    # local_files_only is passed on to the pipeline by transformers.pipeline; it must be accepted.
    return pipeline(TASK_NAME, model=str(model_dir), device="cpu", local_files_only=True)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def large_image_entities(segmenter: HierarchicalSegmentationPipeline) -> list[dict[str, Any]]:
    """Entities of a 100x150 image (larger than the 64 px model size), every query kept."""
    return segmenter(_image(100, 150, 0), threshold=0.0, ancestor_threshold=0.3)


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _check_forest(entities: list[dict[str, Any]], height: int, width: int, threshold: float = 0.0) -> None:
    """Structure and geometry of one image's entities, checked against pycocotools and numpy."""
    for position, entity in enumerate(entities):
        assert entity["id"] == position
        parent = entity["parent_id"]
        if parent is None:
            assert entity["depth"] == 0
        else:
            assert 0 <= parent < position, "parents must precede children"
            assert entity["depth"] == entities[parent]["depth"] + 1
            assert position in entities[parent]["children"]
        assert all(entities[child]["parent_id"] == position for child in entity["children"])
        mask = decode_mask(entity["mask"])
        assert mask.shape == (height, width), "masks come back at the original image size"
        assert entity["area"] == int(mask.sum()) > 0
        np.testing.assert_allclose(entity["bbox"], mask_boxes_xywh([entity["mask"]])[0])
        assert threshold <= entity["score"] <= 1.0


def test_pipeline_factory_loads_the_registered_class(segmenter: HierarchicalSegmentationPipeline) -> None:
    assert isinstance(segmenter, HierarchicalSegmentationPipeline)
    assert isinstance(segmenter.model, SohesForHierarchicalSegmentation)
    assert isinstance(segmenter.image_processor, SohesImageProcessor)


def test_single_large_image_gives_a_valid_forest_at_original_size(
    large_image_entities: list[dict[str, Any]],
) -> None:
    assert large_image_entities, "a random model at threshold 0 keeps its non-empty masks"
    _check_forest(large_image_entities, 100, 150)
    # Untrained ancestor logits sit near 0 (probability ~0.5), so 0.3 accepts relations.
    assert any(e["parent_id"] is not None for e in large_image_entities)


def test_pipeline_matches_processor_and_model_called_directly(
    segmenter: HierarchicalSegmentationPipeline,
) -> None:
    image = _image(90, 70, 1)
    processor = segmenter.image_processor
    inputs = processor(images=[image], return_tensors="pt")  # type: ignore[misc]
    with torch.no_grad():
        outputs = segmenter.model(**inputs)
    expected = processor.post_process_hierarchical_segmentation(  # type: ignore[union-attr]
        outputs, target_sizes=[(90, 70)], threshold=0.1
    )[0]
    got = segmenter(image, threshold=0.1)
    assert [e.to_dict() for e in expected] == got


def test_batches_of_mixed_inputs_match_single_calls(
    segmenter: HierarchicalSegmentationPipeline, tmp_path: Path
) -> None:
    images = [_image(40, 60, 2), _image(130, 50, 3)]
    path = tmp_path / "first.png"
    images[0].save(path)
    inputs: list[Any] = [str(path), images[1]]
    batched = segmenter(inputs, batch_size=2, threshold=0.0)
    assert len(batched) == 2
    for image, entities in zip(images, batched, strict=True):
        _check_forest(entities, image.height, image.width)
        single = segmenter(image, threshold=0.0)
        assert [e["mask"] for e in single] == [e["mask"] for e in entities]
        assert [e["parent_id"] for e in single] == [e["parent_id"] for e in entities]
        np.testing.assert_allclose([e["score"] for e in single], [e["score"] for e in entities], atol=1e-5)


def test_four_dimensional_array_is_a_batch(segmenter: HierarchicalSegmentationPipeline) -> None:
    stack = np.stack([np.asarray(_image(32, 48, 5)), np.asarray(_image(32, 48, 6))])
    results = segmenter(stack, threshold=0.0, batch_size=2)
    assert len(results) == 2
    for entities in results:
        _check_forest(entities, 32, 48)


def test_binary_output_and_instance_cap(segmenter: HierarchicalSegmentationPipeline) -> None:
    # Postprocessing parameters act on the same model outputs: run the model once.
    model_outputs = segmenter.forward(segmenter.preprocess(_image(50, 80, 7)))
    rle = segmenter.postprocess(model_outputs, threshold=0.0)
    binary = segmenter.postprocess(model_outputs, threshold=0.0, output_format="binary")
    assert rle and len(rle) == len(binary)
    for a, b in zip(rle, binary, strict=True):
        assert b["mask"].dtype == bool and b["mask"].shape == (50, 80)
        np.testing.assert_array_equal(decode_mask(a["mask"]), b["mask"])
    capped = segmenter.postprocess(model_outputs, threshold=0.0, max_instances=3)
    assert 0 < len(capped) <= 3
    _check_forest(capped, 50, 80)
    best = sorted((e["score"] for e in rle), reverse=True)[:3]
    np.testing.assert_allclose(sorted((e["score"] for e in capped), reverse=True), best)
    cut = float(np.median([e["score"] for e in rle]))
    raised = segmenter.postprocess(model_outputs, threshold=cut)
    assert [e["score"] for e in raised] and all(e["score"] >= cut for e in raised)


def test_as_tree_nests_every_entity_under_its_parent(large_image_entities: list[dict[str, Any]]) -> None:
    entities = large_image_entities
    roots = as_tree(entities)
    seen: list[int] = []

    def walk(node: dict[str, Any], parent: int | None) -> None:
        seen.append(node["id"])
        assert node["parent_id"] == parent
        for child in node["children"]:
            walk(child, node["id"])

    for root in roots:
        walk(root, None)
    assert sorted(seen) == list(range(len(entities)))
    with pytest.raises(ValueError, match="parent_id 5"):
        as_tree([{"id": 0, "parent_id": 5}])


def test_bad_inputs_raise_errors_naming_the_input(
    segmenter: HierarchicalSegmentationPipeline, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        segmenter(str(missing))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.png"):
        segmenter(not_an_image)
    with pytest.raises(TypeError, match="int"):
        segmenter(42)
    with pytest.raises(ValueError, match="uint8"):
        segmenter(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        segmenter(np.zeros((8, 8, 5), dtype=np.uint8))


def test_bad_parameters_raise_errors_naming_the_parameter(
    segmenter: HierarchicalSegmentationPipeline,
) -> None:
    image = _image(16, 16, 9)
    with pytest.raises(ValueError, match="output_format"):
        segmenter(image, output_format="png")
    with pytest.raises(ValueError, match="threshold"):
        segmenter(image, threshold=1.5)
    with pytest.raises(ValueError, match="max_instances"):
        segmenter(image, max_instances=0)
    with pytest.raises(TypeError, match="colour"):
        segmenter(image, colour="red")


def test_load_image_input_formats_and_urls(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    loaded = load_image_input(grey)
    assert loaded.mode == "RGB" and loaded.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(loaded)[:, :, 1], grey)
    rgba = np.dstack([np.asarray(loaded), np.full((3, 4), 7, dtype=np.uint8)])
    np.testing.assert_array_equal(np.asarray(load_image_input(rgba)), np.asarray(loaded))

    # A local HTTP server stands in for the web (no internet is needed).
    image = _image(10, 12, 11)
    image.save(tmp_path / "served.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        np.testing.assert_array_equal(np.asarray(load_image_input(f"{base}/served.png", timeout=10)), image)
        with pytest.raises(ValueError, match=r"absent\.png"):
            load_image_input(f"{base}/absent.png", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
