"""Synthetic hierarchical scenes: exact visible-pixel ground truth, determinism, COCO output that
``sohes evaluate`` reads (ground truth against itself scores 1.0 everywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sohes_hf.data.synthetic import SceneConfig, make_synthetic_dataset, render_scene, scene_annotations
from sohes_hf.data.synthetic import dataset as dataset_module
from sohes_hf.data.synthetic.dataset import scene_seed, split_sizes
from sohes_hf.data.synthetic.entities import NodeTree
from sohes_hf.data.synthetic.scenes import visible_hierarchy

SRC = str(Path(__file__).parents[2] / "src")


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sohes_hf.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, timeout=300)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_visible_hierarchy_on_a_hand_made_owner_map() -> None:
    """Occlusion, pruning of tiny nodes and of nodes equal to their parent, against hand masks."""
    tree = NodeTree()
    house = tree.add("house")
    walls = tree.add("house:walls", house)
    window = tree.add("house:walls:window", walls)
    roof = tree.add("house:roof", house)
    figure = tree.add("figure")
    head = tree.add("figure:head", figure)
    eye = tree.add("figure:head:eye", head)
    owner = np.full((4, 6), -1, dtype=np.int32)
    owner[2:, :4] = walls
    owner[3, 1] = window  # one pixel: below min_area 2, dropped
    owner[0:2, 0:4] = roof
    owner[1:3, 3:6] = head  # the figure occludes part of the house
    owner[1, 5] = eye  # the figure shows only its head: the head equals the figure and is dropped
    owner[2, 5] = eye
    masks, names, parents, depths = visible_hierarchy(owner, tree, min_area=2)
    assert names == ("house", "house:walls", "house:roof", "figure", "figure:head:eye")
    assert parents.tolist() == [-1, 0, 0, -1, 3]
    assert depths.tolist() == [0, 1, 1, 0, 1]
    expected_walls = np.isin(owner, [walls, window])
    assert np.array_equal(masks[1], expected_walls)
    assert np.array_equal(masks[0], np.isin(owner, [walls, window, roof]))
    assert np.array_equal(masks[3], np.isin(owner, [head, eye]))
    assert np.array_equal(masks[4], owner == eye)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_scene_ground_truth_is_a_forest_of_visible_nested_masks(seed: int) -> None:
    scene = render_scene(SceneConfig(image_size=128), scene_seed(7, seed))
    assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
    assert len(scene.masks) > 0 and (scene.depths == 0).sum() >= 1
    for k, parent in enumerate(scene.parents):
        assert scene.masks[k].sum() >= SceneConfig().min_area
        if parent < 0:
            assert scene.depths[k] == 0
            continue
        assert parent < k  # parents first
        assert scene.depths[k] == scene.depths[parent] + 1
        assert not (scene.masks[k] & ~scene.masks[parent]).any()  # child inside parent
        assert not np.array_equal(scene.masks[k], scene.masks[parent])
    # Visible pixels belong to one entity: wholes are disjoint, and so are siblings.
    for group in {int(p) for p in scene.parents}:
        members = np.flatnonzero(scene.parents == group)
        assert scene.masks[members].sum(axis=0).max() <= 1


def test_coco_annotations_decode_to_the_scene_masks() -> None:
    scene = render_scene(SceneConfig(image_size=96), scene_seed(0, 0))
    annotations = scene_annotations(scene, image_id=5, first_annotation_id=100)
    ids = [a["id"] for a in annotations]
    assert ids == list(range(100, 100 + len(scene.masks)))
    for annotation, mask, parent, depth in zip(
        annotations, scene.masks, scene.parents, scene.depths, strict=True
    ):
        rle = {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
        assert np.array_equal(coco_mask.decode(rle).astype(bool), mask)
        assert annotation["area"] == float(mask.sum())
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert annotation["parent_id"] == (None if parent < 0 else 100 + int(parent))
        assert annotation["depth"] == int(depth) and annotation["image_id"] == 5


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", 5, seed=11, image_size=64, val_fraction=0.4)
    make_synthetic_dataset(tmp_path / "b", 5, seed=11, image_size=64, val_fraction=0.4)
    make_synthetic_dataset(tmp_path / "c", 5, seed=12, image_size=64, val_fraction=0.4)
    files_a, files_b, files_c = (_files(tmp_path / name) for name in "abc")
    assert files_a == files_b
    assert (
        sorted(files_a) == sorted(files_c)
        and files_a["train/images/000001.png"] != files_c["train/images/000001.png"]
    )
    assert (first.train.num_images, first.val.num_images) == (3, 2)
    assert sorted(files_a) == [
        "train/annotations.json",
        "train/images/000001.png",
        "train/images/000002.png",
        "train/images/000003.png",
        "val/annotations.json",
        "val/images/000004.png",
        "val/images/000005.png",
    ]
    train = json.loads(files_a["train/annotations.json"])
    val = json.loads(files_a["val/annotations.json"])
    assert [i["id"] for i in train["images"]] == [1, 2, 3] and [i["id"] for i in val["images"]] == [4, 5]
    ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert ids == list(range(1, len(ids) + 1))  # unique across the splits
    assert first.train.num_annotations == len(train["annotations"])
    assert (
        first.val.evaluate_argument("syn")
        == f"syn={tmp_path / 'a/val/annotations.json'}:{tmp_path / 'a/val/images'}"
    )


def test_split_sizes() -> None:
    assert split_sizes(10, 0.2) == (8, 2)
    assert split_sizes(10, 0.0) == (10, 0)
    assert split_sizes(3, 0.01) == (2, 1)
    assert split_sizes(1, 0.5) == (1, 0)
    assert split_sizes(4, 0.99) == (1, 3)


def test_failed_run_keeps_the_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_synthetic_dataset(tmp_path, 3, seed=1, image_size=48)
    before = _files(tmp_path)
    calls = []

    def failing(config: SceneConfig, rng: np.random.Generator) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return render_scene(config, rng)

    monkeypatch.setattr(dataset_module, "render_scene", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_synthetic_dataset(tmp_path, 3, seed=2, image_size=48)
    assert _files(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "val"]  # no staging folder left


def test_cli_make_synthetic_then_evaluate_ground_truth_against_itself(tmp_path: Path) -> None:
    """Predictions = the GT masks with score 1 and the GT links: AR 1.0 and link P/R 1.0."""
    out = tmp_path / "synthetic"
    made = _sohes(
        "data",
        "make-synthetic",
        "--num-images",
        "6",
        "--seed",
        "3",
        "--output",
        str(out),
        "--image-size",
        "96",
        "--val-fraction",
        "0.5",
    )
    assert made.returncode == 0, made.stderr
    printed = dict(line.split("\t") for line in made.stdout.strip().splitlines())
    assert printed["train_images"] == "3" and printed["val_images"] == "3"
    gt_file = out / "val" / "annotations.json"
    gt = json.loads(gt_file.read_text())
    assert {a["depth"] for a in gt["annotations"]} >= {0, 1, 2}
    results = [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "segmentation": a["segmentation"],
            "score": 1.0,
            "id": a["id"],
            "parent_id": a["parent_id"],
        }
        for a in gt["annotations"]
    ]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(results))
    output = tmp_path / "results.json"
    evaluated = _sohes(
        "evaluate",
        "--dataset",
        f"synthetic={gt_file}:{out / 'val' / 'images'}",
        "--predictions",
        str(predictions),
        "--output",
        str(output),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    payload = json.loads(output.read_text())
    hierarchy = payload["hierarchy"]["synthetic"]
    assert hierarchy["AR_wholes"] == 1.0 and hierarchy["AR_parts"] == 1.0 and hierarchy["AR_subparts"] == 1.0
    links = hierarchy["parent_links"]
    assert links["precision"] == 1.0 and links["recall"] == 1.0
    assert links["num_ground_truth_links"] == sum(a["parent_id"] is not None for a in gt["annotations"])
    assert "100.0" in evaluated.stdout


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--num-images", "0"], "--num-images: must be a positive integer"),
        (["--num-images", "2", "--val-fraction", "1"], "--val-fraction: must lie in [0, 1)"),
        (["--num-images", "2", "--image-size", "16"], "--image-size: must be an integer >= 32"),
        (["--num-images", "2", "--seed", "-1"], "--seed: must be a non-negative integer"),
    ],
)
def test_cli_bad_values_are_one_line_errors(tmp_path: Path, flags: list[str], needle: str) -> None:
    result = _sohes("data", "make-synthetic", "--output", str(tmp_path / "out"), *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"sohes: error: {needle}" in result.stderr
    assert not (tmp_path / "out").exists()
