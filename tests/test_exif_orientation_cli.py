"""One orientation convention in every command: the stored pixels (issue 15, item 6).

The test writes a JPEG whose pixels are 200 wide x 160 high with EXIF Orientation 6 (a viewer
shows it rotated, 160 x 200) and COCO ground truth in the stored orientation, as COCO and SA-1B
define it. ``sohes explore``, ``sohes segment`` and ``sohes evaluate --model`` must all see a
200 x 160 image; a ground truth made on the rotated view is refused with one line naming it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from tests.test_bad_inputs_cli import _assert_clean_refusal, _sohes

from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_dino_vit, tiny_sohes_config

WIDTH, HEIGHT = 200, 160  # as stored
ORIENTATION_TAG = 0x0112


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exif")
    torch.manual_seed(0)
    tiny_dino_vit().save_pretrained(root / "vit")
    SohesForHierarchicalSegmentation(tiny_sohes_config(decoder_layers=1, num_queries=8)).save_pretrained(
        root / "model"
    )
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(root / "model")
    (root / "images").mkdir()
    pixels = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    pixels[20:100, 30:150] = (220, 40, 40)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(root / "images" / "rotated.jpg", exif=exif.tobytes())
    with Image.open(root / "images" / "rotated.jpg") as written:  # the fault is really in the file
        assert written.size == (WIDTH, HEIGHT) and written.getexif()[ORIENTATION_TAG] == 6
    for name, (width, height) in {
        "gt.json": (WIDTH, HEIGHT),
        "gt_rotated_view.json": (HEIGHT, WIDTH),
    }.items():
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[20:100, 30:150] = 1
        rle = coco_mask.encode(np.asfortranarray(mask))
        gt = {
            "images": [{"id": 1, "file_name": "rotated.jpg", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "area": float(mask.sum()), "bbox": [30, 20, 120, 80],
                             "segmentation": {"size": [height, width], "counts": rle["counts"].decode()}}],
        }  # fmt: skip
        (root / name).write_text(json.dumps(gt))
    return {"root": root, "image": root / "images" / "rotated.jpg"}


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_explore_uses_stored_orientation(files: dict[str, Path]) -> None:
    out = files["root"] / "explore"
    _ok(_sohes("explore", str(files["root"] / "images"), "--output", str(out), "--backbone",
               str(files["root"] / "vit"), "--refiner", "none", "--image-size", "64", "--no-progress",
               "--device", "cpu"))  # fmt: skip
    coco: Any = json.loads((out / "pseudo_labels.shard-00000-of-00001.json").read_text())
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(WIDTH, HEIGHT)]
    assert coco["annotations"] and {tuple(a["segmentation"]["size"]) for a in coco["annotations"]} == {
        (HEIGHT, WIDTH)
    }


def test_segment_uses_stored_orientation(files: dict[str, Path]) -> None:
    out = files["root"] / "segment"
    _ok(_sohes("segment", str(files["image"]), "--model", str(files["root"] / "model"), "--output", str(out),
               "--threshold", "0", "--device", "cpu"))  # fmt: skip
    payload = json.loads((out / "rotated.json").read_text())
    assert (payload["width"], payload["height"]) == (WIDTH, HEIGHT)
    assert payload["entities"] and {tuple(e["mask"]["size"]) for e in payload["entities"]} == {
        (HEIGHT, WIDTH)
    }
    with Image.open(out / "rotated.overlay.png") as overlay:
        assert overlay.size == (WIDTH, HEIGHT)


def test_evaluate_model_uses_the_ground_truth_orientation(files: dict[str, Path]) -> None:
    root = files["root"]
    dataset = f"x={root / 'gt.json'}:{root / 'images'}"
    result = _sohes("evaluate", "--model", str(root / "model"), "--dataset", dataset, "--device", "cpu")
    _ok(result)
    assert "AP" in result.stdout
    # a ground truth made on the displayed (rotated) view: one line naming the image and the cause
    refused = _sohes("evaluate", "--model", str(root / "model"), "--dataset",
                     f"x={root / 'gt_rotated_view.json'}:{root / 'images'}", "--device", "cpu")  # fmt: skip
    _assert_clean_refusal(refused, "rotated.jpg", "160x200", "200x160", "EXIF Orientation tag (6)")
