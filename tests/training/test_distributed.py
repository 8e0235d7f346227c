"""Two-process CPU training through Accelerate (DDP over gloo), launched with torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.training import tiny_model_config, write_pseudo_labelled_folder

from sohes_hf.modeling import SohesConfig, SohesForHierarchicalSegmentation

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_cpu_run_trains_and_saves(tmp_path: Path) -> None:
    image_dir, labels = write_pseudo_labelled_folder(tmp_path)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None, "torchrun is installed with torch"
    out = tmp_path / "out"
    command = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--standalone",  # a free local rendezvous port
        str(REPO / "examples/train.py"),
        "--phase",
        "self-instruction",
        "--config",
        str(REPO / "examples/configs/tiny_cpu.yaml"),
        "--cpu",
        "-o",
        f"train_annotations={labels}",
        "-o",
        f"image_root={image_dir}",
        "-o",
        f"output_dir={out}",
        # 1 image per process x 1 accumulation step = global batch 2 only with two processes:
        # a single-process run would refuse this recipe.
        "-o",
        "gradient_accumulation_steps=1",
        "-o",
        "checkpointing_steps=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["steps"] == 2 and record["global_batch_size"] == 2
    checkpoint = out / "checkpoints" / "step_00000001"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    SohesForHierarchicalSegmentation.from_pretrained(out)


@pytest.mark.slow
def test_two_process_num_masks_normaliser_matches_mask2former(tmp_path: Path) -> None:
    """Mask/dice normaliser = all ranks' masks / world size (Mask2Former's rule), not N x too small."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    worker = REPO / "tests/training/_num_masks_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--standalone", str(worker), str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    # Single-process reference: same image/targets, 3 masks, no process group.
    sys.path.insert(0, str(worker.parent))
    import torch
    from _num_masks_worker import loss_terms

    single = loss_terms(torch.tensor(3.0))
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in ("loss_mask", "loss_dice", "loss_cross_entropy"):
            assert result["terms"][name] == pytest.approx(single[name], rel=1e-5), (rank, name)
        # rank 0 holds 2 + 1 masks, rank 1 holds 5 + 1: (3 + 6) / 2.
        assert result["normaliser"] == pytest.approx((3 + 6) / 2)


def _torchrun_worker(worker: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--standalone", str(worker), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=cwd)


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_logs_what_an_uninterrupted_run_logs(tmp_path: Path) -> None:
    """Issue 14.5: per-rank window sums and teacher-label counts survive a SIGKILL and resume.

    Phase 3 over 5 steps, logging every 2, checkpoint every 3; the killed run dies after step 4
    (before logging the 3-4 window) and is resumed from the step-3 checkpoint, which holds half a
    window, by a new torchrun.
    Each rank sees other images, so a rank resuming with another rank's counters logs other
    window means (35.34 instead of 34.23 before per-rank state files).
    """
    import torch

    data = tmp_path / "data"
    write_pseudo_labelled_folder(data, num_images=4)
    phase2 = tmp_path / "phase2"
    torch.manual_seed(0)
    SohesForHierarchicalSegmentation(SohesConfig(**tiny_model_config())).save_pretrained(phase2)
    worker = REPO / "tests/training/_resume_worker.py"

    def run(mode: str, output: str) -> subprocess.CompletedProcess[str]:
        log = tmp_path / f"{mode}.json"
        paths = (str(data), str(phase2), str(tmp_path / output), str(log))
        return _torchrun_worker(worker, mode, *paths, cwd=tmp_path)

    full = run("full", "full")
    assert full.returncode == 0, full.stderr[-4000:]
    killed = run("kill", "resumed")
    assert killed.returncode != 0, "the kill mode must die"
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003"], checkpoints
    resumed = run("resume", "resumed")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    full_log = json.loads((tmp_path / "full.json").read_text())
    resumed_log = json.loads((tmp_path / "resume.json").read_text())
    assert [entry["step"] for entry in full_log] == [2, 4, 5]
    assert [entry["step"] for entry in resumed_log] == [4, 5]
    assert any(entry["train/teacher_candidates_per_image"] > 0 for entry in full_log)
    for expected, got in zip(full_log[1:], resumed_log, strict=True):
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (expected["step"], name)
