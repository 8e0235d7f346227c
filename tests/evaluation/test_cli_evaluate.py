"""``sohes evaluate`` on generated COCO files, checked against pycocotools run on the same files."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sohes_hf.cli import main as cli_main

SIZE = 48
COLUMNS = ("AP", "AR_S", "AR_M", "AR_L", "AR")


@pytest.fixture(autouse=True)
def _register_evaluate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "evaluate", ("sohes_hf.cli.evaluate", "evaluate masks"))


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(0, SIZE, 2)
    ry, rx = rng.uniform(2, SIZE / 1.5, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def write_dataset(directory: Path, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    """A COCO GT file (RLE and polygon masks, crowd, part categories, an empty image) and results.

    Returns the GT path and a COCO results list that also covers an image absent from the GT and
    leaves one GT image without predictions.
    """
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    categories = [{"id": 1, "name": "dog"}, {"id": 2, "name": "dog:head"}, {"id": 3, "name": "dog:leg"}]
    for image_id in (3, 5, 8, 13, 21):
        images.append({"id": image_id, "file_name": f"img_{image_id}.png", "width": SIZE, "height": SIZE})
        num_gt = 0 if image_id == 8 else 4
        for k in range(num_gt):
            mask = _random_mask(rng)
            segmentation: Any = _rle(mask)
            if k == 0:  # a polygon: COCO keeps its polygon area in the file
                x, y = rng.uniform(2, 20, 2)
                segmentation = [[x, y, x + 20, y, x + 20, y + 15, x, y + 15]]
            rle = segmentation if k else coco_mask.merge(coco_mask.frPyObjects(segmentation, SIZE, SIZE))
            area = float(coco_mask.area(rle if k == 0 else {**rle, "counts": rle["counts"].encode()}))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + k % 3,
                 "segmentation": segmentation, "area": area + (0.5 if k == 0 else 0.0),
                 "bbox": [0, 0, 1, 1], "iscrowd": int(k == 3 and image_id == 5)}
            )  # fmt: skip
            if image_id != 13:  # image 13: ground truth without any prediction
                noisy = coco_mask.decode({**rle, "counts": rle["counts"]}) if k == 0 else mask
                noisy = np.asarray(noisy, bool) ^ (rng.random((SIZE, SIZE)) < 0.02)
                results.append({"image_id": image_id, "category_id": 7, "segmentation": _rle(noisy),
                                "score": float(rng.random())})  # fmt: skip
        for _ in range(0 if image_id == 13 else int(rng.integers(3, 120))):
            results.append(
                {"image_id": image_id, "category_id": 1, "segmentation": _rle(_random_mask(rng)),
                 "score": float(rng.random())}
            )  # fmt: skip
    results.append({"image_id": 999, "category_id": 1, "segmentation": _rle(_random_mask(rng)), "score": 0.5})
    gt_path = directory / f"gt_{seed}.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return gt_path, results


def pycocotools_metrics(
    gt_path: Path, results: list[dict[str, Any]], max_detections: int = 1000
) -> list[float]:
    """AP, AR_S, AR_M, AR_L, AR from pycocotools on the GT file (NaN where COCO gives -1)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        known = set(coco_gt.getImgIds())
        # useCats=0 still drops detections whose category is not among the GT's categories in
        # pycocotools, so a class-agnostic reference gives every detection category 1.
        kept = [{**r, "category_id": 1} for r in results if r["image_id"] in known]
        coco_dt = coco_gt.loadRes(kept)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    m = evaluator.params.maxDets.index(max_detections)
    precision, recall = evaluator.eval["precision"][..., m], evaluator.eval["recall"][..., m]

    def mean(values: np.ndarray) -> float:
        return float(values[values > -1].mean()) if (values > -1).any() else math.nan

    return [mean(precision[..., 0]), *(mean(recall[..., a]) for a in (1, 2, 3)), mean(recall[..., 0])]


def _json_metrics(entry: dict[str, Any]) -> list[float]:
    return [math.nan if entry[c] is None else entry[c] for c in COLUMNS]


