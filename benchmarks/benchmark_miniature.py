"""SOHES in miniature: phase 1 -> phase 2 -> phase 3 on synthetic scenes with exact ground truth.

The paper's central claim (Tables 3 and 5) is that the phase-2 model beats the pseudo-labels it
learned from and that phase 3's teacher beats the phase-2 model. This script runs the three phases
on ``sohes data make-synthetic`` scenes through the public commands a user runs, each in a
subprocess, and evaluates all three on the same validation images with ``sohes evaluate``:

1. ``sohes data make-synthetic``: train and val splits (exact masks, parent links, depths).
2. Phase 1, ``sohes explore --backbone colour-texture --refiner none`` on the train images (the
   training labels) and on the val images (to measure the pseudo-labels themselves).
3. Phase 2, ``sohes train --phase self-instruction --cpu`` with the recipe ``--recipe`` (default
   ``examples/configs/miniature_cpu.yaml``, read when the script runs) and ``-o`` overrides for the data,
   the canvas size, the step count and the query count (printed before each run).
4. Phase 3, ``sohes train --phase self-correction --cpu``, same recipe, started from phase 2's model.
5. ``sohes evaluate`` (AR@100, AP, AR per depth, parent-link P/R) of the val pseudo-labels, of the
   phase-2 model and of the phase-3 teacher, against the val split's exact ground truth.

Prints one table and writes it as JSON (``--output DIR/miniature_results.json``, with every
intermediate output kept in DIR). Figures are measured, never asserted. ``--pictures N`` also draws
the first N val images (ground truth, pseudo-labels, phase 2, phase 3; one tile per depth level).

Usage::

    python benchmarks/benchmark_miniature.py [--mode default|quick|tiny] [--output DIR] [--pictures N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
DEFAULT_RECIPE = ROOT / "examples" / "configs" / "miniature_cpu.yaml"
MIN_QUERIES = 50
"""Queries of the trained model, at least: a scene has about 17-20 ground-truth masks at 128 px,
and AR@100 would be capped by a smaller query count (tiny_cpu.yaml's 8 are for smoke tests)."""
EMA_HORIZON_FRACTION = 0.4
"""Phase 3's teacher averages over 1 / (1 - m) steps: 2,000 of the paper's 5,000 (m = 0.9995,
appendix A). The miniature keeps that ratio for its own step count: m = 1 - 1 / (0.4 x steps)."""
ROWS = (
    ("pseudo-labels (phase 1)", "pseudo_labels"),
    ("phase-2 model", "phase2"),
    ("phase-3 teacher", "phase3"),
)


@dataclass(frozen=True)
class Sizes:
    """How big one mode is: data, clustering resolution and training steps."""

    num_train: int
    num_val: int
    image_size: int
    explore_size: int
    phase2_steps: int
    phase3_steps: int


MODES = {
    # miniature_cpu.yaml (batch 8): phase 2 ~0.9-1.1 s of CPU per step on a quiet 2-core machine
    # (2026-12-03), 2.7 s on a loaded one (2026-12-02); phase 3 about twice (the teacher's forward pass).
    "default": Sizes(200, 50, 128, 256, 1200, 200),
    "quick": Sizes(24, 8, 128, 256, 20, 4),  # under 5 minutes
    "tiny": Sizes(6, 3, 64, 128, 2, 2),  # the test's end-to-end smoke run (with tiny_cpu.yaml)
}


class StepFailed(RuntimeError):
    """A subprocess exited non-zero; the message names its log file."""


class Runner:
    """Runs ``sohes`` subcommands in subprocesses, logging each to DIR/logs and timing them."""

    def __init__(self, output: Path) -> None:
        self.logs = output / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cpu_seconds: dict[str, float] = {}
        self.wall_seconds: dict[str, float] = {}

    def sohes(self, phase: str, name: str, *args: str) -> None:
        """``python -m sohes_hf.cli.main ARGS``; CPU (user + sys) and wall time go to ``phase``."""
        path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "sohes_hf.cli.main", *args]
        log = self.logs / f"{name}.log"
        print(f"[{phase}] sohes {' '.join(args)}", flush=True)
        before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        with log.open("w", encoding="utf-8") as handle:
            completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
        after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - wall
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + cpu
        self.wall_seconds[phase] = self.wall_seconds.get(phase, 0.0) + wall
        if completed.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise StepFailed(
                f"'sohes {args[0]}' ({name}) exited with {completed.returncode}; log {log}:\n{tail}"
            )


