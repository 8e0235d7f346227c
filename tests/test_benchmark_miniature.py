"""benchmarks/benchmark_miniature.py --tiny end to end, in a subprocess (about 1.3 CPU minutes).

Checks that the three rows (pseudo-labels, phase-2 model, phase-3 teacher) are all there with finite
numbers, that the printed table shows the JSON's figures, and that the recipe overrides reached the
trainers (their training records) and the files they wrote.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark_miniature.py"
TINY_RECIPE = ROOT / "examples" / "configs" / "tiny_cpu.yaml"
ROW_LABELS = {
    "pseudo_labels": "pseudo-labels (phase 1)",
    "phase2": "phase-2 model",
    "phase3": "phase-3 teacher",
}
ALWAYS_DEFINED = ("AR@100", "AP", "AR_wholes", "AR_parts", "AR_subparts", "link_recall")


def _finite_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_tiny_mode_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--recipe", str(TINY_RECIPE),
         "--output", str(output), "--pictures", "1"],
        capture_output=True, text=True, env=env, timeout=1200, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    table = json.loads((output / "miniature_results.json").read_text())
    assert set(table["rows"]) == set(ROW_LABELS)
    lines = completed.stdout.splitlines()
    for key, label in ROW_LABELS.items():
        row = table["rows"][key]
        for column in ALWAYS_DEFINED:
            assert _finite_fraction(row[column]), (key, column, row[column])
        # Link precision is undefined exactly when no parent link is predicted.
        if row["num_predicted_links"]:
            assert _finite_fraction(row["link_precision"]), (key, row)
        else:
            assert row["link_precision"] is None, (key, row)
        assert math.isfinite(row["masks_per_image"]) and row["masks_per_image"] >= 0
        printed = [line for line in lines if line.startswith(label)]
        assert len(printed) == 1, (label, lines)
        assert printed[0].split()[len(label.split())] == f"{100 * row['AR@100']:.1f}"
    for phase in ("phase 1", "phase 2", "phase 3"):
        assert table["cpu_minutes"][phase] > 0
    # The pseudo-label row's masks per image counts the val pseudo-label file.
    labels = json.loads(
        (output / "pseudo_labels" / "val" / "pseudo_labels.shard-00000-of-00001.json").read_text()
    )
    assert (
        table["rows"]["pseudo_labels"]["masks_per_image"]
        == len(labels["annotations"]) / table["sizes"]["num_val"]
    )
    # The overrides reached the trainers.
    phase2 = json.loads((output / "phase2" / "training_record.json").read_text())
    phase3 = json.loads((output / "phase3" / "training_record.json").read_text())
    assert (phase2["phase"], phase2["steps"]) == ("self-instruction", table["sizes"]["phase2_steps"])
    assert (phase3["phase"], phase3["steps"]) == ("self-correction", table["sizes"]["phase3_steps"])
    assert phase3["ema_momentum"] == table["phase3_ema_momentum"]
    assert phase2["num_train_images"] == phase3["num_train_images"] == table["sizes"]["num_train"]
    model_config = json.loads((output / "phase2" / "config.json").read_text())
    assert model_config["num_queries"] == table["num_queries"] >= 50
    assert (output / "phase3" / "student" / "model.safetensors").is_file()
    pictures = list((output / "pictures").glob("*.jpg"))
    assert len(pictures) == 1
    with Image.open(pictures[0]) as picture:  # four panels (truth, labels, phase 2, phase 3) of 4 tiles
        assert picture.width > 4 * 64 * 4 and picture.height > 4 * 64 * 4


def test_ema_momentum_keeps_the_paper_horizon_ratio() -> None:
    """Paper A: m = 0.9995 over 5,000 steps, a 2,000-step horizon; the script keeps 2,000 / 5,000."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from benchmark_miniature import ema_momentum
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert ema_momentum(5000) == pytest.approx(0.9995)
    assert 1 / (1 - ema_momentum(60)) == pytest.approx(0.4 * 60)
    assert ema_momentum(2) == 0.5  # clipped: a horizon below 2 steps would not average at all