def _table_row(stdout: str, name: str) -> list[str]:
    for line in stdout.splitlines():
        if line.split() and line.split()[0] == name:
            return line.split()[1:]
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def test_predictions_file_matches_pycocotools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    gt_path, results = write_dataset(tmp_path, seed=0)
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    output = tmp_path / "out" / "results.json"
    argv = [
        "evaluate",
        "--dataset",
        f"toy={gt_path}",
        "--predictions",
        str(predictions),
        "--output",
        str(output),
    ]
    assert cli_main.main(argv) == 0
    stdout = capsys.readouterr().out
    expected = pycocotools_metrics(gt_path, results)
    saved = json.loads(output.read_text())["datasets"]["toy"]
    np.testing.assert_allclose(_json_metrics(saved), expected, rtol=0, atol=1e-6)
    assert _table_row(stdout, "toy") == ["-" if math.isnan(v) else f"{100 * v:.1f}" for v in expected]
    assert stdout.splitlines()[0].split() == ["Dataset", *COLUMNS]
    assert saved["num_images"] == 5 and saved["num_images_without_predictions"] == 1
    assert "1 of 5 images have ground truth but no prediction" in caplog.text
    assert "ignored predictions for 1 image ids absent from the ground truth" in caplog.text
    assert saved["max_detections"] == 1000
    assert not list(output.parent.glob(".*.tmp")), "the atomic write leaves no temporary file"


def test_max_detections_and_part_categories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, results = write_dataset(tmp_path, seed=1)
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    data = json.loads(gt_path.read_text())
    parts_only = tmp_path / "parts.json"
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in (2, 3)]
    parts_only.write_text(json.dumps(data))
    output = tmp_path / "results.json.out"
    argv = ["evaluate", "--dataset", f"parts={gt_path}", "--predictions", f"parts={predictions}"]
    argv += ["--category-name-contains", ":", "--max-detections", "10", "--output", str(output)]
    assert cli_main.main(argv) == 0
    saved = json.loads(output.read_text())["datasets"]["parts"]
    np.testing.assert_allclose(_json_metrics(saved), pycocotools_metrics(parts_only, results, 10), atol=1e-6)
    assert saved["num_ground_truths"] == len(data["annotations"])


