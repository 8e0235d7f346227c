"""examples/gradio_demo.py: what each page event computes (no gradio needed) and one gradio run.

The event functions are tested with a hand-built three-level hierarchy (so depths, clamping and
cumulative views have known answers) and with a tiny random model through the real pipeline.
The last test builds the gradio app and needs gradio (the ``demo`` extra); it is skipped
without it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from sohes_hf.masks import encode_mask
from sohes_hf.visualization import depth_view, format_tree, render_tree

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    """examples/gradio_demo.py imported as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sohes_gradio_demo", REPO / "examples" / "gradio_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


# Whole 0 (left block) > part 1 > subpart 2; whole 3 (right block) without parts.
MASKS = [_box(4, 4, 44, 30), _box(8, 8, 30, 26), _box(12, 12, 20, 20), _box(10, 40, 40, 60)]
PARENTS = [None, 0, 1, None]
DEPTHS = [0, 1, 2, 0]


def _entities(count: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "id": index,
            "mask": encode_mask(MASKS[index]),
            "score": 0.9 - 0.1 * index,
            "parent_id": PARENTS[index],
            "depth": DEPTHS[index],
        }
        for index in range(count)
    ]


class FakeSegmenter:
    """Stands in for the pipeline: records its calls and returns the first ``count`` entities."""

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.calls: list[tuple[np.ndarray, dict[str, Any]]] = []

    def __call__(self, image: np.ndarray, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((image, kwargs))
        return _entities(self.count)


def _image(seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, channels), dtype=np.uint8)


def _union(indices: list[int]) -> np.ndarray:
    return np.logical_or.reduce([MASKS[i] for i in indices])


def test_segment_event_draws_wholes_tree_and_text(demo: ModuleType) -> None:
    image = _image()
    segmenter = FakeSegmenter()
    view = demo.run_segmentation(segmenter, image, 0.25, 200.0)  # sliders deliver floats

    ((called_image, kwargs),) = segmenter.calls
    np.testing.assert_array_equal(called_image, image)
    assert kwargs == {"threshold": 0.25, "max_instances": 200}
    assert type(kwargs["max_instances"]) is int

    entities = _entities()
    assert view.overlay.shape == (HEIGHT, WIDTH, 3) and view.overlay.dtype == np.uint8
    np.testing.assert_array_equal(view.overlay, depth_view(image, entities, 0))
    wholes = _union([0, 3])
    np.testing.assert_array_equal(view.overlay[~wholes], image[~wholes])  # only wholes are drawn
    assert (view.overlay[wholes] != image[wholes]).any(axis=-1).mean() > 0.9
    np.testing.assert_array_equal(view.tree, render_tree(image, entities))
    assert view.text == format_tree(entities)
    lines = view.text.splitlines()
    assert len(lines) == 4 and [line.split(" score=")[0].split("#")[1] for line in lines] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert view.slider_maximum == 2 == view.state.deepest
    np.testing.assert_array_equal(view.state.image, image)
    assert view.state.entities == entities


@pytest.mark.parametrize(
    ("depth", "cumulative", "drawn"), [(1, False, [1]), (1, True, [0, 1, 3]), (2, False, [2])]
)
def test_depth_event_draws_the_chosen_levels(
    demo: ModuleType, depth: int, cumulative: bool, drawn: list[int]
) -> None:
    image = _image(1)
    state = demo.run_segmentation(FakeSegmenter(), image, 0.5, 10).state
    view = demo.view_depth(state, float(depth), cumulative)
    np.testing.assert_array_equal(view, depth_view(image, _entities(), depth, cumulative=cumulative))
    inside = _union(drawn)
    np.testing.assert_array_equal(view[~inside], image[~inside])
    assert (view[inside] != image[inside]).any(axis=-1).mean() > 0.9


def test_slider_beyond_the_deepest_level_is_clamped(demo: ModuleType) -> None:
    image = _image(2)
    state = demo.run_segmentation(FakeSegmenter(), image, 0.5, 10).state
    assert demo.clamp_depth(3.0, state) == 2 and demo.clamp_depth(1, state) == 1
    deepest = demo.view_depth(state, 2, False)
    np.testing.assert_array_equal(demo.view_depth(state, 3, False), deepest)
    np.testing.assert_array_equal(demo.view_depth(state, 3, True), depth_view(image, _entities(), 2, True))
    assert not np.array_equal(deepest, image), "a clamped slider still shows the subparts"
    with pytest.raises(ValueError, match="depth"):
        demo.view_depth(state, -1, False)
    with pytest.raises(ValueError, match="depth"):
        demo.view_depth(state, 0.5, False)


