"""A tour of SOHES inference without a notebook: pipeline, hierarchy, pictures, exports.

Runs offline by default: part 1 draws a synthetic scene whose hierarchy is known exactly (a
house with roof, wall, door and windows; a tree with trunk and crown; the sun), part 2 runs the
``hierarchical-segmentation`` pipeline with a tiny *randomly initialised* model (its masks are
meaningless; it shows the API) or with a real checkpoint given by ``--model``.

    python examples/tour.py                              # offline, tiny random model
    python examples/tour.py --model path/or/hub-id --image photo.jpg
    python examples/tour.py --output docs/images --pictures-only   # regenerates docs pictures
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sohes_hf.exporters import to_coco_results, to_sam_records
from sohes_hf.masks import encode_mask
from sohes_hf.visualization import depth_level_panel, format_tree, overlay_entities, render_tree, save_image


def synthetic_scene(height: int = 192, width: int = 256) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A drawn RGB scene (H, W, 3) and its exact entity hierarchy as pipeline-style dicts."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = np.linspace([150, 200, 240], [215, 230, 245], height, dtype=np.uint8)[:, None, :]  # sky
    image[150:] = (110, 160, 90)  # grass

    def shape(draw: Any) -> np.ndarray:
        canvas = np.zeros((height, width), dtype=np.uint8)
        draw(canvas)
        return canvas.astype(bool)

    wall = shape(lambda c: cv2.rectangle(c, (40, 95), (140, 165), 1, -1))
    roof = shape(lambda c: cv2.fillPoly(c, [np.array([[30, 96], [90, 50], [150, 96]])], 1))
    door = shape(lambda c: cv2.rectangle(c, (80, 125), (100, 165), 1, -1))
    window_left = shape(lambda c: cv2.rectangle(c, (52, 108), (72, 126), 1, -1))
    window_right = shape(lambda c: cv2.rectangle(c, (110, 108), (130, 126), 1, -1))
    trunk = shape(lambda c: cv2.rectangle(c, (196, 120), (208, 170), 1, -1))
    crown = shape(lambda c: cv2.circle(c, (202, 100), 30, 1, -1)) & ~trunk
    sun = shape(lambda c: cv2.circle(c, (230, 30), 16, 1, -1))
    colours = [
        (wall, (200, 170, 130)),
        (roof, (150, 60, 50)),
        (door, (100, 70, 40)),
        (window_left, (90, 140, 200)),
        (window_right, (90, 140, 200)),
        (trunk, (110, 80, 50)),
        (crown, (60, 130, 60)),
        (sun, (250, 210, 60)),
    ]
    for mask, colour in colours:
        image[mask] = colour
    house, tree = wall | roof, trunk | crown
    # (mask, parent index, score): parents precede children, as the pipeline returns them.
    layout = [
        (house, None, 0.97),
        (tree, None, 0.94),
        (sun, None, 0.91),
        (roof, 0, 0.88),
        (wall, 0, 0.86),
        (crown, 1, 0.83),
        (trunk, 1, 0.79),
        (door, 4, 0.72),
        (window_left, 4, 0.70),
        (window_right, 4, 0.66),
    ]
    entities: list[dict[str, Any]] = []
    for index, (mask, parent, score) in enumerate(layout):
        depth = 0 if parent is None else entities[parent]["depth"] + 1
        entities.append(
            {"id": index, "mask": encode_mask(mask), "score": score, "parent_id": parent, "depth": depth}
        )
    return image, entities


def tour_pictures(output: Path) -> None:
    """Part 1: pictures and exports of the synthetic hierarchy."""
    image, entities = synthetic_scene()
    print("Part 1: a synthetic scene with a known hierarchy (no model involved)\n")
    print(format_tree(entities))
    save_image(output / "synthetic_overlay.png", overlay_entities(image, entities))
    save_image(output / "synthetic_levels.png", depth_level_panel(image, entities))
    save_image(output / "synthetic_tree.png", render_tree(image, entities, thumbnail_size=80))
    sam = to_sam_records(entities)
    coco = to_coco_results(entities, image_id=1)
    print(f"\nSAM record keys: {sorted(sam[0])}")
    print(f"COCO result keys: {sorted(coco[0])}")
    print(f"pictures written to {output}/synthetic_{{overlay,levels,tree}}.png\n")


def _tiny_random_model(directory: Path) -> str:
    import torch

    from sohes_hf.modeling import SohesForHierarchicalSegmentation
    from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
    from sohes_hf.modeling.testing_utils import tiny_sohes_config

    torch.manual_seed(0)
    SohesForHierarchicalSegmentation(tiny_sohes_config()).save_pretrained(directory)
    SohesImageProcessor(size={"longest_edge": 128}).save_pretrained(directory)
    return str(directory)


def tour_pipeline(model: str | None, image_path: str | None, output: Path) -> None:
    """Part 2: the pipeline on an image, the nested view and the pictures of its output."""
    from transformers import pipeline

    from sohes_hf.pipelines import as_tree, load_image_input, register_pipeline
    from sohes_hf.visualization import as_rgb_image

    register_pipeline()
    with tempfile.TemporaryDirectory() as scratch:
        threshold = 0.5
        if model is None:
            print("Part 2: pipeline with a tiny RANDOM model (masks are meaningless; pass --model)\n")
            model = _tiny_random_model(Path(scratch))
            threshold = 0.0  # untrained scores are low; keep every query to show the output format
        else:
            print(f"Part 2: pipeline with {model}\n")
        segmenter = pipeline("hierarchical-segmentation", model=model, device="cpu")  # type: ignore[call-overload]
        image: Any = image_path if image_path is not None else synthetic_scene()[0]
        entities = segmenter(image, threshold=threshold, max_instances=50)
    if entities:
        first = {key: value for key, value in entities[0].items() if key != "mask"}
        print(f"{len(entities)} entities; first without its mask: {first}")
    else:
        print("no entities above the threshold")
    for root in as_tree(entities)[:3]:
        print(f"whole #{root['id']} (score {root['score']:.2f}) has {len(root['children'])} direct parts")
    if entities:
        print("masks are COCO RLE, JSON-ready:", json.dumps(entities[0]["mask"])[:70] + "...")
    picture = as_rgb_image(load_image_input(image))
    save_image(output / "pipeline_overlay.png", overlay_entities(picture, entities))
    print(f"overlay of the pipeline output written to {output}/pipeline_overlay.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory or Hub id (default: tiny random model)")
    parser.add_argument("--image", help="image for part 2 (default: the synthetic scene)")
    parser.add_argument("--output", type=Path, default=Path("tour_output"), help="where pictures go")
    parser.add_argument("--pictures-only", action="store_true", help="run part 1 only (no model)")
    args = parser.parse_args()
    tour_pictures(args.output)
    if not args.pictures_only:
        tour_pipeline(args.model, args.image, args.output)


if __name__ == "__main__":
    main()