def test_two_datasets_and_a_pseudo_label_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pseudo-labels are matched by file name (their ids differ) and score 1.0 when unscored."""
    gt_a, results_a = write_dataset(tmp_path, seed=2)
    gt_b, results_b = write_dataset(tmp_path, seed=3)
    file_a = tmp_path / "a.json"
    file_a.write_text(json.dumps(results_a))
    gt_images = json.loads(gt_b.read_text())["images"]
    pseudo = {
        "images": [{**image, "id": 100 + image["id"]} for image in gt_images],
        "categories": [{"id": 1, "name": "entity"}],
        "annotations": [
            {"id": n + 1, "image_id": 100 + r["image_id"], "category_id": 1,
             "segmentation": r["segmentation"], "iscrowd": 0, "parent_id": None, "depth": 0}
            for n, r in enumerate(results_b) if r["image_id"] != 999
        ],
    }  # fmt: skip
    file_b = tmp_path / "pseudo.json"
    file_b.write_text(json.dumps(pseudo))
    output = tmp_path / "both.json"
    argv = ["evaluate", "--dataset", f"first={gt_a}", "--dataset", f"second={gt_b}"]
    argv += ["--predictions", f"first={file_a}", "--predictions", f"second={file_b}", "--output", str(output)]
    assert cli_main.main(argv) == 0
    stdout = capsys.readouterr().out
    saved = json.loads(output.read_text())["datasets"]
    np.testing.assert_allclose(_json_metrics(saved["first"]), pycocotools_metrics(gt_a, results_a), atol=1e-6)
    unscored = [{**r, "score": 1.0} for r in results_b]
    np.testing.assert_allclose(_json_metrics(saved["second"]), pycocotools_metrics(gt_b, unscored), atol=1e-6)
    ar_line = next(line for line in stdout.splitlines() if line.startswith("AR "))
    assert ar_line.split()[1:] == [f"{100 * saved[n]['AR']:.1f}" for n in ("first", "second")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--predictions", "{p}"], "NAME=FILE"),
        (["--predictions", "x={p}", "--predictions", "b={p}"], "not a --dataset name"),
        (["--predictions", "a={p}"], "no predictions for dataset"),
        (["--predictions", "a={p}", "--predictions", "b={p}", "--max-detections", "0"], "--max-detections"),
        (
            ["--predictions", "a={p}", "--predictions", "b={p}", "--batch-size", "4"],
            "only meaningful with --model",
        ),
        (["--model", "some/model"], "IMAGE_ROOT"),
    ],
)
def test_bad_arguments_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    gt_path, results = write_dataset(tmp_path, seed=4)
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    argv = ["evaluate", "--dataset", f"a={gt_path}", "--dataset", f"b={gt_path}"]
    argv += [part.format(p=predictions) for part in extra]
    with pytest.raises(SystemExit) as raised:
        cli_main.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            '[{"image_id": 3, "segmentation": {"size": [4, 4], "counts": "04"}, "score": 1}]',
            "differs from image",
        ),
        ('[{"image_id": 3, "score": 1}]', "needs 'image_id' and 'segmentation'"),
        ('{"not": "predictions"}', "neither a COCO results list"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_prediction_files_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], records: str, message: str
) -> None:
    gt_path, _ = write_dataset(tmp_path, seed=6)
    predictions = tmp_path / "bad.json"
    predictions.write_text(records)
    with pytest.raises(SystemExit):
        cli_main.main(["evaluate", "--dataset", f"a={gt_path}", "--predictions", str(predictions)])
    error = capsys.readouterr().err
    assert "--predictions:" in error and message in error


def test_missing_ground_truth_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main.main(["evaluate", "--dataset", f"a={tmp_path / 'nope.json'}", "--predictions", "x.json"])
    assert "does not exist" in capsys.readouterr().err


def test_model_predictions_are_evaluated_and_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model runs the hierarchical-segmentation pipeline; the saved predictions re-evaluate equal."""
    import torch
    from PIL import Image
    from transformers import pipeline

    from sohes_hf.modeling import SohesForHierarchicalSegmentation
    from sohes_hf.modeling.image_processing_sohes import SohesImageProcessor
    from sohes_hf.modeling.testing_utils import tiny_sohes_config
    from sohes_hf.pipelines import TASK_NAME, register_pipeline

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    SohesForHierarchicalSegmentation(tiny_sohes_config()).eval().save_pretrained(model_dir)
    SohesImageProcessor(size={"longest_edge": 64}).save_pretrained(model_dir)
    gt_path, _ = write_dataset(tmp_path, seed=5)
    image_root = tmp_path / "images"
    image_root.mkdir()
    rng = np.random.default_rng(5)
    for image in json.loads(gt_path.read_text())["images"]:
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_root / image["file_name"])
    output, saved_dir = tmp_path / "model_results.json", tmp_path / "saved"
    argv = [
        "evaluate",
        "--model",
        str(model_dir),
        "--dataset",
        f"toy={gt_path}:{image_root}",
        "--batch-size",
        "2",
    ]
    argv += ["--save-predictions", str(saved_dir), "--output", str(output)]
    assert cli_main.main(argv) == 0
    saved_predictions = json.loads((saved_dir / "toy.predictions.json").read_text())
    assert saved_predictions, "a random model at threshold 0 predicts something"
    result = json.loads(output.read_text())["datasets"]["toy"]
    np.testing.assert_allclose(
        _json_metrics(result), pycocotools_metrics(gt_path, saved_predictions), atol=1e-6
    )
    assert result["num_predictions"] == len(saved_predictions)

    register_pipeline()
    segmenter = pipeline(TASK_NAME, model=str(model_dir), device="cpu")  # type: ignore[call-overload]
    entities = segmenter(str(image_root / "img_3.png"), threshold=0.0, max_instances=1000)
    first = [p for p in saved_predictions if p["image_id"] == 3]
    assert [p["segmentation"] for p in first] == [e["mask"] for e in entities]
    # float32 logits: batching two images may move a score in the 8th digit
    np.testing.assert_allclose([p["score"] for p in first], [e["score"] for e in entities], atol=1e-6)


def test_table_layout_and_atomic_json(tmp_path: Path) -> None:
    from sohes_hf.atomic_io import write_json_atomic
    from sohes_hf.evaluation import evaluate_class_agnostic
    from sohes_hf.evaluation.results_table import format_ar_row, format_results_table

    mask = np.zeros((1, SIZE, SIZE), bool)
    mask[0, :10, :20] = True  # 200 px: small only, so AR_M and AR_L are undefined
    result = evaluate_class_agnostic([{"masks": mask, "scores": [1.0]}], [{"masks": mask}])
    table = format_results_table({"tiny": result}).splitlines()
    assert table[1].split() == ["tiny", "100.0", "100.0", "-", "-", "100.0"]
    assert format_ar_row({"tiny": result, "other": result}).splitlines()[1].split() == [
        "AR",
        "100.0",
        "100.0",
    ]
    target = tmp_path / "r.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"bad": math.nan})
    assert json.loads(target.read_text()) == {"ok": 1}, "a failed write leaves the old file intact"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
