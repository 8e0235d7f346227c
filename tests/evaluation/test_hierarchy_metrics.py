"""Hierarchy metrics on a hand-computed 10 x 10 case (every expected number worked out below)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sohes_hf.evaluation.hierarchy_metrics import (
    match_one_to_one,
    parent_link_metrics,
    per_depth_ar,
)


def _mask(rows: slice, cols: slice, extra: tuple[int, slice] | None = None) -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask[rows, cols] = True
    if extra is not None:
        mask[extra[0], extra[1]] = True
    return mask


# Ground truth: A whole image (depth 0); B left half and D right half, parts of A (depth 1);
# C top-left quadrant, subpart of B (depth 2). Links: B->A, C->B, D->A.
A = _mask(slice(0, 10), slice(0, 10))  # 100 px
B = _mask(slice(0, 10), slice(0, 5))  # 50 px
C = _mask(slice(0, 5), slice(0, 5))  # 25 px
D = _mask(slice(0, 10), slice(5, 10))  # 50 px
REFERENCE = {"masks": [A, B, C, D], "parents": [-1, 0, 1, 0], "depths": [0, 1, 2, 1]}

# Predictions: p0 = A (IoU 1); p1 = rows 0-7 of B plus 2 px = 42 px inside B: IoU 42/50 = 0.84
# with B and 25/42 = 0.595 with C; p2 = 12 px inside C: IoU 12/25 = 0.48, just under 0.5;
# p3 = D (IoU 1). Links: p1->p0 (B->A, correct), p2->p1 (p2 unmatched), p3->p1 (D->B: wrong).
P1 = _mask(slice(0, 8), slice(0, 5), (8, slice(0, 2)))
P2 = _mask(slice(0, 2), slice(0, 5), (2, slice(0, 2)))
PREDICTION = {"masks": [A, P1, P2, D], "scores": [0.9, 0.8, 0.7, 0.6], "parents": [-1, 0, 1, 1]}


def test_parent_links_by_hand() -> None:
    links = parent_link_metrics([PREDICTION], [REFERENCE])
    assert (links.num_predicted_links, links.num_correct_links) == (3, 1)
    assert (links.num_ground_truth_links, links.num_recovered_links) == (3, 1)
    assert links.precision == pytest.approx(1 / 3)
    assert links.recall == pytest.approx(1 / 3)


def test_links_to_predictions_beyond_max_detections_vanish() -> None:
    links = parent_link_metrics([PREDICTION], [REFERENCE], max_detections=1)
    assert links.num_predicted_links == 0 and math.isnan(links.precision)
    assert links.recall == 0.0


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_ar_per_depth_by_hand(backend: str) -> None:
    results = per_depth_ar([PREDICTION], [REFERENCE], backend=backend)
    # wholes: A found at IoU 1 at all ten thresholds.
    assert results["wholes"].ar == pytest.approx(1.0)
    # parts: D at IoU 1 everywhere; B at IoU 0.84 for thresholds 0.50..0.80 (7 of 10):
    # (7 * 2/2 + 3 * 1/2) / 10 = 0.85.
    assert results["parts"].ar == pytest.approx(0.85)
    # subparts: predictions are unrestricted, so p1 (IoU 0.595 with C) recovers C at 0.50 and
    # 0.55 (p2 at 0.48 never does): 2 / 10 = 0.2.
    assert results["subparts"].ar == pytest.approx(0.2)


def test_levels_without_ground_truth_are_left_out() -> None:
    reference = {**REFERENCE, "masks": [A], "parents": [-1], "depths": [0]}
    assert list(per_depth_ar([PREDICTION], [reference])) == ["wholes"]


def test_matching_is_one_to_one_by_score() -> None:
    iou = np.array([[0.6, 0.0], [0.9, 0.55]])
    # prediction 1 (higher score) takes ground truth 0 first; prediction 0 is left with nothing >= 0.5.
    assert match_one_to_one(iou, [0.1, 0.9]).tolist() == [-1, 0]


def _rle(mask: np.ndarray) -> dict[str, object]:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _run_evaluate(gt: Path, predictions: Path, output: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sohes_hf.cli.main", "evaluate", "--dataset", f"toy={gt}",
               "--predictions", str(predictions), "--output", str(output)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


def test_cli_prints_and_writes_hierarchy_metrics(tmp_path: Path) -> None:
    """``sohes evaluate`` on the hand case: GT depth derived from parent_id (no 'depth' key)."""
    image = {"id": 7, "file_name": "a.png", "width": 10, "height": 10}
    category = [{"id": 1, "name": "entity"}]
    gt_ids = [11, 12, 13, 14]
    gt_parent_ids = [None, 11, 12, 11]
    gt = {
        "images": [image],
        "categories": category,
        "annotations": [
            {"id": i, "image_id": 7, "category_id": 1, "segmentation": _rle(m), "iscrowd": 0,
             "area": float(m.sum()), "parent_id": q}
            for i, m, q in zip(gt_ids, REFERENCE["masks"], gt_parent_ids, strict=True)
        ],
    }  # fmt: skip
    pseudo = {
        "images": [image],
        "categories": category,
        "annotations": [
            {"id": i, "image_id": 7, "category_id": 1, "segmentation": _rle(m), "score": s, "parent_id": q}
            for i, m, s, q in zip(
                [1, 2, 3, 4], PREDICTION["masks"], PREDICTION["scores"], [None, 1, 2, 2], strict=True
            )
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pseudo.json").write_text(json.dumps(pseudo))
    output = tmp_path / "results.json"
    result = _run_evaluate(tmp_path / "gt.json", tmp_path / "pseudo.json", output)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()[-2:]
    assert header.split() == ["Dataset", "AR_wholes", "AR_parts", "AR_subparts", "link_P", "link_R"]
    assert row.split() == ["toy", "100.0", "85.0", "20.0", "33.3", "33.3"]
    hierarchy = json.loads(output.read_text())["hierarchy"]["toy"]
    assert hierarchy["AR_parts"] == pytest.approx(0.85)
    assert hierarchy["num_ground_truths_per_depth"] == {"wholes": 1, "parts": 2, "subparts": 1}
    assert hierarchy["parent_links"]["num_correct_links"] == 1


def test_cli_without_parent_links_prints_no_hierarchy(tmp_path: Path) -> None:
    image = {"id": 1, "file_name": "a.png", "width": 10, "height": 10}
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(A), "iscrowd": 0}
    gt = {"images": [image], "categories": [{"id": 1, "name": "e"}], "annotations": [annotation]}
    results = [{"image_id": 1, "segmentation": _rle(A), "score": 1.0}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    output = tmp_path / "results.json"
    result = _run_evaluate(tmp_path / "gt.json", tmp_path / "dt.json", output)
    assert result.returncode == 0, result.stderr
    assert "link_P" not in result.stdout
    assert "hierarchy" not in json.loads(output.read_text())


def test_cli_depths_come_from_the_file_or_the_parent_links() -> None:
    from sohes_hf.cli.evaluate import _annotation_depths

    by_id: dict[int, dict[str, object]] = {1: {"parent_id": None}, 2: {"parent_id": 1}, 3: {"parent_id": 2}}
    by_id[4] = {"parent_id": 3, "depth": 5}
    by_id[5] = {"parent_id": 4}
    assert _annotation_depths(by_id, Path("gt.json")) == {1: 0, 2: 1, 3: 2, 4: 5, 5: 6}
    assert _annotation_depths({1: {}, 2: {"parent_id": None}}, Path("gt.json")) is None
    with pytest.raises(ValueError, match="cycle through annotation"):
        _annotation_depths({1: {"parent_id": 2}, 2: {"parent_id": 1}}, Path("gt.json"))
    with pytest.raises(ValueError, match="parent_id 9, which is no annotation id"):
        _annotation_depths({1: {"parent_id": 9}}, Path("gt.json"))
