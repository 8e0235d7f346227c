"""benchmarks/gpu_check.py runs end to end in its CPU smoke mode (toy sizes, random weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # builds CascadePSP (68M parameters) and three tiny models: ~15 s on a 2-core CPU
def test_cpu_smoke_prints_every_figure() -> None:
    pytest.importorskip("segmentation_refinement")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for prefix in ("explore: ", "pipeline (", "AR metric: "):
        assert sum(line.startswith(prefix) for line in lines) == 1, done.stdout
    training = [line for line in lines if line.startswith("training (")]
    assert len(training) == 2 and "checkpointing off" in training[0] and "checkpointing on" in training[1]
    assert lines[-1].startswith("gpu_check done in ")


def test_unknown_part_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--parts", "explore,speed"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2 and "--parts: unknown speed" in done.stderr
