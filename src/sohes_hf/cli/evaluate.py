"""``sohes evaluate``: class-agnostic mask AP/AR on COCO-style datasets (paper sections 4.1-4.3).

Ground truth comes from ``--dataset NAME=GT_JSON[:IMAGE_ROOT]`` (repeatable: several datasets in
one call give a Table 1 row). Predictions come either from files (``--predictions [NAME=]FILE``:
a COCO results list ``[{"image_id", "segmentation", "score"}]`` or a pseudo-label COCO JSON from
``sohes explore``, which measures pseudo-label quality as in Tables 2 and 7) or from running a
model over the dataset images (``--model``). Prints AP, AR_S, AR_M, AR_L and AR x100 in the
paper's layout and, with ``--output``, writes the full results as JSON (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sohes_hf.cli.arguments import HelpFormatter, check_device, check_model_path, check_writable_folder
from sohes_hf.logging_utils import get_logger

if TYPE_CHECKING:
    from sohes_hf.evaluation.hierarchy_metrics import HierarchyMetrics

logger = get_logger(__name__)

BACKENDS = ("faster_coco_eval", "pycocotools")


@dataclass(frozen=True)
class DatasetSpec:
    """One ``--dataset NAME=GT_JSON[:IMAGE_ROOT]`` argument."""

    name: str
    annotation_file: Path
    image_root: Path | None


def register(subparsers: Any) -> None:
    """Adds the ``evaluate`` parser to the ``sohes`` command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="class-agnostic mask AP/AR (up to 1,000 detections) of predictions or a model",
        description="Evaluates class-agnostic masks the COCO way (useCats=0, IoU 0.50:0.95) with up "
        "to --max-detections predictions per image and prints AP, AR_S, AR_M, AR_L, AR x100.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--dataset", action="append", required=True, metavar="NAME=GT_JSON[:IMAGE_ROOT]",
        help="ground truth: a COCO-style instance JSON (polygons or RLE), optionally with the image "
        "folder (needed by --model); repeat for several datasets",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--predictions", action="append", metavar="[NAME=]FILE",
        help="predictions to evaluate: a COCO results list or a pseudo-label JSON from 'sohes explore' "
        "(scores default to 1.0); NAME= pairs it with a dataset (optional with one dataset)",
    )  # fmt: skip
    source.add_argument("--model", help="model directory or Hub id to run over the dataset images")
    parser.add_argument("--max-detections", type=int, default=1000, help="predictions kept per image")
    parser.add_argument("--output", type=Path, help="write the results JSON here (atomically)")
    parser.add_argument(
        "--category-name-contains", metavar="TEXT",
        help="keep only ground truth whose category name contains TEXT (e.g. ':' for PACO's parts)",
    )  # fmt: skip
    parser.add_argument("--backend", choices=BACKENDS, default="faster_coco_eval", help="COCO evaluator")
    model = parser.add_argument_group("with --model")
    model.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    model.add_argument(
        "--threshold", type=float, default=0.0,
        help="minimum entity score in [0, 1]; 0 keeps the best --max-detections, as AR wants",
    )  # fmt: skip
    model.add_argument(
        "--save-predictions", type=Path, metavar="DIR",
        help="also write NAME.predictions.json (COCO results) per dataset, for --predictions later",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates every dataset, prints the tables, writes ``--output``; returns the exit code."""
    from sohes_hf.atomic_io import write_json_atomic
    from sohes_hf.cli.main import CliError
    from sohes_hf.evaluation.coco_eval import evaluate_class_agnostic
    from sohes_hf.evaluation.results_table import (
        format_ar_row,
        format_hierarchy_table,
        format_results_table,
        results_to_json,
    )

    specs = _parse_datasets(args.dataset)
    prediction_files = _pair_predictions(args.predictions, specs) if args.predictions else {}
    _check_options(args, specs)
    if args.model:
        check_model_path(args.model)
    segmenter = _load_segmenter(args) if args.model else None
    results = {}
    hierarchy: dict[str, HierarchyMetrics] = {}
    sources: dict[str, str] = {}
    for spec in specs:
        try:
            images, references = _load_references(spec, args.category_name_contains, bool(args.model))
        except (ValueError, FileNotFoundError) as error:
            raise CliError(f"--dataset: {spec.name}: {error}") from error
        if segmenter is not None:
            try:
                _check_stored_sizes(images)
            except ValueError as error:
                raise CliError(f"--dataset: {spec.name}: {error}") from error
            predictions = _predict(segmenter, images, spec.name, args)
            sources[spec.name] = f"model {args.model}"
        else:
            try:
                predictions = _load_predictions(prediction_files[spec.name], images)
            except ValueError as error:
                raise CliError(f"--predictions: {error}") from error
            sources[spec.name] = str(prediction_files[spec.name])
        try:
            result = evaluate_class_agnostic(
                predictions, references, max_detections=args.max_detections, backend=args.backend
            )
        except ValueError as error:  # a malformed mask the loaders let through (e.g. RLE counts)
            flag = "--dataset" if str(error).startswith("references") else "--predictions"
            raise CliError(f"{flag}: {spec.name}: {_name_image(str(error), images, args)}") from error
        if result.num_images_without_predictions:
            logger.warning(
                "%s: %d of %d images have ground truth but no prediction; their masks count as misses",
                spec.name, result.num_images_without_predictions, result.num_images,
            )  # fmt: skip
        results[spec.name] = result
        if references and all("parents" in reference for reference in references):
            hierarchy[spec.name] = _hierarchy_metrics(predictions, references, args)
    print(format_results_table(results))
    if len(results) > 1:
        print()
        print(format_ar_row(results))
    if hierarchy:
        print()
        print(format_hierarchy_table(hierarchy))
    if args.output is not None:
        from sohes_hf import __version__

        payload = results_to_json(
            results,
            sohes_hf_version=__version__,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            max_detections=args.max_detections,
            backend=args.backend,
            category_name_contains=args.category_name_contains,
            ground_truth={spec.name: str(spec.annotation_file) for spec in specs},
            predictions=sources,
        )
        if hierarchy:
            payload["hierarchy"] = {name: metrics.to_dict() for name, metrics in hierarchy.items()}
        logger.info("wrote %s", write_json_atomic(args.output, payload))
    return 0


def _hierarchy_metrics(
    predictions: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]], args: argparse.Namespace
) -> HierarchyMetrics:
    from sohes_hf.evaluation.hierarchy_metrics import HierarchyMetrics, parent_link_metrics, per_depth_ar

    return HierarchyMetrics(
        ar_per_depth=per_depth_ar(predictions, references, args.max_detections, args.backend),
        links=parent_link_metrics(predictions, references, max_detections=args.max_detections),
    )


# --- arguments ---------------------------------------------------------------------------------


def _parse_datasets(values: Sequence[str]) -> list[DatasetSpec]:
    from sohes_hf.cli.main import CliError

    specs: list[DatasetSpec] = []
    for value in values:
        name, separator, rest = value.partition("=")
        if not separator or not name or not rest:
            raise CliError(f"--dataset: expected NAME=GT_JSON[:IMAGE_ROOT], got {value!r}")
        annotation, _, root = rest.partition(":")
        if any(spec.name == name for spec in specs):
            raise CliError(f"--dataset: the name {name!r} is given twice; names must be unique")
        if not Path(annotation).is_file():
            raise CliError(f"--dataset: ground-truth file {annotation} does not exist")
        if root and not Path(root).is_dir():
            raise CliError(f"--dataset: image folder {root} does not exist")
        specs.append(DatasetSpec(name, Path(annotation), Path(root) if root else None))
    return specs


def _pair_predictions(values: Sequence[str], specs: Sequence[DatasetSpec]) -> dict[str, Path]:
    """Maps each dataset name to its predictions file."""
    from sohes_hf.cli.main import CliError

    names = [spec.name for spec in specs]
    paired: dict[str, Path] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator:
            if len(specs) != 1 or len(values) != 1:
                raise CliError(f"--predictions: with several datasets write NAME=FILE, got {value!r}")
            name, path = names[0], value
        if name not in names:
            raise CliError(f"--predictions: {name!r} is not a --dataset name; accepted values: {names}")
        if name in paired:
            raise CliError(f"--predictions: dataset {name!r} is given two prediction files")
        if not Path(path).is_file():
            raise CliError(f"--predictions: file {path} does not exist")
        paired[name] = Path(path)
    missing = [name for name in names if name not in paired]
    if missing:
        raise CliError(f"--predictions: no predictions for dataset(s) {missing}")
    return paired


def _check_options(args: argparse.Namespace, specs: Sequence[DatasetSpec]) -> None:
    from sohes_hf.cli.main import CliError

    if args.max_detections < 1:
        raise CliError(f"--max-detections: must be a positive integer, got {args.max_detections}")
    if args.output is not None and args.output.is_dir():
        raise CliError(f"--output: {args.output} is a directory; give a file name such as results.json")
    if args.output is not None:
        check_writable_folder(args.output.parent)  # before minutes of evaluation
    if args.save_predictions is not None:
        check_writable_folder(args.save_predictions, "--save-predictions")
    model_only = {
        "--save-predictions": args.save_predictions is not None,
        "--batch-size": args.batch_size != 1,
    }
    if not args.model:
        used = [flag for flag, given in model_only.items() if given]
        if used:
            raise CliError(f"{used[0]}: only meaningful with --model")
        return
    if args.batch_size < 1:
        raise CliError(f"--batch-size: must be a positive integer, got {args.batch_size}")
    check_device(str(args.device))
    if not 0.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold: must lie in [0, 1], got {args.threshold}")
    without_root = [spec.name for spec in specs if spec.image_root is None]
    if without_root:
        raise CliError(
            f"--dataset: --model needs NAME=GT_JSON:IMAGE_ROOT; no image folder for {without_root}"
        )


# --- ground truth and prediction files ---------------------------------------------------------


def _name_image(message: str, images: Sequence[Any], args: argparse.Namespace) -> str:
    """Replaces the metric's ``references[i]['masks'][j]`` by the image id, file and annotation."""
    import re

    match = re.match(r"(references|predictions)\[(\d+)\]\['masks'\]\[(\d+)\]", message)
    if match is None or int(match.group(2)) >= len(images):
        return message
    image, mask = images[int(match.group(2))], int(match.group(3))
    where = f"image {image.image_id} ({image.file_name})"
    if (
        match.group(1) == "references"
        and args.category_name_contains is None
        and mask < len(image.annotation_ids)
    ):
        where += f", annotation {image.annotation_ids[mask]}"
    else:
        where += f", mask {mask}"
    return f"{where}{message[match.end() :]}; fix or remove that mask"


def _load_references(
    spec: DatasetSpec, category_name_contains: str | None, need_images: bool
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Class-agnostic ground truth per image, with the file's ``area`` values (COCO's S/M/L split).

    Returns:
        ``(images, references)``: the loader's ``GroundTruthImage`` records and per image
        ``{"masks", "iscrowd", "areas"}`` for :func:`evaluate_class_agnostic`.
    """
    from sohes_hf.data.coco_datasets import load_coco_ground_truth

    image_root = spec.image_root or spec.annotation_file.parent
    ground_truth = load_coco_ground_truth(spec.annotation_file, image_root, check_images_exist=need_images)
    raw = json.loads(spec.annotation_file.read_text(encoding="utf-8"))
    annotations = raw.get("annotations", [])
    keep_categories = None
    if category_name_contains is not None:
        keep_categories = {
            int(c["id"])
            for c in raw.get("categories", [])
            if category_name_contains in str(c.get("name", ""))
        }
        if not keep_categories:
            logger.warning("%s: no category name contains %r", spec.name, category_name_contains)
    by_id = {int(a.get("id", n + 1)): a for n, a in enumerate(annotations)}
    depth_of = _annotation_depths(by_id, spec.annotation_file)
    references = []
    for image in ground_truth:
        chosen = [
            k for k, annotation_id in enumerate(image.annotation_ids)
            if keep_categories is None or int(by_id[annotation_id].get("category_id", -1)) in keep_categories
        ]  # fmt: skip
        areas = [by_id[image.annotation_ids[k]].get("area") for k in chosen]
        reference: dict[str, Any] = {
            "masks": [image.masks[k] for k in chosen],
            "iscrowd": [int(image.iscrowd[k]) for k in chosen],
        }
        if all(isinstance(a, (int, float)) and math.isfinite(a) for a in areas):
            reference["areas"] = [float(a) for a in areas]  # as COCOeval on the file would use
        if depth_of is not None:
            chosen_ids = [image.annotation_ids[k] for k in chosen]
            position = {annotation_id: n for n, annotation_id in enumerate(chosen_ids)}
            reference["parents"] = [position.get(_parent_of(by_id[i]), -1) for i in chosen_ids]
            reference["depths"] = [depth_of[i] for i in chosen_ids]
        references.append(reference)
    logger.info(
        "%s: %d images, %d ground-truth masks",
        spec.name,
        len(references),
        sum(len(r["masks"]) for r in references),
    )
    return list(ground_truth), references


def _parent_of(annotation: dict[str, Any]) -> int:
    parent = annotation.get("parent_id")
    return -1 if parent is None else int(parent)


def _annotation_depths(by_id: dict[int, dict[str, Any]], path: Path) -> dict[int, int] | None:
    """Depth per annotation id when the file has parent links, else None.

    The file's ``depth`` is used where given; otherwise it is derived from ``parent_id`` over
    the whole file (depth 0 = no parent), so a category filter does not change an entity's depth.
    """
    if not any(_parent_of(a) >= 0 for a in by_id.values()):
        return None
    depths: dict[int, int] = {}
    for start in by_id:
        chain, node = [], start
        while node not in depths and "depth" not in by_id[node]:
            if node in chain:
                raise ValueError(f"{path}: parent_id links form a cycle through annotation {node}")
            chain.append(node)
            parent = _parent_of(by_id[node])
            if parent < 0:
                depths[node] = 0
                chain.pop()
                break
            if parent not in by_id:
                raise ValueError(
                    f"{path}: annotation {node} has parent_id {parent}, which is no annotation id; "
                    "fix the link or give 'depth'"
                )
            node = parent
        else:
            if node not in depths:
                depths[node] = int(by_id[node]["depth"])
        base = depths[node]
        for offset, child in enumerate(reversed(chain), start=1):
            depths[child] = base + offset
    return depths


def _load_predictions(path: Path, images: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-image ``{"masks", "scores"}`` from a COCO results list or a pseudo-label COCO JSON.

    Results lists are matched to the ground truth by ``image_id``. Pseudo-label files (with
    ``images``/``annotations``) are matched by ``file_name`` when any of their file names is in
    the ground truth, else by image id (logged). Predictions for images absent from the ground
    truth are ignored with a warning; ``score`` defaults to 1.0 when missing.
    """
    from sohes_hf.data.coco_datasets import segmentation_to_rle
    from sohes_hf.data.strict_json import loads_finite

    data = loads_finite(path.read_text(encoding="utf-8"), str(path))
    gt_index = {int(image.image_id): k for k, image in enumerate(images)}
    if isinstance(data, list):
        records, to_gt = data, gt_index
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        records, to_gt = data["annotations"], _pseudo_label_image_map(data, images, gt_index, path)
    else:
        raise ValueError(f"{path} is neither a COCO results list nor a JSON with 'annotations'")
    predictions: list[dict[str, Any]] = [{"masks": [], "scores": []} for _ in images]
    links: list[list[tuple[Any, Any]]] = [[] for _ in images]  # (record id, parent_id) per mask
    ignored: set[int] = set()
    for number, record in enumerate(records):
        where = f"{path}: record {number}"
        if not isinstance(record, dict) or "image_id" not in record or "segmentation" not in record:
            raise ValueError(f"{where}: needs 'image_id' and 'segmentation'")
        index = to_gt.get(int(record["image_id"]))
        if index is None:
            ignored.add(int(record["image_id"]))
            continue
        image = images[index]
        rle = segmentation_to_rle(record["segmentation"], image.height, image.width, where)
        if rle is None:
            continue
        score = record.get("score", 1.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{where}: 'score' must be a finite number, got {score!r}")
        predictions[index]["masks"].append(rle)
        predictions[index]["scores"].append(float(score))
        links[index].append((record.get("id"), record.get("parent_id")))
    if ignored:
        logger.warning(
            "%s: ignored predictions for %d image ids absent from the ground truth (e.g. %s)",
            path, len(ignored), sorted(ignored)[:5],
        )  # fmt: skip
    for prediction, image_links in zip(predictions, links, strict=True):
        prediction["parents"] = _parent_indices(image_links)
    return predictions


def _parent_indices(links: Sequence[tuple[Any, Any]]) -> list[int]:
    """Each mask's ``parent_id`` as an index among the image's masks; -1 for none or unknown."""
    position = {record_id: k for k, (record_id, _) in enumerate(links) if record_id is not None}
    return [-1 if parent is None else position.get(parent, -1) for _, parent in links]


def _pseudo_label_image_map(
    data: dict[str, Any], images: Sequence[Any], gt_index: dict[int, int], path: Path
) -> dict[int, int]:
    """Prediction image id -> ground-truth image index, through file names when they match."""
    by_name = {image.file_name: k for k, image in enumerate(images)}
    mapping = {
        int(image["id"]): by_name[image["file_name"]]
        for image in data.get("images", [])
        if isinstance(image, dict) and "id" in image and image.get("file_name") in by_name
    }
    if mapping:
        return mapping
    logger.warning("%s: no file name matches the ground truth; matching images by id", path)
    return gt_index


# --- running a model ---------------------------------------------------------------------------


def _load_segmenter(args: argparse.Namespace) -> Any:
    from transformers import pipeline

    from sohes_hf.cli.main import CliError
    from sohes_hf.hub import raise_if_hub_unreachable
    from sohes_hf.pipelines import TASK_NAME, register_pipeline

    register_pipeline()
    try:
        return pipeline(TASK_NAME, model=args.model, device=args.device)  # type: ignore[call-overload]
    except (OSError, ValueError) as error:
        raise_if_hub_unreachable(error, args.model, flag="--model")
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"--model: cannot load {args.model!r}: {first_line}") from error


def _check_stored_sizes(images: Sequence[Any]) -> None:
    """Refuses an image whose file size differs from its ground-truth ``width``/``height``.

    Images are segmented in their stored pixel orientation (the EXIF Orientation tag is not
    applied), as COCO ground truth is defined and as ``sohes explore`` and training read them;
    a ground truth made on the rotated view would otherwise fail deep in the metric.
    Reads image headers only.

    Raises:
        ValueError: names the image, both sizes and, for a 90-degree EXIF rotation, the cause.
    """
    from PIL import Image

    for image in images:
        try:
            with Image.open(image.image_path) as opened:
                width, height = opened.size
                orientation = opened.getexif().get(0x0112, 1)
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(
                f"image {image.image_id} ({image.image_path}) is not a readable image: {error}"
            ) from error
        if (width, height) == (image.width, image.height):
            continue
        hint = ""
        if (height, width) == (image.width, image.height) and orientation in (5, 6, 7, 8):
            hint = (
                f"; the file's EXIF Orientation tag ({orientation}) rotates it by 90 degrees for display, "
                "and the ground truth seems made on the rotated view"
            )
        raise ValueError(
            f"image {image.image_id} ({image.image_path}): the ground truth says "
            f"{image.width}x{image.height} "
            f"(width x height) but the file stores {width}x{height} pixels{hint}. Images are evaluated in "
            "their stored pixel orientation (EXIF rotation not applied, as COCO does): fix the ground "
            "truth's width/height and masks, or store the pixels rotated"
        )


def _predict(
    segmenter: Any, images: Sequence[Any], name: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Runs the pipeline over the images in batches; per image ``{"masks", "scores"}``."""
    from tqdm.auto import tqdm

    predictions: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    step = args.batch_size
    with tqdm(total=len(images), desc=f"segmenting {name}", unit="image") as progress:
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            outputs = segmenter(
                [str(image.image_path) for image in chunk],
                batch_size=step,
                threshold=args.threshold,
                max_instances=args.max_detections,
            )
            for image, entities in zip(chunk, outputs, strict=True):
                masks = [entity["mask"] for entity in entities]
                scores = [float(entity["score"]) for entity in entities]
                ids = [entity.get("id") for entity in entities]
                parent_ids = [entity.get("parent_id") for entity in entities]
                parents = _parent_indices(list(zip(ids, parent_ids, strict=True)))
                predictions.append({"masks": masks, "scores": scores, "parents": parents})
                results.extend(
                    {"image_id": image.image_id, "category_id": 1, "segmentation": m, "score": s,
                     "id": i, "parent_id": q}
                    for m, s, i, q in zip(masks, scores, ids, parent_ids, strict=True)
                )  # fmt: skip
            progress.update(len(chunk))
    if args.save_predictions is not None:
        from sohes_hf.atomic_io import write_json_atomic

        path = write_json_atomic(args.save_predictions / f"{name}.predictions.json", results)
        logger.info("%s: wrote %d predictions to %s", name, len(results), path)
    return predictions
