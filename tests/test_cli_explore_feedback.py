"""Issue 18, items 4-5: ``sohes explore`` says when nothing was labelled and shows signs of life.

Driven as a user drives it: the ``sohes`` command in a subprocess on a folder of pictures, with a
tiny local backbone folder. Where a refiner must misbehave (drop every mask, take its time), the
subprocess replaces :func:`~sohes_hf.pseudo_labeling.refinement.build_refiner` before running
the same ``main``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.modeling.testing_utils import tiny_dino_vit
from sohes_hf.pseudo_labeling.explore_report import emptied_step, format_rate

ROOT = Path(__file__).resolve().parents[1]

# Runs ``sohes`` with the refiner chosen by REFINER_KIND (empty: the real build_refiner).
_LAUNCHER = """
import os, sys, time
import numpy as np
import sohes_hf.pseudo_labeling.refinement as refinement
from sohes_hf.cli.main import main
from sohes_hf.masks import encode_mask

class EmptyingRefiner(refinement.MaskRefiner):
    name = "cascadepsp"
    def refine(self, image, masks):
        return [encode_mask(np.zeros(image.shape[:2], bool)) for _ in masks]

class SlowRefiner(refinement.IdentityRefiner):
    name = "cascadepsp"
    def refine(self, image, masks):
        time.sleep(0.6 * len(masks))
        return super().refine(image, masks)

kind = os.environ.get("REFINER_KIND")
if kind:
    refiner = {"emptying": EmptyingRefiner, "slow": SlowRefiner}[kind]()
    refinement.build_refiner = lambda *args, **kwargs: refiner
sys.exit(main())
"""


def _sohes(*args: str, refiner: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "REFINER_KIND": refiner}
    env.pop("SOHES_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *args],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny-dino"
    tiny_dino_vit().save_pretrained(path)
    return path


def _photos(folder: Path, count: int) -> Path:
    """``count`` pictures of coloured rectangles on a plain background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = np.full((72, 88, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, 50)), int(rng.integers(0, 60))
            image[y : y + int(rng.integers(10, 24)), x : x + int(rng.integers(10, 28))] = rng.integers(
                0, 256, 3
            )
        Image.fromarray(image).save(folder / f"photo_{index}.png")
    return folder


def _explore(
    images: Path, output: Path, vit_dir: Path, *extra: str, refiner: str = ""
) -> subprocess.CompletedProcess[str]:
    common = ["--backbone", str(vit_dir), "--image-size", "64", "--device", "cpu", "--batch-size", "2"]
    return _sohes("explore", str(images), "--output", str(output), *common, *extra, refiner=refiner)


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]


def test_refinement_dropping_every_mask_warns_per_image_and_fails(vit_dir: Path, tmp_path: Path) -> None:
    images = _photos(tmp_path / "photos", 2)
    result = _explore(images, tmp_path / "out", vit_dir, "--no-progress", refiner="emptying")
    assert result.returncode == 1, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    for name in ("photo_0.png", "photo_1.png"):
        assert any(name in line and "refinement removed all" in line for line in warnings), warnings
    assert any("refinement removed every mask of every image" in line for line in warnings), warnings
    (error,) = _error_lines(result)
    assert error.startswith("sohes: error: no pseudo-label was made for any of the 2 labelled images")
    assert "refinement removed every mask" in error and "--refiner none" in error
    summary = json.loads(result.stdout)
    assert summary["num_masks"] == 0 and summary["masks_after_step"]["after_refinement"] == 0
    assert summary["masks_after_step"]["after_local"] > 0
    assert "CPU" in result.stderr and "--refiner none" in result.stderr  # the up-front warning


def test_empty_folder_fails_before_any_work(vit_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a picture")
    result = _explore(tmp_path / "empty", tmp_path / "out", vit_dir, "--refiner", "none")
    assert result.returncode == 2
    (error,) = _error_lines(result)
    assert error.startswith(f"sohes: error: IMAGES: no image found in {tmp_path / 'empty'}")
    assert ".jpg" in error


def test_folder_of_unreadable_files_fails_naming_the_first_reason(vit_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "b.png").write_bytes(b"")
    result = _explore(folder, tmp_path / "out", vit_dir, "--refiner", "none", "--no-progress")
    assert result.returncode == 1
    (error,) = _error_lines(result)
    assert "no image could be labelled: all 2 images were skipped (first: " in error
    assert "a.jpg" in error and "skipped.json" in error


def test_progress_names_the_image_and_its_step_and_the_rate_is_readable(
    vit_dir: Path, tmp_path: Path
) -> None:
    images = _photos(tmp_path / "photos", 1)
    result = _explore(images, tmp_path / "out", vit_dir, refiner="slow")
    assert result.returncode == 0, result.stderr[-3000:]
    # 0.6 s per mask: the bar is redrawn (every 0.5 s at most) while the masks are refined
    assert re.search(r"image 1 \(photo_0\.png\): refining mask ([2-9]|\d\d+)/\d+", result.stderr), (
        result.stderr
    )
    assert "image 1: backbone features" in result.stderr
    # the bar's rate is this run's, in a readable unit, after the first finished image
    assert re.search(r"1/1 \[[\d:]+<[\d:]+, \d+\.\d (images/s|s/image)\]", result.stderr), result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert re.fullmatch(r"\d+\.\d (images/s|s/image)", summary["rate"]), summary["rate"]
    assert summary["rate"] in result.stderr  # the INFO line says it too


def test_rate_and_emptied_step_formulas() -> None:
    assert format_rate(1, 138.0) == "2.3 min/image"
    assert format_rate(41, 10.0) == "4.1 images/s"
    assert format_rate(2, 25.0) == "12.5 s/image"
    assert format_rate(1, 3 * 3600.0) == "3.0 h/image"
    assert format_rate(0, 5.0) == "no image processed"
    counts = {"global_regions": 9, "after_nms": 7, "small_regions": 2, "local_subregions": 0}
    step = emptied_step({**counts, "after_local": 5, "after_refinement": 0})
    assert step is not None and (step.step, step.num_before) == ("refinement", 5)
    step = emptied_step({**counts, "after_local": 0, "after_refinement": 0})
    assert step is not None and step.step == "local re-clustering"  # the first emptying step
    assert emptied_step({**counts, "after_local": 5, "after_refinement": 3}) is None
    later = emptied_step({**counts, "after_local": 5, "after_refinement": 3, "after_small_filter": 0})
    assert later is not None and (later.step, later.num_before) == ("small filter", 3)  # a step added later
