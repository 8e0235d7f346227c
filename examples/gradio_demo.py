"""Browser demo: upload an image, see SOHES entities level by level with a depth slider.

Needs the optional ``demo`` extra (``pip install "sohes-hf[demo]"``, i.e. gradio):

    python examples/gradio_demo.py --model path/or/hub-id [--device cuda] [--share]

The page shows the overlay of one depth level (0 = wholes, 1 = parts, 2 = subparts) or of all
levels up to it, the hierarchy as a picture and as text. The drawing logic lives in
:mod:`sohes_hf.visualization` (``depth_view``, ``render_tree``, ``format_tree``), where it is
tested; this file only wires it to gradio widgets.
"""

from __future__ import annotations

import argparse
from typing import Any


def build_demo(model: str, device: str = "cpu") -> Any:
    """Builds the gradio Blocks app for a model directory or Hub id."""
    try:
        import gradio as gr
    except ImportError as error:
        raise SystemExit(
            'the demo needs gradio: pip install "sohes-hf[demo]" (or pip install gradio)'
        ) from error
    from transformers import pipeline

    from sohes_hf.pipelines import register_pipeline
    from sohes_hf.visualization import as_rgb_image, depth_view, format_tree, max_depth, render_tree

    register_pipeline()
    segmenter = pipeline("hierarchical-segmentation", model=model, device=device)  # type: ignore[call-overload]

    def segment(image: Any, threshold: float, max_instances: float) -> tuple[Any, ...]:
        if image is None:
            raise gr.Error("upload an image first")
        picture = as_rgb_image(image)
        entities = segmenter(picture, threshold=threshold, max_instances=int(max_instances))
        deepest = max(max_depth(entities), 0)
        slider = gr.update(maximum=deepest, value=0)
        return (
            (picture, entities),
            depth_view(picture, entities, 0),
            render_tree(picture, entities),
            format_tree(entities),
            slider,
        )

    def change_depth(state: Any, depth: float, cumulative: bool) -> Any:
        if state is None:
            return None
        picture, entities = state
        return depth_view(picture, entities, int(depth), cumulative=cumulative)

    with gr.Blocks(title="SOHES hierarchical entity segmentation") as demo:
        gr.Markdown("# SOHES: wholes, parts and subparts\nUpload an image and press *Segment*.")
        state = gr.State(None)
        with gr.Row():
            image = gr.Image(type="numpy", label="image")
            overlay = gr.Image(type="numpy", label="entities at the chosen depth")
        with gr.Row():
            threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="score threshold")
            max_instances = gr.Slider(1, 1000, value=200, step=1, label="max entities")
            depth = gr.Slider(0, 3, value=0, step=1, label="depth (0 wholes, 1 parts, 2 subparts)")
            cumulative = gr.Checkbox(False, label="also show shallower levels")
        button = gr.Button("Segment", variant="primary")
        tree = gr.Image(type="numpy", label="hierarchy")
        text = gr.Textbox(label="hierarchy as text", lines=12)
        button.click(segment, [image, threshold, max_instances], [state, overlay, tree, text, depth])
        depth.change(change_depth, [state, depth, cumulative], overlay)
        cumulative.change(change_depth, [state, depth, cumulative], overlay)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model directory or Hub id")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--share", action="store_true", help="create a public gradio link")
    args = parser.parse_args()
    build_demo(args.model, args.device).launch(share=args.share)


if __name__ == "__main__":
    main()
