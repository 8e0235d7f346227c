"""Draws a synthetic scene's exact ground truth per depth level, and the colour-texture pseudo-labels.

    python examples/synthetic_scenes.py --output docs/images [--seed 0] [--index 3]

Writes ``synthetic_scene_gt.jpg`` (the scene, then its ground-truth wholes, parts, subparts...)
and ``synthetic_scene_pseudo.jpg`` (what self-exploration with ``--backbone colour-texture``,
``--refiner none`` and S = 512 finds on it), both with ``sohes_hf.visualization.depth_level_panel``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sohes_hf.data.synthetic import SceneConfig, render_scene
from sohes_hf.data.synthetic.dataset import scene_seed
from sohes_hf.masks import encode_masks
from sohes_hf.pseudo_labeling.colour_texture_features import ColourTextureFeatureExtractor
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
from sohes_hf.pseudo_labeling.self_exploration import explore_image
from sohes_hf.visualization.overlay import depth_level_panel, save_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--index", type=int, default=3, help="0-based image index in that dataset")
    args = parser.parse_args()
    scene = render_scene(SceneConfig(), scene_seed(args.seed, args.index))
    truth = [
        {"id": k, "mask": rle, "score": 1.0, "parent_id": None if p < 0 else int(p), "depth": int(d)}
        for k, (rle, p, d) in enumerate(
            zip(encode_masks(scene.masks), scene.parents, scene.depths, strict=True)
        )
    ]
    print("ground truth:", len(truth), "masks,", sorted(set(scene.names)))
    save_image(args.output / "synthetic_scene_gt.jpg", depth_level_panel(scene.image, truth))
    labels = explore_image(
        scene.image,
        ColourTextureFeatureExtractor(),
        IdentityRefiner(),
        SelfExplorationConfig(image_size=512, refiner="none"),
    )
    pseudo = [
        {"id": k, "mask": rle, "score": 1.0, "parent_id": None if p < 0 else int(p), "depth": int(d)}
        for k, (rle, p, d) in enumerate(zip(labels.masks, labels.parents, labels.depths, strict=True))
    ]
    print("pseudo-labels:", len(pseudo), "masks")
    save_image(args.output / "synthetic_scene_pseudo.jpg", depth_level_panel(scene.image, pseudo))


if __name__ == "__main__":
    main()
