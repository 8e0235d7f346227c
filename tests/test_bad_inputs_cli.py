"""Hostile polygons and SA-1B records through the real ``sohes`` process (issue 15, items 3, 7).

Run in a subprocess so a crash inside pycocotools (a segfault on a 1e308 polygon) shows up as the
exit code instead of killing the test run.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from tests.data.fixtures import write_sa1b_tar

SIZE = 32


def _sohes(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run(
        # as the ``sohes`` console script does (``-m`` would make a second CliError class)
        [sys.executable, "-c", "import sys; from sohes_hf.cli.main import main; sys.exit(main())", *args],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip


def _square_rle() -> dict[str, Any]:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[4:20, 4:20] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode()}


def _coco(segmentation: Any) -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 77, "image_id": 1, "category_id": 1, "segmentation": segmentation, "area": 1.0,
             "bbox": [0, 0, 1, 1], "iscrowd": 0},
        ],
    }  # fmt: skip


def _assert_clean_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sohes: error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


BAD_POLYGONS = {
    "huge": [[1.0, 1.0, 1e308, 1.0, 1e308, 1e308, 1.0, 1e308]],
    "nan": [[1.0, 1.0, float("nan"), 1.0, 20.0, 20.0]],
    "odd": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0, 3.0]],
    "far": [[1.0, 1.0, 20.0, 1.0, 20.0, 65.0]],
}


@pytest.mark.parametrize("kind", sorted(BAD_POLYGONS))
def test_bad_ground_truth_polygon_is_refused_naming_file_and_annotation(tmp_path: Path, kind: str) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_coco(BAD_POLYGONS[kind])))  # json writes NaN as the NaN literal
    results = tmp_path / "results.json"
    record = {"image_id": 1, "category_id": 1, "segmentation": _square_rle(), "score": 0.9}
    results.write_text(json.dumps([record]))
    result = _sohes("evaluate", "--dataset", f"x={gt}", "--predictions", str(results))
    _assert_clean_refusal(result, str(gt), "id 77", "polygon 0")


@pytest.mark.parametrize("kind", ["huge", "nan"])
def test_bad_predicted_polygon_is_refused_naming_the_record(tmp_path: Path, kind: str) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_coco(_square_rle())))
    results = tmp_path / "results.json"
    records = [
        {"image_id": 1, "category_id": 1, "segmentation": _square_rle(), "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": BAD_POLYGONS[kind], "score": 0.5},
    ]
    results.write_text(json.dumps(records))
    result = _sohes("evaluate", "--dataset", f"x={gt}", "--predictions", str(results))
    _assert_clean_refusal(result, str(results), "record 1", "polygon 0")


def test_valid_polygon_slightly_outside_the_image_is_evaluated(tmp_path: Path) -> None:
    # COCO polygons may touch or cross the border a little; only far-out values are refused.
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_coco([[-2.0, -2.0, 40.0, -2.0, 40.0, 40.0, -2.0, 40.0]])))
    results = tmp_path / "results.json"
    counts = coco_mask.encode(np.ones((SIZE, SIZE), np.uint8, order="F"))["counts"].decode()
    full = {"size": [SIZE, SIZE], "counts": counts}
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "segmentation": full, "score": 0.9}]))
    result = _sohes("evaluate", "--dataset", f"x={gt}", "--predictions", str(results))
    assert result.returncode == 0, result.stderr[-2000:]


def _rewrite_json(pack: Path, out: Path, edits: dict[str, Any]) -> None:
    """Copies ``pack`` to ``out``, applying ``edits[member](annotation_list)`` to JSON members."""
    with tarfile.open(pack) as source, tarfile.open(out, "w") as target:
        for info in source:
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name in edits:
                raw = json.loads(data)
                edits[info.name](raw["annotations"])
                data = json.dumps(raw).encode()
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))


def test_split_skips_and_reports_nan_area_and_garbage_rle(tmp_path: Path) -> None:
    write_sa1b_tar(tmp_path / "clean.tar", [1, 2, 3, 4], masks_per_image=2)

    def nan_area(annotations: list[dict[str, Any]]) -> None:
        annotations[1]["area"] = float("nan")

    def garbage_rle(annotations: list[dict[str, Any]]) -> None:
        annotations[0]["segmentation"]["counts"] = "garbage!!"

    pack = tmp_path / "sa_000999.tar"
    _rewrite_json(tmp_path / "clean.tar", pack, {"sa_2.json": nan_area, "sa_3.json": garbage_rle})
    out = tmp_path / "split"
    result = _sohes("data", "make-sa1b-split", str(pack), "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped\t2" in result.stdout
    assert "id 2001" in result.stderr and "area" in result.stderr  # annotation ids: image * 1000 + k
    assert "id 3000" in result.stderr and "do not describe" in result.stderr
    coco = json.loads((out / "annotations.json").read_text())  # strict JSON: no NaN left in it
    assert [image["id"] for image in coco["images"]] == [1, 4]
    assert len(coco["annotations"]) == 4
    assert sorted(p.name for p in (out / "images").iterdir()) == ["sa_1.jpg", "sa_4.jpg"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_failed_split_leaves_the_previous_split_untouched(tmp_path: Path) -> None:
    write_sa1b_tar(tmp_path / "good.tar", [1, 2], masks_per_image=2)
    out = tmp_path / "split"
    assert _sohes("data", "make-sa1b-split", str(tmp_path / "good.tar"), "--output", str(out)).returncode == 0
    before = (out / "annotations.json").read_bytes()

    def nan_area(annotations: list[dict[str, Any]]) -> None:
        annotations[0]["area"] = float("inf")

    write_sa1b_tar(tmp_path / "clean.tar", [5], masks_per_image=1)
    _rewrite_json(tmp_path / "clean.tar", tmp_path / "bad.tar", {"sa_5.json": nan_area})
    result = _sohes("data", "make-sa1b-split", str(tmp_path / "bad.tar"), "--output", str(out))
    _assert_clean_refusal(result, "no valid image")
    assert (out / "annotations.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "images"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["sa_1.jpg", "sa_2.jpg"]
