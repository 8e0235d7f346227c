"""The fault-injection benchmark in its smallest mode: no crash on the inputs already fixed.

``benchmarks/fault_injection.py --smoke`` feeds ``sohes evaluate`` / ``data convert-labels``
hostile ground truth, predictions and pseudo-labels, and misuses ``explore --merge``, each in
its own process (seconds, no model). Every fault must be survived; a crashed input fails the
test unless it is listed in ``OPEN`` with the reason it is still open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Inputs still crashing, with the reason they are open (none at present).
OPEN: dict[tuple[str, str], str] = {}


def test_smoke_run_survives_every_fault_and_crashes_on_no_fixed_input(tmp_path: Path) -> None:
    report = tmp_path / "faults.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/fault_injection.py"), "--smoke", "--json", str(report)],
        capture_output=True, text=True, check=False, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(report.read_text())
    assert outcomes["faults"] and outcomes["inputs"]
    failed = [o for o in outcomes["faults"] if o["verdict"] != "survived"]
    assert not failed, failed
    crashed = [
        o for o in outcomes["inputs"] if o["verdict"] != "handled" and (o["group"], o["name"]) not in OPEN
    ]
    assert not crashed, crashed
    assert "bad inputs tried:" in result.stdout and "faults injected:" in result.stdout
