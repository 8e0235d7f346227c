"""Browser demo: upload an image, see SOHES entities level by level with a depth slider.

Needs the optional ``demo`` extra (``pip install "sohes-hf[demo]"``, i.e. gradio; tested with 5.50 and 6.31):

    python examples/gradio_demo.py --model path/or/hub-id [--device cuda] [--share] [--port 7860]
    python examples/gradio_demo.py --snapshot docs/images/demo_page_default.png   # docs picture, no gradio
    python examples/gradio_demo.py --snapshot docs/images/demo_page.png --snapshot-depth 1

The page shows the overlay of one depth level (0 = wholes, 1 = parts, 2 = subparts; paper
section 3.2) or of all levels up to it, the hierarchy as a picture and as text. The drawing
logic lives in :mod:`sohes_hf.visualization` (``depth_view``, ``render_tree``, ``format_tree``).

What each page event computes is a plain function that needs no gradio
(:func:`run_segmentation` for the *Segment* button, :func:`view_depth` for the depth slider and
the checkbox), so ``tests/test_gradio_demo.py`` tests it without a browser;
:func:`build_blocks` only wires those functions to gradio widgets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sohes_hf.visualization import as_rgb_image, depth_view, format_tree, max_depth, render_tree

# A pipeline-like callable: ``segmenter(image, threshold=..., max_instances=...)`` returns one
# image's entities as dicts (``id``, ``mask`` RLE at the image size, ``score``, ``parent_id``,
# ``depth``, ...), parents first, as ``pipeline("hierarchical-segmentation")`` does.
Segmenter = Callable[..., list[dict[str, Any]]]

NO_ENTITIES_TEXT = "no entities above the score threshold"
HEADER_HEIGHT = 22  # pixels of the labels above the tiles of page_picture
# The page's settings when it opens (widgets of build_blocks; --snapshot draws the page with them).
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_INSTANCES = 200
DEFAULT_DEPTH = 0
DEFAULT_CUMULATIVE = False


@dataclass(frozen=True)
class DemoState:
    """What the page remembers between events (a ``gr.State``).

    Attributes:
        image: (H, W, 3) uint8 RGB image that was segmented.
        entities: its entities, pipeline dicts with masks at (H, W), parents first.
        deepest: deepest depth level present (0 = wholes only), -1 when there are no entities.
    """

    image: np.ndarray
    entities: list[dict[str, Any]]
    deepest: int


@dataclass(frozen=True)
class SegmentationView:
    """Everything the *Segment* button puts on the page.

    Attributes:
        state: the new :class:`DemoState`.
        overlay: (H, W, 3) uint8 RGB, the wholes (depth 0) over the image.
        tree: (H', W', 3) uint8 RGB, :func:`~sohes_hf.visualization.render_tree` of the entities.
        text: :func:`~sohes_hf.visualization.format_tree` of the entities, or
            :data:`NO_ENTITIES_TEXT`.
        slider_maximum: new maximum of the depth slider: the deepest level present, 0 when
            there are only wholes or no entities.
    """

    state: DemoState
    overlay: np.ndarray
    tree: np.ndarray
    text: str
    slider_maximum: int


def run_segmentation(
    segmenter: Segmenter, image: Any, threshold: float, max_instances: float
) -> SegmentationView:
    """The *Segment* button: segments ``image`` and draws the wholes, the tree and the text.

    Args:
        segmenter: pipeline-like callable (see :data:`Segmenter`).
        image: the uploaded image, a PIL image or a uint8 array ((H, W), (H, W, 3) or (H, W, 4));
            ``None`` when nothing was uploaded.
        threshold: entity score threshold in [0, 1].
        max_instances: most entities to keep (>= 1; sliders deliver floats, so integral floats
            are accepted).

    Raises:
        ValueError: ``image`` is ``None`` or malformed, ``threshold`` is outside [0, 1] or
            ``max_instances`` is not an integer >= 1.
        TypeError: ``image`` is neither a PIL image nor an array.
    """
    if image is None:
        raise ValueError("image: no image given; upload an image first")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if float(max_instances) != int(max_instances) or int(max_instances) < 1:
        raise ValueError(f"max_instances must be an integer >= 1, got {max_instances}")
    picture = as_rgb_image(image)
    entities = list(segmenter(picture, threshold=float(threshold), max_instances=int(max_instances)))
    deepest = max_depth(entities)
    state = DemoState(image=picture, entities=entities, deepest=deepest)
    return SegmentationView(
        state=state,
        overlay=depth_view(picture, entities, 0),
        tree=render_tree(picture, entities),
        text=format_tree(entities) if entities else NO_ENTITIES_TEXT,
        slider_maximum=max(deepest, 0),
    )


def clamp_depth(depth: float, state: DemoState) -> int:
    """Slider value as a depth level in [0, ``state.deepest``] (0 when there are no entities).

    Raises:
        ValueError: ``depth`` is negative or not a whole number.
    """
    if float(depth) != int(depth) or depth < 0:
        raise ValueError(f"depth must be a whole number >= 0, got {depth}")
    return min(int(depth), max(state.deepest, 0))


def view_depth(state: DemoState | None, depth: float, cumulative: bool) -> np.ndarray | None:
    """The depth slider and the checkbox: level ``depth`` (or levels 0..``depth``) over the image.

    A ``depth`` beyond the deepest level present is clamped to it, so the slider never shows a
    bare image while deeper levels exist. Returns ``None`` (an empty picture) before anything was
    segmented.
    """
    if state is None:
        return None
    return depth_view(state.image, state.entities, clamp_depth(depth, state), cumulative=cumulative)


def page_picture(view: SegmentationView, depth: float, cumulative: bool, gap: int = 8) -> np.ndarray:
    """A screenshot-like picture of the page after *Segment* and a slider move (for docs).

    Layout: a labelled row with the uploaded image and :func:`view_depth`'s overlay side by side
    (``gap`` white pixels apart, each under a 22-pixel header), then the tree picture below it,
    ``gap`` pixels lower; everything else is white.

    Returns:
        (22 + H + gap + H_tree, max(2 W + gap, W_tree), 3) uint8 RGB.
    """
    import cv2

    from sohes_hf.visualization import depth_name

    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    level = clamp_depth(depth, view.state)
    image = view.state.image
    overlay = depth_view(image, view.state.entities, level, cumulative=cumulative)
    height, width = image.shape[:2]
    label = f"depth {level}: {depth_name(level)}" + (" and shallower" if cumulative and level else "")
    top = np.full((HEADER_HEIGHT + height, 2 * width + gap, 3), 255, dtype=np.uint8)
    for column, (tile, text) in enumerate([(image, "image"), (overlay, label)]):
        left = column * (width + gap)
        top[HEADER_HEIGHT:, left : left + width] = tile
        cv2.putText(top, text, (left + 4, HEADER_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    tree = view.tree
    picture = np.full(
        (top.shape[0] + gap + tree.shape[0], max(top.shape[1], tree.shape[1]), 3), 255, np.uint8
    )
    picture[: top.shape[0], : top.shape[1]] = top
    picture[top.shape[0] + gap :, : tree.shape[1]] = tree
    return picture


def import_gradio() -> Any:
    """Imports gradio, or raises ImportError saying what to install."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            'the demo needs gradio: pip install "sohes-hf[demo]" (or pip install "gradio>=5")'
        ) from error
    return gradio