def ema_momentum(steps: int) -> float:
    """Phase 3's m for ``steps`` steps, keeping the paper's horizon-to-run ratio (see above)."""
    return max(0.5, 1.0 - 1.0 / (EMA_HORIZON_FRACTION * steps))


def training_overrides(sizes: Sizes, data: Path, labels: Path, output: Path) -> list[str]:
    """The ``-o`` overrides shared by both phases: data, output, canvas size, no checkpoints."""
    return [
        f"train_annotations={labels}",
        f"image_root={data / 'train' / 'images'}",
        f"output_dir={output}",
        f"augmentation.image_size={sizes.image_size}",
        "checkpointing_steps=0",
    ]


def recipe_queries(recipe: Path) -> int:
    """``model_config.num_queries`` of the recipe (SohesConfig's default 100 when absent)."""
    import yaml

    values = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return int((values.get("model_config") or {}).get("num_queries", 100))


def run_pipeline(output: Path, sizes: Sizes, recipe: Path, seed: int, runner: Runner) -> dict[str, Any]:
    """All three phases and the three evaluations; returns the result table as a dict."""
    data = output / "data"
    total = sizes.num_train + sizes.num_val
    runner.sohes(
        "data", "make_synthetic", "data", "make-synthetic", "--num-images", str(total), "--seed", str(seed),
        "--image-size", str(sizes.image_size), "--val-fraction", repr(sizes.num_val / total),
        "--output", str(data),
    )  # fmt: skip
    labels = {}
    for split in ("train", "val"):
        folder = output / "pseudo_labels" / split
        runner.sohes(
            "phase 1", f"explore_{split}", "explore", str(data / split / "images"), "--output", str(folder),
            "--backbone", "colour-texture", "--refiner", "none", "--image-size", str(sizes.explore_size),
            "--no-progress", "--num-shards", "1", "--shard-index", "0",
        )  # fmt: skip
        labels[split] = folder / "pseudo_labels.shard-00000-of-00001.json"
    phase2, phase3 = output / "phase2", output / "phase3"
    queries = max(MIN_QUERIES, recipe_queries(recipe))
    common = training_overrides(sizes, data, labels["train"], phase2)
    overrides = [*common, f"max_steps={sizes.phase2_steps}", f"model_config.num_queries={queries}",
                 f"logging_steps={max(1, sizes.phase2_steps // 10)}", f"seed={seed}"]  # fmt: skip
    runner.sohes(
        "phase 2", "train_self_instruction", "train", "--phase", "self-instruction", "--config", str(recipe),
        "--cpu", *_as_options(overrides),
    )  # fmt: skip
    common = training_overrides(sizes, data, labels["train"], phase3)
    overrides = [*common, f"model_name_or_path={phase2}", f"max_steps={sizes.phase3_steps}",
                 f"ema_momentum={ema_momentum(sizes.phase3_steps)}",
                 f"logging_steps={max(1, sizes.phase3_steps // 10)}", f"seed={seed}"]  # fmt: skip
    runner.sohes(
        "phase 3", "train_self_correction", "train", "--phase", "self-correction", "--config", str(recipe),
        "--cpu", *_as_options(overrides),
    )  # fmt: skip
    dataset = f"synthetic={data / 'val' / 'annotations.json'}:{data / 'val' / 'images'}"
    evaluation = output / "evaluation"
    sources = {"pseudo_labels": ["--predictions", str(labels["val"])]}
    for key, model in (("phase2", phase2), ("phase3", phase3)):
        sources[key] = ["--model", str(model), "--save-predictions", str(evaluation / key)]
    rows = {}
    for key, source in sources.items():
        result_file = evaluation / f"{key}.json"
        runner.sohes(
            "evaluation", f"evaluate_{key}", "evaluate", "--dataset", dataset, *source,
            "--max-detections", "100", "--output", str(result_file),
        )  # fmt: skip
        rows[key] = _row(json.loads(result_file.read_text(encoding="utf-8")))
    rows["pseudo_labels"]["masks_per_image"] = _masks_per_image(labels["val"])
    for key in ("phase2", "phase3"):
        rows[key]["masks_per_image"] = _model_masks_per_image(
            evaluation / key / "synthetic.predictions.json", sizes.num_val
        )
    cpu = {name: seconds / 60 for name, seconds in runner.cpu_seconds.items()}
    wall = {name: seconds / 60 for name, seconds in runner.wall_seconds.items()}
    return {
        "sizes": asdict(sizes),
        "seed": seed,
        "recipe": str(recipe),
        "num_queries": queries,
        "phase3_ema_momentum": ema_momentum(sizes.phase3_steps),
        "max_detections": 100,
        "rows": rows,
        "cpu_minutes": cpu,
        "wall_minutes": wall,
    }


