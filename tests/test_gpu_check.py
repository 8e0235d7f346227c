"""The GPU check script (benchmarks/gpu_check.py) in its CPU smoke mode: every row gets a number."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("segmentation_refinement")  # the explore section runs CascadePSP

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("explore", "training", "pipeline", "AR metric", "total")


@pytest.mark.slow  # builds CascadePSP (68M parameters) and the tiny models: ~30-40 s on a 2-core CPU
def test_cpu_smoke_prints_a_number_in_every_row() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in row] for row in rows[1:]]  # drop the header row
    assert "error" not in completed.stdout.lower() and "skipped" not in completed.stdout
    for section, measurement, value, _unit in rows:
        assert float(value) >= 0.0, (section, measurement, value)
    assert {row[0] for row in rows} == set(SECTIONS)
    explore = {row[1]: float(row[2]) for row in rows if row[0] == "explore"}
    assert explore["seconds/image at 64 px, CascadePSP batched, up to 8 crops/pass, bf16"] > 0.0
    training = [row for row in rows if row[0] == "training" and row[1].startswith("images/s")]
    assert len(training) == 2  # without and with activation checkpointing