def test_wholes_only_and_no_entities(demo: ModuleType) -> None:
    image = _image(3)
    wholes_only = demo.run_segmentation(FakeSegmenter(count=1), image, 0.5, 10)
    assert wholes_only.slider_maximum == 0
    np.testing.assert_array_equal(demo.view_depth(wholes_only.state, 2, False), wholes_only.overlay)

    empty = demo.run_segmentation(FakeSegmenter(count=0), image, 0.5, 10)
    assert empty.state.deepest == -1 and empty.slider_maximum == 0
    assert empty.text == demo.NO_ENTITIES_TEXT
    np.testing.assert_array_equal(empty.overlay, image)
    np.testing.assert_array_equal(demo.view_depth(empty.state, 2, True), image)


def test_rgba_and_grey_uploads_become_rgb(demo: ModuleType) -> None:
    rgba = _image(4, channels=4)
    segmenter = FakeSegmenter()
    view = demo.run_segmentation(segmenter, rgba, 0.5, 10)
    np.testing.assert_array_equal(segmenter.calls[0][0], rgba[:, :, :3])
    np.testing.assert_array_equal(view.state.image, rgba[:, :, :3])
    grey = _image(5)[:, :, 0]
    view = demo.run_segmentation(FakeSegmenter(), grey, 0.5, 10)
    np.testing.assert_array_equal(view.state.image, np.stack([grey] * 3, axis=-1))


def test_bad_inputs_raise_clear_errors(demo: ModuleType) -> None:
    segmenter = FakeSegmenter()
    with pytest.raises(ValueError, match="image: no image given"):
        demo.run_segmentation(segmenter, None, 0.5, 10)
    with pytest.raises(ValueError, match="threshold"):
        demo.run_segmentation(segmenter, _image(), 1.5, 10)
    with pytest.raises(ValueError, match="max_instances"):
        demo.run_segmentation(segmenter, _image(), 0.5, 0)
    with pytest.raises(ValueError, match="max_instances"):
        demo.run_segmentation(segmenter, _image(), 0.5, 2.5)
    with pytest.raises(TypeError, match="image"):
        demo.run_segmentation(segmenter, "not an image", 0.5, 10)
    assert segmenter.calls == [], "nothing is segmented when an argument is bad"
    assert demo.view_depth(None, 1, False) is None, "before the first segmentation the overlay is empty"


@pytest.mark.usefixtures("one_torch_thread")
def test_events_with_a_tiny_random_model(demo: ModuleType, tmp_path: Path) -> None:
    from transformers import pipeline

    from sohes_hf.modeling import SohesForHierarchicalSegmentation
    from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
    from sohes_hf.modeling.testing_utils import tiny_sohes_config
    from sohes_hf.pipelines import TASK_NAME, register_pipeline

    torch.manual_seed(0)
    SohesForHierarchicalSegmentation(
        tiny_sohes_config(decoder_layers=1, num_queries=8)
    ).eval().save_pretrained(tmp_path)
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(tmp_path)
    register_pipeline()
    segmenter = pipeline(TASK_NAME, model=str(tmp_path), device="cpu", local_files_only=True)  # type: ignore[call-overload]
    image = _image(6)
    view = demo.run_segmentation(segmenter, image, 0.0, 8)
    expected = segmenter(image, threshold=0.0, max_instances=8)
    assert expected, "a random model at threshold 0 keeps its non-empty masks"
    assert view.state.entities == expected
    assert view.slider_maximum == max(entity["depth"] for entity in expected)
    assert view.overlay.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(view.overlay, depth_view(image, expected, 0))
    assert len(view.text.splitlines()) == len(expected)
    np.testing.assert_array_equal(
        demo.view_depth(view.state, 5, True),
        depth_view(image, expected, view.slider_maximum, cumulative=True),
    )


def test_page_picture_lays_out_image_overlay_and_tree(demo: ModuleType) -> None:
    image = _image(7)
    view = demo.run_segmentation(FakeSegmenter(), image, 0.5, 10)
    gap, header = 5, demo.HEADER_HEIGHT
    picture = demo.page_picture(view, 7, cumulative=True, gap=gap)  # clamped to depth 2
    tree_height, tree_width = view.tree.shape[:2]
    assert picture.shape == (header + HEIGHT + gap + tree_height, max(2 * WIDTH + gap, tree_width), 3)
    np.testing.assert_array_equal(picture[header : header + HEIGHT, :WIDTH], image)
    overlay = picture[header : header + HEIGHT, WIDTH + gap : 2 * WIDTH + gap]
    np.testing.assert_array_equal(overlay, depth_view(image, _entities(), 2, cumulative=True))
    np.testing.assert_array_equal(picture[header + HEIGHT + gap :, :tree_width], view.tree)
    assert (picture[:header] < 255).any(), "the tiles are labelled"
    assert (picture[header : header + HEIGHT, WIDTH : WIDTH + gap] == 255).all()


