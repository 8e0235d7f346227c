"""Unreadable training images: left out at load, replaced mid-run, counted, resumable (issue 15).

One image is a zero-byte file (its header does not open: left out at load) and one is a PNG cut
after its header (it opens, and fails only when decoded: replaced mid-run by the next image).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from PIL import Image
from tests.training import tiny_recipe, write_pseudo_labelled_folder

from sohes_hf.data.image_sources import ImageEntry, ImageReader, ImageReadError
from sohes_hf.data.pseudo_label_checks import PseudoLabelError
from sohes_hf.training import SelfCorrectionTrainer, SelfInstructionTrainer
from sohes_hf.training.checkpointing import list_checkpoints
from sohes_hf.training.config import build_training_config
from sohes_hf.training.datasets import (
    SIZE_MISMATCH_AT_LOAD,
    UNREADABLE_AT_LOAD,
    PseudoLabelledImages,
    TrainingDataError,
)
from sohes_hf.training.record import read_training_record

NUM_IMAGES = 8
TRUNCATED, EMPTY = "img_3.png", "img_6.png"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    image_dir, labels = write_pseudo_labelled_folder(tmp_path_factory.mktemp("bad"), num_images=NUM_IMAGES)
    data = (image_dir / TRUNCATED).read_bytes()
    (image_dir / TRUNCATED).write_bytes(data[: len(data) // 2])
    (image_dir / EMPTY).write_bytes(b"")
    return image_dir, labels


def _entry(path: Path) -> ImageEntry:
    return ImageEntry(image_id=1, file_name=path.name, path=str(path))


def test_probe_opens_headers_only(bad_data: tuple[Path, Path]) -> None:
    image_dir, _ = bad_data
    with ImageReader() as reader:
        assert reader.probe(_entry(image_dir / "img_1.png")) == (64, 64)
        with pytest.raises(ImageReadError, match="cannot open"):
            reader.probe(_entry(image_dir / EMPTY))
        assert reader.probe(_entry(image_dir / TRUNCATED)) == (64, 64)  # the header is intact
        with pytest.raises(ImageReadError, match="cannot decode"):  # so only decoding finds it
            reader.read(_entry(image_dir / TRUNCATED))
        with pytest.raises(ImageReadError, match="not a regular file"):
            reader.probe(_entry(image_dir))


def test_dataset_leaves_out_images_that_do_not_open(
    bad_data: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    image_dir, labels = bad_data
    with caplog.at_level(logging.WARNING):
        images = PseudoLabelledImages(str(labels), str(image_dir), max_unreadable_fraction=0.2)
    assert len(images) == NUM_IMAGES - 1
    assert EMPTY not in [entry.file_name for entry, _ in images.entries]
    assert images.num_dropped == {UNREADABLE_AT_LOAD: 1} and images.num_unreadable_at_load == 1
    assert any(EMPTY in record.getMessage() for record in caplog.records)
    with pytest.raises(TrainingDataError, match=f"1 of {NUM_IMAGES} images are unreadable \\({EMPTY}\\)"):
        PseudoLabelledImages(str(labels), str(image_dir), max_unreadable_fraction=0.1)


def test_dataset_leaves_out_images_of_another_size_than_their_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An image re-saved at another size after exploring: left out at load, not a crash at its step."""
    image_dir, labels = write_pseudo_labelled_folder(tmp_path, num_images=4)
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(image_dir / "img_2.png")  # was 64 x 64
    with caplog.at_level(logging.WARNING):
        images = PseudoLabelledImages(str(labels), str(image_dir))
    assert sorted(entry.file_name for entry, _ in images.entries) == ["img_1.png", "img_3.png", "img_4.png"]
    assert images.num_dropped == {SIZE_MISMATCH_AT_LOAD: 1} and images.num_unreadable_at_load == 0
    warning = next(r.getMessage() for r in caplog.records if "img_2.png" in r.getMessage())
    assert "64x80" in warning and "64x64" in warning
    for index in range(len(images)):  # every kept image loads with masks of its size
        assert images.load(index).masks.shape[1:] == (64, 64)
    for name in ("img_1.png", "img_3.png", "img_4.png"):
        Image.fromarray(np.zeros((32, 64, 3), dtype=np.uint8)).save(image_dir / name)
    with pytest.raises(PseudoLabelError, match=re.escape(SIZE_MISMATCH_AT_LOAD)):
        PseudoLabelledImages(str(labels), str(image_dir))


