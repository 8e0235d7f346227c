"""Issue 18, item 6: pictures of pseudo-labels (``sohes explore --pictures N``, ``sohes show``).

Run as a user runs them (the ``sohes`` command in a subprocess). The pictures are checked against
the masks decoded with pycocotools: in the per-depth panel, the tile of depth d differs from the
image on the pixels of depth-d masks and equals it everywhere else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from sohes_hf.modeling.testing_utils import tiny_dino_vit

ROOT = Path(__file__).resolve().parents[1]
HEADER, GAP = 22, 4  # depth_level_panel's tile header height and gap between tiles


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())", *args],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _decode(segmentation: dict[str, Any]) -> np.ndarray:
    return coco_mask.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(
        bool
    )


def _check_panel(panel: np.ndarray, image: np.ndarray, masks_by_depth: dict[int, list[np.ndarray]]) -> None:
    """Tile 0 is the image; tile d + 1 changes the pixels of depth-d masks only."""
    height, width = image.shape[:2]
    levels = max(masks_by_depth) + 1
    assert panel.shape == (HEADER + height, (levels + 1) * width + levels * GAP, 3)
    np.testing.assert_array_equal(panel[HEADER:, :width], image)
    for depth in range(levels):
        left = (depth + 1) * (width + GAP)
        tile = panel[HEADER:, left : left + width]
        inside = np.any(masks_by_depth.get(depth, [np.zeros((height, width), bool)]), axis=0)
        changed = np.any(tile != image, axis=2)
        assert inside.any()
        assert changed[inside].mean() > 0.9, (depth, changed[inside].mean())
        assert not changed[~inside].any()


@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """``sohes explore --pictures 2`` on three photos: (photo folder, output folder, result)."""
    root = tmp_path_factory.mktemp("explore_pictures")
    torch.manual_seed(0)
    tiny_dino_vit().save_pretrained(root / "vit")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        image = np.full((64, 80, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        image[8:40, 10:50] = rng.integers(0, 256, 3)
        image[20:30, 20:34] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(photos / f"photo_{index}.png")
    result = _sohes(
        "explore", str(photos), "--output", str(root / "out"), "--backbone", str(root / "vit"),
        "--refiner", "none", "--image-size", "64", "--device", "cpu", "--no-progress", "--pictures", "2",
    )  # fmt: skip
    return photos, root / "out", result


def test_explore_pictures_draw_the_first_images_pseudo_labels(
    explored: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    photos, output, result = explored
    assert result.returncode == 0, result.stderr[-3000:]
    coco = json.loads((output / "pseudo_labels.shard-00000-of-00001.json").read_text())
    pictures = output / "pictures"
    assert sorted(p.name for p in pictures.glob("*.levels.png")) == [
        "photo_0.levels.png",
        "photo_1.levels.png",
    ]
    for image_record in coco["images"][:2]:
        stem = Path(image_record["file_name"]).stem
        image = _read(photos / image_record["file_name"])
        own = [a for a in coco["annotations"] if a["image_id"] == image_record["id"]]
        assert own
        by_depth: dict[int, list[np.ndarray]] = {}
        for annotation in own:
            by_depth.setdefault(annotation["depth"], []).append(_decode(annotation["segmentation"]))
        _check_panel(_read(pictures / f"{stem}.levels.png"), image, by_depth)
        assert _read(pictures / f"{stem}.tree.png").shape[0] > 0
        assert len((pictures / f"{stem}.tree.txt").read_text().splitlines()) == len(own)
        overlay = _read(pictures / f"{stem}.overlay.png")
        union = np.any([_decode(a["segmentation"]) for a in own], axis=0)
        assert np.any(overlay != image, axis=2)[union].mean() > 0.9


def test_show_draws_the_same_pictures_from_the_shard_file(
    explored: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    photos, output, _ = explored
    shard = output / "pseudo_labels.shard-00000-of-00001.json"
    result = _sohes(
        "show", str(shard), str(photos), "--output", str(tmp_path), "--images", "photo_1.png", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.levels.png")) == [
        "photo_1.levels.png",
        "photo_2.levels.png",
    ]
    assert (tmp_path / "photo_1.levels.png").read_bytes() == (
        output / "pictures" / "photo_1.levels.png"
    ).read_bytes()
    assert "photo_2.png:" in result.stdout and "masks" in result.stdout


def _rle(mask: np.ndarray) -> dict[str, Any]:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


@pytest.fixture
def hand_made(tmp_path: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """An image with a whole (id 10), its part (id 11, parent 10) and a second whole (id 12)."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "scene.png")
    masks = [np.zeros((40, 60), bool) for _ in range(3)]
    masks[0][2:30, 2:40] = True
    masks[1][10:20, 10:20] = True
    masks[2][32:38, 45:58] = True
    return folder, image, masks


def test_show_draws_a_coco_file_with_parent_links(
    hand_made: tuple[Path, np.ndarray, list[np.ndarray]], tmp_path: Path
) -> None:
    folder, image, masks = hand_made
    annotations = [
        {"id": 10, "image_id": 7, "category_id": 1, "segmentation": _rle(masks[0]), "parent_id": None},
        {"id": 12, "image_id": 7, "category_id": 1, "segmentation": _rle(masks[2]), "parent_id": None},
        {"id": 11, "image_id": 7, "category_id": 1, "segmentation": _rle(masks[1]), "parent_id": 10},
    ]
    labels = tmp_path / "labels.json"
    images = [{"id": 7, "file_name": "scene.png", "width": 60, "height": 40}]
    labels.write_text(json.dumps({"images": images, "annotations": annotations}))
    result = _sohes("show", str(labels), str(folder), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_panel(
        _read(tmp_path / "out" / "scene.levels.png"), image, {0: [masks[0], masks[2]], 1: [masks[1]]}
    )
    tree = (tmp_path / "out" / "scene.tree.txt").read_text().splitlines()
    assert [line.split(" score")[0] for line in tree] == ["#10", "└── #11", "#12"]


def test_show_draws_a_results_list_without_links(
    hand_made: tuple[Path, np.ndarray, list[np.ndarray]], tmp_path: Path
) -> None:
    folder, image, masks = hand_made
    results = [{"image_id": 7, "segmentation": _rle(m), "score": 0.9 - 0.1 * k} for k, m in enumerate(masks)]
    labels = tmp_path / "predictions.json"
    labels.write_text(json.dumps(results))
    info = tmp_path / "gt.json"
    info.write_text(json.dumps({"images": [{"id": 7, "file_name": "scene.png", "width": 60, "height": 40}]}))
    refused = _sohes("show", str(labels), str(folder), "--output", str(tmp_path / "out"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("sohes: error:")]
    assert "--image-info" in line
    result = _sohes(
        "show", str(labels), str(folder), "--output", str(tmp_path / "out"), "--image-info", str(info)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_panel(_read(tmp_path / "out" / "scene.levels.png"), image, {0: masks})
    unknown = _sohes("show", str(labels), str(folder), "--image-info", str(info), "--images", "nope.png")
    assert unknown.returncode == 2 and "'nope.png'" in unknown.stderr and "Traceback" not in unknown.stderr
