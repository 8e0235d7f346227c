"""Synthetic hierarchical scenes: generation speed, and pseudo-label quality of the stand-in features.

Two parts, both printing figures and asserting nothing:

1. ``generate``: ``make_synthetic_dataset`` of ``--num-images`` scenes at ``--image-size`` px
   (PNG + COCO writing included): wall-clock and CPU seconds, images/s, masks per image.
2. ``explore``: ``sohes explore --refiner none --image-size S`` in a subprocess on the val split of
   a small synthetic set, then ``sohes evaluate`` against its exact ground truth, for the
   ``colour-texture`` stand-in backbone and for a randomly initialised ViT-B/8-shaped ViT (patch 8,
   4 layers of width 192; saved to a temporary folder, nothing downloaded). Prints AR, AR per
   depth and parent-link precision/recall of each.
3. ``ablation``: the same measurement in-process (``explore_image``, identity refiner) on the val
   split of ``make_synthetic_dataset(num_images=2 * --ablation-images, seed=--seed)`` for
   ``colour-texture`` with ``context_weight`` 0 and 0.5 (the default).

Usage: ``python benchmarks/benchmark_synthetic.py [--parts generate,explore,ablation] [--num-images 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sohes_hf.cli.main", "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env)


def generate(num_images: int, image_size: int) -> None:
    from sohes_hf.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = time.perf_counter(), time.process_time()
        dataset = make_synthetic_dataset(folder, num_images, seed=0, image_size=image_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        masks = dataset.train.num_annotations + dataset.val.num_annotations
        size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
    print(f"generate\t{num_images} images of {image_size} px\twall {wall:.2f} s\tCPU {cpu:.2f} s")
    print(f"generate\t{num_images / wall:.1f} images/s (wall)\t{masks / num_images:.1f} masks/image", end="")
    print(f"\t{size_mb:.1f} MB")


def _random_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        patch_size=8,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=224,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder / "random-vit")
    return folder / "random-vit"


def explore(num_images: int, image_size: int, explore_size: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        _sohes(
            "data",
            "make-synthetic",
            "--num-images",
            str(2 * num_images),
            "--seed",
            str(seed),
            "--image-size",
            str(image_size),
            "--val-fraction",
            "0.5",
            "--output",
            str(folder / "data"),
        )
        val = folder / "data" / "val"
        backbones = (("colour-texture", "colour-texture"), ("random ViT", str(_random_vit(folder))))
        for label, backbone in backbones:
            out = folder / label.replace(" ", "-")
            start = time.perf_counter()
            _sohes(
                "explore",
                str(val / "images"),
                "--backbone",
                backbone,
                "--refiner",
                "none",
                "--image-size",
                str(explore_size),
                "--output",
                str(out / "pseudo"),
                "--no-progress",
                "--num-shards",
                "1",
                "--shard-index",
                "0",
            )
            seconds = time.perf_counter() - start
            labels = out / "pseudo" / "pseudo_labels.shard-00000-of-00001.json"
            _sohes(
                "evaluate",
                "--dataset",
                f"synthetic={val / 'annotations.json'}",
                "--predictions",
                str(labels),
                "--output",
                str(out / "results.json"),
            )
            results = json.loads((out / "results.json").read_text())
            table = results["datasets"]["synthetic"]
            hierarchy = results["hierarchy"]["synthetic"]
            links = hierarchy["parent_links"]
            masks = len(json.loads(labels.read_text())["annotations"]) / num_images
            print(
                f"explore\t{label}\tAR {table['AR']:.3f}\tAP {table['AP']:.3f}"
                f"\twholes {hierarchy['AR_wholes']:.3f}"
                f"\tparts {hierarchy['AR_parts']:.3f}\tsubparts {hierarchy['AR_subparts']:.3f}"
                f"\tlink P {links['precision'] or 0:.3f} R {links['recall'] or 0:.3f}"
                f"\t{masks:.0f} masks/image"
                f"\t{seconds / num_images:.1f} s/image (incl. start-up)"
            )


def ablation(num_images: int, image_size: int, explore_size: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    from sohes_hf.data.synthetic import make_synthetic_dataset
    from sohes_hf.evaluation.coco_eval import evaluate_class_agnostic
    from sohes_hf.evaluation.hierarchy_metrics import parent_link_metrics, per_depth_ar
    from sohes_hf.pseudo_labeling.colour_texture_features import ColourTextureFeatureExtractor
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
    from sohes_hf.pseudo_labeling.self_exploration import explore_image

    with tempfile.TemporaryDirectory() as folder:
        split = make_synthetic_dataset(
            folder, 2 * num_images, seed=seed, image_size=image_size, val_fraction=0.5
        ).val
        coco = json.loads(split.annotation_file.read_text())
        images = [
            np.asarray(Image.open(split.image_dir / i["file_name"]).convert("RGB")) for i in coco["images"]
        ]
        references = []
        for image in coco["images"]:
            records = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            position = {a["id"]: k for k, a in enumerate(records)}
            references.append({
                "masks": [a["segmentation"] for a in records],
                "iscrowd": [0] * len(records),
                "parents": [position.get(a["parent_id"], -1) for a in records],
                "depths": [a["depth"] for a in records],
            })  # fmt: skip
    config = SelfExplorationConfig(image_size=explore_size, refiner="none")
    for context_weight in (0.0, 0.5):
        extractor = ColourTextureFeatureExtractor(context_weight=context_weight)
        predictions = []
        for image in images:
            labels = explore_image(image, extractor, IdentityRefiner(), config)
            predictions.append(
                {"masks": labels.masks, "scores": list(labels.scores), "parents": list(labels.parents)}
            )
        result = evaluate_class_agnostic(predictions, references)
        depths = per_depth_ar(predictions, references)
        links = parent_link_metrics(predictions, references)
        masks = sum(len(p["masks"]) for p in predictions) / len(predictions)
        print(
            f"ablation\tcontext_weight {context_weight}\t{len(images)} images"
            f"\tAR {result.ar:.3f}\tAP {result.ap:.3f}\t"
            + "\t".join(f"{name} {value.ar:.3f}" for name, value in depths.items())
            + f"\tlink P {links.precision:.3f} R {links.recall:.3f}\t{masks:.0f} masks/image"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="generate,explore")
    parser.add_argument("--num-images", type=int, default=200, help="images generated by 'generate'")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--explore-images", type=int, default=8, help="val images explored by 'explore'")
    parser.add_argument("--explore-size", type=int, default=512, help="sohes explore --image-size")
    parser.add_argument("--ablation-images", type=int, default=12, help="val images used by 'ablation'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "generate" in parts:
        generate(args.num_images, args.image_size)
    if "explore" in parts:
        explore(args.explore_images, args.image_size, args.explore_size, args.seed)
    if "ablation" in parts:
        ablation(args.ablation_images, args.image_size, args.explore_size, args.seed)


if __name__ == "__main__":
    main()
