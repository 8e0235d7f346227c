"""Issue 14.6e: ``sohes explore``, run as a user runs it, does not make the whole frame the root.

With real DINO keys, the merge at the lowest threshold (0.1) unites the whole image, and that
region, kept, was the single depth-0 mask of every hierarchy. The stand-in backbone here is a tiny
random ViT whose last-layer keys get a shared component (a key bias), as DINO's keys have: the
shapes stay apart at the high thresholds and everything merges at the low ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.masks import decode_mask
from sohes_hf.modeling.testing_utils import tiny_dino_vit
from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig, ShardPaths, run_explore_job
from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
from sohes_hf.pseudo_labeling.refinement import IdentityRefiner
from sohes_hf.pseudo_labeling.self_exploration import explore_image

HEIGHT, WIDTH = 96, 128


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = tiny_dino_vit()
    key_bias = model.get_parameter("layers.1.attention.k_proj.bias")
    with torch.no_grad():
        key_bias += 0.6 / key_bias.numel() ** 0.5  # a shared key direction of norm 0.6
    path = tmp_path_factory.mktemp("vit") / "shared-key-vit"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Three noisy coloured discs on a noisy green background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    pixels = np.array([90.0, 140.0, 90.0]) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    for cy, cx, radius, color in [
        (30, 35, 18, (220, 40, 40)),
        (60, 90, 22, (40, 40, 220)),
        (70, 30, 14, (240, 220, 30)),
    ]:
        disc = np.hypot(yy - cy, xx - cx) < radius
        pixels[disc] = np.array(color) + rng.normal(0, 12, (int(disc.sum()), 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _corners(mask: np.ndarray) -> int:
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def test_explore_cli_has_no_whole_frame_root(vit_dir: Path, image: np.ndarray, tmp_path: Path) -> None:
    # The paper's steps alone (clean-up off) on this backbone and image: the whole frame is the
    # one root, as the user saw on real photos; so the check below can fail.
    paper_only = SelfExplorationConfig(image_size=64, refiner="none", min_mask_area=0, max_mask_corners=4)
    extractor = DinoFeatureExtractor(vit_dir, device="cpu")
    labels = explore_image(image, extractor, IdentityRefiner(), paper_only)
    roots = [decode_mask(labels.masks[i]) for i in np.flatnonzero(labels.depths == 0)]
    assert [int(mask.sum()) for mask in roots] == [HEIGHT * WIDTH]

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "scene.png")
    command = [
        sys.executable,
        "-m",
        "sohes_hf.cli.main",
        "explore",
        str(images),
        "--output",
        str(tmp_path / "out"),
    ]
    options = ["--backbone", str(vit_dir), "--refiner", "none", "--image-size", "64", "--device", "cpu"]
    result = subprocess.run(
        [*command, *options, "--no-progress"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    coco = json.loads(ShardPaths.of(tmp_path / "out", 0, 1).annotations.read_text())
    annotations = coco["annotations"]
    masks = [decode_mask(a["segmentation"]) for a in annotations]
    assert masks and all(mask.shape == (HEIGHT, WIDTH) for mask in masks)
    assert all(_corners(mask) <= 2 for mask in masks)  # HASSOD's three-corner rule
    assert all(mask.sum() >= 100 for mask in masks)  # HASSOD's 100 px rule
    depth_0 = [mask for mask, a in zip(masks, annotations, strict=True) if a["depth"] == 0]
    assert depth_0 and all(mask.sum() < HEIGHT * WIDTH for mask in depth_0)

    # The clean-up fields are part of the journaled configuration: resuming with the CLI's
    # settings finds the work done, resuming with the clean-up off is refused.
    assert coco["info"]["self_exploration"]["max_mask_corners"] == 2
    assert coco["info"]["self_exploration"]["min_mask_area"] == 100
    same = SelfExplorationConfig(image_size=64, refiner="none")
    job = ExploreJobConfig(inputs=(str(images),), output_dir=str(tmp_path / "out"), backbone=str(vit_dir))
    resumed = run_explore_job(
        dataclasses.replace(job, exploration=same), extractor, IdentityRefiner(), show_progress=False
    )
    assert resumed.num_images == 1 and json.loads(resumed.paths.annotations.read_text()) == coco
    for changed in ({"max_mask_corners": 4}, {"min_mask_area": 0}, {"use_hole_filling": True}):
        other = dataclasses.replace(job, exploration=dataclasses.replace(same, **changed))
        with pytest.raises(ValueError, match=r"was written with other settings \(self_exploration\."):
            run_explore_job(other, extractor, IdentityRefiner(), show_progress=False)
