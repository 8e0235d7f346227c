"""Out-of-range numbers, recipe exponents and unwritable outputs through the real ``sohes`` process.

Issue 15, item 12: ``1e400`` ids raised ``OverflowError``; ``1e-12`` in a recipe was a string
(PyYAML is YAML 1.1); a read-only or full output disk gave chained tracebacks after the model
had loaded. Each test builds the fault and runs the command in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from sohes_hf.training.config import load_training_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _fault_injection_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sohes_fault_injection", REPO / "benchmarks/fault_injection.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# Runs ``sohes``; with SOHES_FAULT_READONLY=DIR, writes under DIR fail with EROFS as on a read-only
# mount (the tests may run as root, for whom chmod protects nothing). The fault-injection script's
# own child, so the test and the benchmark simulate the same read-only disk.
_CHILD: str = _fault_injection_module().CHILD


def _sohes(*args: str, readonly: Path | None = None, max_file_bytes: int | None = None) -> Any:
    env = dict(ENV)
    if readonly is not None:
        env["SOHES_FAULT_READONLY"] = str(readonly)

    def limit() -> None:  # a full disk: writes past max_file_bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False, timeout=300,
        env=env, preexec_fn=limit if max_file_bytes is not None else None,
    )  # fmt: skip


def _assert_one_line_error(result: Any, *needles: str) -> str:
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _square() -> dict[str, Any]:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:20, 4:20] = 1
    return {"size": [32, 32], "counts": coco_mask.encode(np.asfortranarray(mask))["counts"].decode()}


def _ground_truth(image_id: str = "1", annotation_image_id: str = "1") -> str:
    """COCO ground truth as text, so ids can be number literals JSON cannot write (``1e400``)."""
    segmentation = json.dumps(_square())
    return (
        f'{{"images": [{{"id": {image_id}, "file_name": "a.png", "width": 32, "height": 32}}],\n'
        f'"categories": [{{"id": 1, "name": "thing"}}],\n'
        f'"annotations": [{{"id": 7, "image_id": {annotation_image_id}, "category_id": 1, '
        f'"segmentation": {segmentation}, "area": 256, "bbox": [4, 4, 16, 16], "iscrowd": 0}}]}}\n'
    )


def _predictions(image_id: str = "1") -> str:
    square = json.dumps(_square())
    return f'[{{"image_id": {image_id}, "category_id": 1, "segmentation": {square}, "score": 0.9}}]'


@pytest.mark.parametrize("where", ["image", "annotation", "prediction"])
def test_an_id_beyond_the_float_range_is_refused_naming_file_and_line(tmp_path: Path, where: str) -> None:
    gt, predictions = tmp_path / "gt.json", tmp_path / "predictions.json"
    gt.write_text(
        _ground_truth(*{"image": ("1e400", "1"), "annotation": ("1", "1e400")}.get(where, ("1", "1")))
    )
    predictions.write_text(_predictions("1e400" if where == "prediction" else "1"))
    result = _sohes("evaluate", "--dataset", f"x={gt}", "--predictions", str(predictions))
    bad = predictions if where == "prediction" else gt
    line = {"image": 1, "annotation": 3, "prediction": 1}[where]
    _assert_one_line_error(result, str(bad), f"line {line}", "1e400")


def test_pseudo_label_id_beyond_the_float_range_is_refused_by_convert_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(_ground_truth(annotation_image_id="1e400"))
    result = _sohes("data", "convert-labels", str(labels), "--output", str(tmp_path / "labels.arrow"))
    _assert_one_line_error(result, "INPUTS", str(labels), "line 3", "1e400")
    assert not (tmp_path / "labels.arrow").exists()


def _recipe(tmp_path: Path) -> dict[str, Any]:
    recipe = yaml.safe_load((REPO / "examples/configs/tiny_cpu.yaml").read_text())
    recipe["model_config"]["backbone_config"]["layer_norm_eps"] = "1e-12"  # what PyYAML makes of 1e-12
    return recipe


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_recipe_exponents_without_a_dot_are_numbers(tmp_path: Path, suffix: str) -> None:
    text = "weight_decay: 1e-12\nbase_learning_rate: 2E-4\nmax_steps: 1e3\naugmentation:\n  min_scale: 5e-1\n"
    if suffix == ".json":
        text = (
            '{"weight_decay": 1e-12, "base_learning_rate": 2E-4, "max_steps": 1e3, '
            '"augmentation": {"min_scale": 5e-1}}'
        )
    recipe = tmp_path / f"recipe{suffix}"
    recipe.write_text(text)
    config = load_training_config(recipe, "self-instruction", ["poly_power=3e0", "train_annotations=x.json"])
    assert (config.weight_decay, config.base_learning_rate, config.max_steps) == (1e-12, 2e-4, 1000)
    assert (
        isinstance(config.max_steps, int)
        and config.augmentation.min_scale == 0.5
        and config.poly_power == 3.0
    )


def test_recipe_value_that_is_not_a_number_names_the_field(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**_recipe(tmp_path), "output_dir": str(tmp_path / "out")}))
    result = _sohes(
        "train", "--phase", "self-instruction", "--config", str(recipe), "--cpu", "-o", "weight_decay=small"
    )
    _assert_one_line_error(result, "weight_decay must be a number, got 'small'")
    for override, field in (
        ("augmentation.min_scale=[1]", "augmentation.min_scale"),
        ("max_steps=2.5", "max_steps"),
        ("adan_betas=[0.9, x, 0.9]", r"adan_betas\[1\]"),
    ):
        with pytest.raises(ValueError, match=field):
            load_training_config(recipe, "self-instruction", [override])


def test_read_only_or_full_outputs_are_refused_before_any_model_loads(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    gt, predictions = tmp_path / "gt.json", tmp_path / "predictions.json"
    gt.write_text(_ground_truth())
    predictions.write_text(_predictions())
    locked = tmp_path / "locked"
    # An empty folder: it passes the up-front path checks and fails only if a model load is tried.
    (tmp_path / "no-model").mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**_recipe(tmp_path), "output_dir": str(locked / "train")}))
    commands = {
        # --backbone / --model name folders that do not exist: reaching them would be another error
        "explore": (
            [
                "explore",
                str(image),
                "--output",
                str(locked / "pseudo"),
                "--backbone",
                str(tmp_path / "no-model"),
                "--refiner",
                "none",
            ],
            "--output",
        ),
        "segment": (
            ["segment", str(image), "--model", str(tmp_path / "no-model"), "--output", str(locked / "seg")],
            "--output",
        ),
        "evaluate": (
            [
                "evaluate",
                "--dataset",
                f"x={gt}",
                "--predictions",
                str(predictions),
                "--output",
                str(locked / "results.json"),
            ],
            "--output",
        ),
        "train": (
            ["train", "--phase", "self-instruction", "--config", str(recipe), "--cpu"],
            "output_dir",
        ),  # the recipe with 1e-12 loads
    }
    for arguments, flag in commands.values():
        _assert_one_line_error(
            _sohes(*arguments, readonly=locked), flag, str(locked), "Read-only file system"
        )
    full = _sohes(*commands["explore"][0], max_file_bytes=32)  # the same check: once is enough
    _assert_one_line_error(full, "--output", "File too large")
