"""Issue 18, item 7: help texts and error messages of the ``sohes`` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_dino_vit, tiny_sohes_config

ROOT = Path(__file__).resolve().parents[1]


def _sohes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("SOHES_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())", *args],
        capture_output=True, text=True, check=False, timeout=300, env=environment,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.jpg"):
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_help_shows_defaults_and_plain_descriptions() -> None:
    wide = {"COLUMNS": "250"}  # one line per option: argparse wraps to the terminal width
    explore = _sohes("explore", "--help", env=wide).stdout
    for flag, default in (("--backbone", "facebook/dino-vitb8"), ("--refiner", "cascadepsp"),
                          ("--image-size", "1024"), ("--batch-size", "8")):  # fmt: skip
        options = " ".join(explore.split("options:")[1].split())
        described = options.split(f" {flag} ")[1].split(" --")[0]  # metavar and help of the flag
        assert described.endswith(f"(default: {default})"), described
    train = _sohes("train", "--help").stdout
    assert "``" not in train and "Trains phase 2" in train
    assert "accelerate launch -m sohes_hf.cli.train --phase self-instruction" in train  # example kept
    data = _sohes("data", "--help").stdout
    assert "Prepares data for SOHES" in data
    split = _sohes("data", "make-sa1b-split", "--help", env=wide).stdout
    assert "COCO evaluation split" in split
    assert "decompression-bomb guard (default: 100000000)" in split


def test_a_bad_flag_shows_the_usage_of_its_subcommand(photos: Path, tmp_path: Path) -> None:
    result = _sohes("explore", str(photos), "--output", str(tmp_path), "--bogus")
    assert result.stderr.startswith("usage: sohes explore ")
    assert _one_error_line(result) == "sohes: error: unrecognized arguments: --bogus"
    nested = _sohes("data", "check", "--image-dir", str(photos), "--pseudo-labels", "x.json", "--bogus")
    assert nested.stderr.startswith("usage: sohes data check ")
    assert _one_error_line(nested) == "sohes: error: unrecognized arguments: --bogus"


def test_resume_with_another_setting_names_the_field_and_both_values(photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_dino_vit().save_pretrained(tmp_path / "vit")
    common = ["explore", str(photos), "--output", str(tmp_path / "out"), "--backbone", str(tmp_path / "vit")]
    common += ["--refiner", "none", "--device", "cpu", "--no-progress"]
    assert _sohes(*common, "--image-size", "64").returncode == 0
    line = _one_error_line(_sohes(*common, "--image-size", "128"))
    assert "self_exploration.image_size: the journal has 64, this run has 128" in line
    assert line.startswith("sohes: error: --output: ")


def test_merge_errors_name_the_merge_folder(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    line = _one_error_line(_sohes("explore", "--merge", str(tmp_path / "shards"), "--output", "all.json"))
    assert line.startswith("sohes: error: --merge: no pseudo_labels.shard-*-of-*.json files in ")
    assert "output_dir" not in line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_sohes")
    SohesForHierarchicalSegmentation(tiny_sohes_config(decoder_layers=1, num_queries=8)).save_pretrained(
        directory
    )
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(directory)
    return directory


def test_segment_accepts_a_folder_of_images(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    result = _sohes(
        "segment", str(photos), "--model", str(model_dir), "--output", str(tmp_path), "--threshold", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stem, name in (("a", "a.png"), ("b", "sub/b.jpg")):
        payload = json.loads((tmp_path / f"{stem}.json").read_text())
        assert payload["image"] == str(photos / name) and payload["entities"]
        assert (tmp_path / f"{stem}.levels.png").is_file()
    assert not (tmp_path / "notes.json").exists()
    (tmp_path / "empty").mkdir()
    line = _one_error_line(
        _sohes("segment", str(tmp_path / "empty"), "--model", str(model_dir), "--output", "x")
    )
    assert "IMAGE: no image in folder" in line
    line = _one_error_line(
        _sohes("segment", str(photos), "--model", str(tmp_path / "no_model"), "--output", "x")
    )
    assert line.startswith(
        f"sohes: error: --model: no folder {tmp_path / 'no_model'} (give a saved model folder"
    )


@pytest.mark.parametrize("command", ["segment", "evaluate", "explore"])
def test_an_unreachable_hub_id_is_one_line_without_info_noise(
    command: str, photos: Path, tmp_path: Path
) -> None:
    env = {
        "HF_HOME": str(tmp_path / "empty_hf_home"),
        "HF_HUB_CACHE": str(tmp_path / "empty_hf_home" / "hub"),
    }
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    arguments = {
        "segment": ["segment", str(photos / "a.png"), "--model", "org/not-cached", "--output", str(tmp_path)],
        "evaluate": ["evaluate", "--dataset", f"d={gt}:{photos}", "--model", "org/not-cached"],
        "explore": ["explore", str(photos), "--output", str(tmp_path), "--backbone", "org/not-cached",
                    "--refiner", "none"],
    }[command]  # fmt: skip
    result = _sohes(*arguments, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no INFO line before the error
    assert lines[0].startswith(
        "sohes: error: could not reach the Hugging Face Hub to download org/not-cached"
    )
    flag = "--backbone" if command == "explore" else "--model"
    assert f"pass {flag} DIR" in lines[0] and "hf download org/not-cached --local-dir DIR" in lines[0]


def test_no_help_text_shows_raw_rst(capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand's (and data sub-subcommand's) --help is plain text, without ``literals``."""
    from sohes_hf.cli import main as cli_main

    commands = [[name] for name in cli_main.SUBCOMMANDS]
    commands += [["data", name] for name in ("make-sa1b-split", "ade20k-to-coco", "convert-labels", "check")]
    for command in commands:
        with pytest.raises(SystemExit) as done:
            cli_main.main([*command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "usage: sohes " in text and "``" not in text, (command, text)