def _recipe(bad_data: tuple[Path, Path], output_dir: Path, **overrides: object) -> dict[str, object]:
    image_dir, labels = bad_data
    # 8 positions over 7 images: every image is drawn at least once
    values: dict[str, object] = {"max_steps": 4, "max_unreadable_fraction": 0.25, **overrides}
    recipe = tiny_recipe(image_dir, labels, output_dir, **values)
    recipe["augmentation"] = {
        "image_size": 64,
        "min_scale": 0.5,
        "max_scale": 1.5,
        "copy_paste_probability": 1.0,
    }
    return recipe


def test_training_runs_to_the_end_and_counts_the_bad_images(
    bad_data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_training_config("self-instruction", _recipe(bad_data, tmp_path / "run"))
    trainer = SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))
    with caplog.at_level(logging.WARNING):
        result = trainer.train()
    assert trainer.state.global_step == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    record = read_training_record(tmp_path / "run")
    assert record.num_train_images == NUM_IMAGES - 1
    assert record.dropped_images == {UNREADABLE_AT_LOAD: 1}
    assert record.unreadable_images == 1
    # every draw of the truncated image (as the image or as the copy-paste source) was replaced
    assert record.image_substitutions >= 1
    assert (
        record.image_substitutions == result.record.image_substitutions == trainer.state.image_substitutions
    )
    assert trainer.state.unreadable_images == [TRUNCATED]
    replaced = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(replaced) == record.image_substitutions and all(TRUNCATED in m for m in replaced)


def test_too_many_decode_failures_stop_the_run_naming_the_image(
    bad_data: tuple[Path, Path], tmp_path: Path
) -> None:
    # 1 of 8 left out at load is allowed (1 <= 0.125 x 8); the truncated one makes it 2.
    config = build_training_config(
        "self-instruction", _recipe(bad_data, tmp_path / "run", max_unreadable_fraction=0.125)
    )
    trainer = SelfInstructionTrainer(config, accelerator=Accelerator(cpu=True))
    with pytest.raises(TrainingDataError, match=f"2 of {NUM_IMAGES} images are unreadable \\({TRUNCATED}\\)"):
        trainer.train()


class _Crash(Exception):
    pass


@pytest.mark.parametrize("phase", ["self-instruction", "self-correction"])
def test_resumed_run_with_a_bad_image_equals_uninterrupted_run(
    phase: str, bad_data: tuple[Path, Path], phase2_model: Path, tmp_path: Path
) -> None:
    trainer_class = SelfInstructionTrainer if phase == "self-instruction" else SelfCorrectionTrainer

    class Crashing(trainer_class):  # type: ignore[misc,valid-type]
        def _after_optimizer_step(self, model: torch.nn.Module) -> None:
            super()._after_optimizer_step(model)
            if self.state.global_step == 3:
                raise _Crash

    extra = (
        {} if phase == "self-instruction" else {"model_name_or_path": str(phase2_model), "ema_momentum": 0.5}
    )

    def config(folder: str):  # type: ignore[no-untyped-def]
        return build_training_config(
            phase, _recipe(bad_data, tmp_path / folder, checkpointing_steps=2, **extra)
        )

    full = trainer_class(config("full"), accelerator=Accelerator(cpu=True))
    full.train()
    assert full.state.image_substitutions >= 1
    with pytest.raises(_Crash):
        Crashing(config("resumed"), accelerator=Accelerator(cpu=True)).train()
    assert [step for step, _ in list_checkpoints(str(tmp_path / "resumed"))] == [2]
    resumed = trainer_class(config("resumed"), accelerator=Accelerator(cpu=True))
    resumed.train(resume_from="latest")
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    full_record = read_training_record(tmp_path / "full")
    resumed_record = read_training_record(tmp_path / "resumed")
    assert full_record.final_loss == pytest.approx(resumed_record.final_loss, abs=1e-6)
    for key in ("dropped_images", "unreadable_images", "image_substitutions"):
        assert getattr(resumed_record, key) == getattr(full_record, key), key


def _sohes_train(recipe: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())",
         "train", "--phase", "self-instruction", "--config", str(path), "--cpu"],
        capture_output=True, text=True, check=False, timeout=600, env=env,
    )  # fmt: skip


def test_sohes_train_reports_bad_images_and_refuses_too_many(
    bad_data: tuple[Path, Path], tmp_path: Path
) -> None:
    result = _sohes_train(_recipe(bad_data, tmp_path / "ok", max_steps=2), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert EMPTY in result.stderr  # the load-time warning names it
    record = json.loads((tmp_path / "ok" / "training_record.json").read_text())
    assert record["dropped_images"] == {UNREADABLE_AT_LOAD: 1}

    result = _sohes_train(_recipe(bad_data, tmp_path / "refused", max_unreadable_fraction=0.0), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert EMPTY in lines[0] and "max_unreadable_fraction" in lines[0], lines[0]
    assert not (tmp_path / "refused" / "training_record.json").exists()
