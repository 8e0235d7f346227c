"""``sohes segment`` end to end on a tiny random model saved to a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sohes_hf.cli import main as cli_main
from sohes_hf.masks import decode_mask
from sohes_hf.modeling import SohesForHierarchicalSegmentation
from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
from sohes_hf.modeling.testing_utils import tiny_sohes_config


@pytest.fixture(autouse=True)
def segment_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {**cli_main.SUBCOMMANDS, "segment": ("sohes_hf.cli.segment", "segment images")}
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", table)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_sohes_cli")
    SohesForHierarchicalSegmentation(tiny_sohes_config(decoder_layers=1, num_queries=8)).save_pretrained(
        directory
    )
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name, (height, width) in [("cat.png", (70, 90)), ("street.jpg", (96, 40))]:
        path = directory / name
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_segment_writes_json_pictures_and_sam_records_then_resumes(
    model_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    argv = ["segment", *map(str, images), "--model", str(model_dir), "--output", str(output)]
    assert cli_main.main([*argv, "--threshold", "0", "--sam", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    for image in images:
        stem = image.stem
        with Image.open(image) as opened:
            width, height = opened.size
        payload = json.loads((output / f"{stem}.json").read_text())
        assert (payload["width"], payload["height"], payload["image"]) == (width, height, str(image))
        entities = payload["entities"]
        assert entities
        for position, entity in enumerate(entities):
            assert entity["id"] == position
            assert entity["parent_id"] is None or entity["parent_id"] < position
            assert decode_mask(entity["mask"]).shape == (height, width)
        with Image.open(output / f"{stem}.overlay.png") as overlay:
            assert overlay.size == (width, height)
        for suffix in ("levels.png", "tree.png"):
            with Image.open(output / f"{stem}.{suffix}") as picture:
                assert picture.size[0] > 0
        tree_lines = (output / f"{stem}.tree.txt").read_text().splitlines()
        assert len(tree_lines) == len(entities)
        sam = json.loads((output / f"{stem}.sam.json").read_text())
        assert [r["area"] for r in sam] == [e["area"] for e in entities]
        assert stem in printed
    before = (output / "cat.json").stat().st_mtime_ns
    assert cli_main.main(argv) == 0
    assert "already done" in capsys.readouterr().out
    assert (output / "cat.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "1.5"], "--threshold: must lie in [0, 1]"),
        (["--max-instances", "0"], "--max-instances"),
        (["--device", "tpu"], "--device: unknown device"),
    ],
)
def test_bad_flags_are_named(
    images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["segment", str(images[0]), "--model", "m", "--output", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_images_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not pixels")
    for image, message in [(tmp_path / "absent.png", "file not found"), (text, "not a readable image")]:
        with pytest.raises(SystemExit):
            cli_main.main(["segment", str(image), "--model", "m", "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert message in err and image.name in err
