"""Two-process CPU training through Accelerate (DDP over gloo), launched with torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.training import write_pseudo_labelled_folder

from sohes_hf.modeling import SohesForHierarchicalSegmentation

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