def test_gradio_app_serves_the_events(
    demo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builds the Blocks app, serves it on 127.0.0.1 and drives it with gradio_client."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    from PIL import Image

    image = _image(8)
    Image.fromarray(image).save(tmp_path / "upload.png")
    app = demo.build_blocks(FakeSegmenter())
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = client_module.Client(app.local_url, verbose=False, download_files=str(tmp_path / "out"))
        upload = client_module.handle_file(str(tmp_path / "upload.png"))
        overlay_path, tree_path, text, slider = client.predict(upload, 0.5, 20, api_name="/segment")
        expected = demo.run_segmentation(FakeSegmenter(), image, 0.5, 20)
        np.testing.assert_array_equal(np.array(Image.open(overlay_path).convert("RGB")), expected.overlay)
        np.testing.assert_array_equal(np.array(Image.open(tree_path).convert("RGB")), expected.tree)
        assert text == expected.text
        assert slider["maximum"] == 2 and slider["value"] == 0
        # The session keeps the segmentation (gr.State): moving the slider redraws from it.
        depth_path = client.predict(2, api_name="/view_depth")
        np.testing.assert_array_equal(
            np.array(Image.open(depth_path).convert("RGB")), depth_view(image, _entities(), 2)
        )
        with pytest.raises(Exception, match="no image given"):
            client.predict(None, 0.5, 20, api_name="/segment")
    finally:
        app.close()


@pytest.mark.parametrize(("count", "deepest"), [(0, -1), (1, 0), (3, 2)])
def test_gradio_app_with_empty_wholes_only_and_deep_results(
    demo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, deepest: int
) -> None:
    """Issue 18: an empty or wholes-only result must not break the page (slider 0..0 is refused).

    The served app is driven through gradio_client as the browser does: *Segment*, then the
    slider; the slider stays a valid range and is locked when there is nothing deeper.
    """
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    from PIL import Image

    image = _image(9)
    Image.fromarray(image).save(tmp_path / "upload.png")
    app = demo.build_blocks(FakeSegmenter(count=count))
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = client_module.Client(app.local_url, verbose=False, download_files=str(tmp_path / "out"))
        upload = client_module.handle_file(str(tmp_path / "upload.png"))
        overlay_path, tree_path, text, slider = client.predict(upload, 0.5, 20, api_name="/segment")
        entities = _entities(count)
        np.testing.assert_array_equal(
            np.array(Image.open(overlay_path).convert("RGB")), depth_view(image, entities, 0)
        )
        np.testing.assert_array_equal(
            np.array(Image.open(tree_path).convert("RGB")), render_tree(image, entities)
        )
        assert text == (format_tree(entities) if entities else demo.NO_ENTITIES_TEXT)
        assert slider["maximum"] == max(deepest, 1) and slider["value"] == 0
        assert slider["interactive"] is (deepest > 0)
        depth_path = client.predict(1, api_name="/view_depth")
        np.testing.assert_array_equal(
            np.array(Image.open(depth_path).convert("RGB")),
            depth_view(image, entities, min(1, max(deepest, 0))),
        )
    finally:
        app.close()


def test_snapshot_draws_the_page_at_its_default_settings(
    demo: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, item 5: docs/images/demo_page_default.png is the page as it opens (no browser here).

    The widget values of the built app are the DEFAULT_* constants that ``--snapshot`` draws with.
    """
    import subprocess

    from PIL import Image

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio")
    app = demo.build_blocks(FakeSegmenter())
    values = {
        component["props"].get("label"): component["props"].get("value")
        for component in app.config["components"]
        if "label" in component.get("props", {})
    }
    assert values["score threshold"] == demo.DEFAULT_THRESHOLD
    assert values["max entities"] == demo.DEFAULT_MAX_INSTANCES
    assert values["depth (0 wholes, 1 parts, 2 subparts)"] == demo.DEFAULT_DEPTH
    assert values["also show shallower levels"] is demo.DEFAULT_CUMULATIVE
    output = tmp_path / "page.png"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "gradio_demo.py"), "--snapshot", str(output)],
        check=True, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from tour import synthetic_scene
    finally:
        sys.path.remove(str(REPO / "examples"))
    scene, entities = synthetic_scene()
    view = demo.run_segmentation(lambda image, **_: entities, scene, 0.5, 200)
    expected = demo.page_picture(view, 0, cumulative=False)
    np.testing.assert_array_equal(np.array(Image.open(output).convert("RGB")), expected)