def _as_options(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("-o", override)]


def _row(results: dict[str, Any]) -> dict[str, Any]:
    table = results["datasets"]["synthetic"]
    hierarchy = results["hierarchy"]["synthetic"]
    links = hierarchy["parent_links"]
    return {
        "AR@100": table["AR"],
        "AP": table["AP"],
        "AR_wholes": hierarchy["AR_wholes"],
        "AR_parts": hierarchy["AR_parts"],
        "AR_subparts": hierarchy["AR_subparts"],
        "link_precision": links["precision"],
        "link_recall": links["recall"],
        "num_predicted_links": links["num_predicted_links"],
    }


def _masks_per_image(pseudo_labels: Path) -> float:
    data = json.loads(pseudo_labels.read_text(encoding="utf-8"))
    return len(data["annotations"]) / max(1, len(data["images"]))


def _model_masks_per_image(predictions: Path, num_images: int) -> float:
    return len(json.loads(predictions.read_text(encoding="utf-8"))) / max(1, num_images)


def format_table(table: dict[str, Any]) -> str:
    """The result table: x100 metrics per row, the masks per image, and CPU minutes of the phase."""
    columns = ("AR@100", "AP", "AR_wholes", "AR_parts", "AR_subparts", "link_precision", "link_recall")
    headers = ["AR@100", "AP", "AR wholes", "AR parts", "AR subparts", "link P", "link R"]
    headers += ["masks/img", "CPU min"]
    width = max(len(label) for label, _ in ROWS)
    lines = [f"{'':<{width}}" + "".join(f"{h:>12}" for h in headers)]
    phases = {"pseudo_labels": "phase 1", "phase2": "phase 2", "phase3": "phase 3"}
    for label, key in ROWS:
        row = table["rows"][key]
        values = [_percent(row[c]) for c in columns]
        values += [f"{row['masks_per_image']:.1f}", f"{table['cpu_minutes'].get(phases[key], math.nan):.2f}"]
        lines.append(f"{label:<{width}}" + "".join(f"{v:>12}" for v in values))
    cpu, wall = table["cpu_minutes"], table["wall_minutes"]
    lines.append(
        f"CPU minutes: data {cpu.get('data', 0):.2f}, evaluation {cpu.get('evaluation', 0):.2f}; "
        f"total {sum(cpu.values()):.2f} CPU / {sum(wall.values()):.2f} wall-clock minutes"
    )
    sizes = table["sizes"]
    lines.append(
        f"{sizes['num_train']} train / {sizes['num_val']} val images of {sizes['image_size']} px, explore "
        f"S={sizes['explore_size']}, phase 2 {sizes['phase2_steps']} steps, phase 3 {sizes['phase3_steps']} "
        f"steps (m={table['phase3_ema_momentum']:.4g}), {table['num_queries']} queries, "
        f"recipe {table['recipe']}"
    )
    lines.append("metrics x100 on the val split; 'n/a' = undefined (e.g. link P with no predicted link)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


PICTURE_THRESHOLD = 0.5
"""Entity score above which a model's masks are drawn: the pipeline's (and ``sohes segment``'s)
default. The pseudo-labels and the ground truth are drawn whole."""


def draw_pictures(output: Path, count: int, folder: Path) -> list[Path]:
    """For each of the first ``count`` val images: ground truth, pseudo-labels, phase 2, phase 3.

    One ``sohes_hf.visualization.depth_level_panel`` per source (image, wholes, parts, subparts;
    depth >= 2 is drawn as subparts, as the AR-per-depth metric groups it), stacked with a title.
    128-px scenes are enlarged (nearest neighbour) to 256 px so small parts stay visible.
    """
    import numpy as np
    from PIL import Image

    from sohes_hf.visualization.overlay import save_image

    val = output / "data" / "val"
    truth = json.loads((val / "annotations.json").read_text(encoding="utf-8"))
    pseudo_file = output / "pseudo_labels" / "val" / "pseudo_labels.shard-00000-of-00001.json"
    pseudo = json.loads(pseudo_file.read_text(encoding="utf-8"))
    pseudo_ids = {image["file_name"]: image["id"] for image in pseudo["images"]}
    segmenters = {key: _segmenter(output / key) for key in ("phase2", "phase3")}
    written = []
    for image in sorted(truth["images"], key=lambda record: record["id"])[:count]:
        pixels = np.asarray(Image.open(val / "images" / image["file_name"]).convert("RGB"))
        panels = {
            "ground truth": _file_entities(truth["annotations"], image["id"]),
            "pseudo-labels (phase 1)": _file_entities(
                pseudo["annotations"], pseudo_ids.get(image["file_name"])
            ),
        }
        for key, title in (("phase2", "phase-2 model"), ("phase3", "phase-3 teacher")):
            entities = segmenters[key](pixels, threshold=PICTURE_THRESHOLD)
            panels[f"{title} (score > {PICTURE_THRESHOLD})"] = entities
        picture = _stack_panels(pixels, panels)
        written.append(save_image(folder / f"miniature_{Path(image['file_name']).stem}.jpg", picture))
    return written


def _segmenter(model: Path) -> Any:
    from transformers import pipeline

    from sohes_hf.pipelines import TASK_NAME, register_pipeline

    register_pipeline()
    return pipeline(TASK_NAME, model=str(model), device="cpu")  # type: ignore[call-overload]


def _file_entities(annotations: list[dict[str, Any]], image_id: int | None) -> list[dict[str, Any]]:
    """An image's COCO records (parents first, as both files store them) as entity dicts."""
    return [
        {"id": a["id"], "mask": a["segmentation"], "score": float(a.get("score", 1.0)),
         "parent_id": a.get("parent_id"), "depth": a.get("depth")}
        for a in annotations if a["image_id"] == image_id
    ]  # fmt: skip


def _stack_panels(pixels: Any, panels: dict[str, list[dict[str, Any]]]) -> Any:
    import cv2
    import numpy as np

    from sohes_hf.masks import decode_mask, encode_mask
    from sohes_hf.visualization.overlay import FONT, depth_level_panel

    scale = max(1, 256 // pixels.shape[0])
    big = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    rows = []
    for title, entities in panels.items():
        records = []
        for entity in entities:
            mask = decode_mask(entity["mask"]).astype(np.uint8)
            mask = cv2.resize(mask, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST).astype(bool)
            depth = entity.get("depth")
            record = {"id": entity["id"], "mask": encode_mask(mask), "score": entity["score"],
                      "parent_id": entity.get("parent_id")}  # fmt: skip
            if depth is not None:
                record["depth"] = min(int(depth), 2)
            records.append(record)
        panel = depth_level_panel(big, records, num_levels=3)
        title_strip = np.full((26, panel.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(title_strip, title, (4, 19), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        rows.extend([title_strip, panel])
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="default", help="sizes (default: default)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode", help="--mode quick")
    parser.add_argument("--tiny", action="store_const", const="tiny", dest="mode", help="--mode tiny")
    parser.add_argument("--output", type=Path, help="keep every intermediate output and the JSON table here")
    parser.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPE, help="training recipe (miniature_cpu.yaml)"
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    parser.add_argument("--pictures", type=int, default=0, metavar="N", help="draw the first N val images")
    parser.add_argument("--pictures-dir", type=Path, help="where the pictures go (default: OUTPUT/pictures)")
    args = parser.parse_args(argv)
    if not args.recipe.is_file():
        print(f"benchmark_miniature: error: --recipe {args.recipe} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sohes-miniature-") as scratch:
        output = args.output if args.output is not None else Path(scratch)
        output.mkdir(parents=True, exist_ok=True)
        runner = Runner(output)
        try:
            table = run_pipeline(output, MODES[args.mode], args.recipe.resolve(), args.seed, runner)
        except StepFailed as error:
            print(f"benchmark_miniature: error: {error}", file=sys.stderr)
            return 1
        table["mode"] = args.mode
        (output / "miniature_results.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        print()
        print(f"SOHES in miniature, --mode {args.mode}")
        print(format_table(table))
        if args.pictures:
            folder = args.pictures_dir or output / "pictures"
            for path in draw_pictures(output, args.pictures, folder):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