def build_blocks(segmenter: Segmenter) -> Any:
    """The gradio Blocks app around a pipeline-like ``segmenter`` (see :data:`Segmenter`).

    Raises:
        ImportError: gradio is not installed (the message says what to install).
    """
    gr = import_gradio()

    def segment(image: Any, threshold: float, max_instances: float) -> tuple[Any, ...]:
        try:
            view = run_segmentation(segmenter, image, threshold, max_instances)
        except (TypeError, ValueError) as error:
            raise gr.Error(str(error)) from error
        # gradio refuses a slider whose maximum equals its minimum (0), which an empty or
        # wholes-only result would give: keep the range 0..1 and lock the slider instead.
        deeper = view.slider_maximum > 0
        slider = gr.Slider(maximum=max(view.slider_maximum, 1), value=DEFAULT_DEPTH, interactive=deeper)
        return view.state, view.overlay, view.tree, view.text, slider

    def change_depth(state: DemoState | None, depth: float, cumulative: bool) -> Any:
        try:
            return view_depth(state, depth, cumulative)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    with gr.Blocks(title="SOHES hierarchical entity segmentation") as demo:
        gr.Markdown(
            "# SOHES: wholes, parts and subparts\n"
            "Upload an image and press *Segment*, then move the depth slider."
        )
        state = gr.State(None)
        with gr.Row():
            image = gr.Image(type="numpy", image_mode="RGB", label="image")
            overlay = gr.Image(
                type="numpy", format="png", label="entities at the chosen depth", interactive=False
            )
        with gr.Row():
            threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="score threshold")
            max_instances = gr.Slider(1, 1000, value=DEFAULT_MAX_INSTANCES, step=1, label="max entities")
            depth = gr.Slider(
                0,
                3,
                value=DEFAULT_DEPTH,
                step=1,
                label="depth (0 wholes, 1 parts, 2 subparts)",
                interactive=False,
            )
            cumulative = gr.Checkbox(value=DEFAULT_CUMULATIVE, label="also show shallower levels")
        button = gr.Button("Segment", variant="primary")
        tree = gr.Image(type="numpy", format="png", label="hierarchy", interactive=False)
        text = gr.Textbox(label="hierarchy as text", lines=12, interactive=False)
        button.click(
            segment,
            [image, threshold, max_instances],
            [state, overlay, tree, text, depth],
            api_name="segment",
        )
        depth.change(change_depth, [state, depth, cumulative], overlay, api_name="view_depth")
        cumulative.change(change_depth, [state, depth, cumulative], overlay, api_name=False)
    return demo


def build_demo(model: str, device: str = "cpu") -> Any:
    """The gradio Blocks app for a model directory or Hub id (loaded once, on ``device``).

    Raises:
        ImportError: gradio is not installed (checked before the model is loaded).
    """
    import_gradio()
    from transformers import pipeline

    from sohes_hf.pipelines import register_pipeline

    register_pipeline()
    segmenter = pipeline("hierarchical-segmentation", model=model, device=device)  # type: ignore[call-overload]
    return build_blocks(segmenter)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory or Hub id (required unless --snapshot)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--share", action="store_true", help="create a public gradio link")
    parser.add_argument("--port", type=int, default=None, help="server port (gradio's default: 7860)")
    parser.add_argument(
        "--snapshot",
        type=Path,
        help="write page_picture of the synthetic scene of examples/tour.py (hand-written entities, "
        "no model, no gradio) at the page's default settings to this PNG and exit",
    )
    parser.add_argument(
        "--snapshot-depth", type=int, default=DEFAULT_DEPTH, help="depth slider position of --snapshot"
    )
    args = parser.parse_args()
    if args.snapshot is not None:
        from tour import synthetic_scene  # examples/ is on sys.path when this file runs as a script

        from sohes_hf.visualization import save_image

        scene, entities = synthetic_scene()
        view = run_segmentation(lambda image, **_: entities, scene, DEFAULT_THRESHOLD, DEFAULT_MAX_INSTANCES)
        picture = page_picture(view, args.snapshot_depth, cumulative=DEFAULT_CUMULATIVE)
        print(f"wrote {save_image(args.snapshot, picture)}")
        return
    if args.model is None:
        parser.error("--model is required (unless --snapshot)")
    try:
        demo = build_demo(args.model, args.device)
    except ImportError as error:
        raise SystemExit(str(error)) from error
    demo.launch(share=args.share, server_port=args.port)


if __name__ == "__main__":
    main()
