"""``sohes segment``: run a SOHES model on images and write JSON results and pictures.

Inputs are image files, folders (every image in them, recursively, in name order) and http(s)
URLs. For every image ``NAME.ext`` the command writes, under ``--output``:

* ``NAME.json``: ``{"image", "width", "height", "entities": [...]}`` with the pipeline's entity
  dicts (RLE masks at the original size, parents before children). Written last, atomically,
  so its presence marks a finished image: re-running skips finished images (``--overwrite``
  redoes them);
* ``NAME.overlay.png`` (all levels), ``NAME.levels.png`` (one tile per depth level),
  ``NAME.tree.png`` (the hierarchy as thumbnails) and ``NAME.tree.txt`` (text tree), unless
  ``--no-pictures``;
* ``NAME.sam.json`` with ``--sam``: Segment Anything automatic-mask-generator records
  (see :mod:`sohes_hf.exporters`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

from sohes_hf.cli.arguments import HelpFormatter, check_device, check_model_path
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)


def register(subparsers: Any) -> None:
    """Adds the ``segment`` parser to the ``sohes`` command."""
    parser = subparsers.add_parser(
        "segment",
        help="segment images into a hierarchy of entities; write JSON and pictures",
        description="Runs the hierarchical-segmentation pipeline on images and writes, per image, "
        "NAME.json (entities with RLE masks), pictures and optionally SAM records.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders of images (recursive) or http(s) URLs",
    )
    parser.add_argument("--model", required=True, help="model directory or Hub id")
    parser.add_argument("--output", required=True, type=Path, help="output directory (created)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum entity score in [0, 1]")
    parser.add_argument("--max-instances", type=int, default=1000, help="entities kept per image, best first")
    parser.add_argument(
        "--ancestor-threshold", type=float, default=0.5, help="ancestor probability threshold in [0, 1]"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--sam", action="store_true", help="also write NAME.sam.json (SAM records)")
    parser.add_argument("--no-pictures", action="store_true", help="write JSON only")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose NAME.json exists")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from sohes_hf.cli.main import CliError

    for flag, value in (("--threshold", args.threshold), ("--ancestor-threshold", args.ancestor_threshold)):
        if not 0.0 <= value <= 1.0:
            raise CliError(f"{flag}: must lie in [0, 1], got {value}")
    if args.max_instances < 1:
        raise CliError(f"--max-instances: must be a positive integer, got {args.max_instances}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size: must be a positive integer, got {args.batch_size}")
    check_device(str(args.device))
    check_model_path(args.model)
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"--output: {args.output} exists and is not a directory")
    args.images = _expand_folders(args.images)
    stems: dict[str, str] = {}
    for image in args.images:
        is_url = image.startswith(("http://", "https://"))
        if not is_url:
            _check_image_file(image)
        stem = Path(image.split("?")[0]).stem or "image"
        if stem in stems:
            raise CliError(f"IMAGE: {stems[stem]} and {image} would both write {stem}.json; rename one")
        stems[stem] = image


def _expand_folders(inputs: list[str]) -> list[str]:
    """Replaces each folder by the image files in it (recursively, in name order)."""
    from sohes_hf.cli.main import CliError
    from sohes_hf.data.image_sources import IMAGE_EXTENSIONS

    images: list[str] = []
    for item in inputs:
        folder = Path(item)
        if item.startswith(("http://", "https://")) or not folder.is_dir():
            images.append(item)
            continue
        found = sorted(
            str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise CliError(
                f"IMAGE: no image in folder {item} (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        images.extend(found)
    return images


def _check_image_file(image: str) -> None:
    """Raises CliError unless ``image`` is an existing file that PIL recognises as an image."""
    from PIL import Image, UnidentifiedImageError

    from sohes_hf.cli.main import CliError

    if not Path(image).is_file():
        raise CliError(f"IMAGE: file not found: {image}")
    try:
        with Image.open(image) as opened:
            opened.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise CliError(f"IMAGE: {image} is not a readable image: {error}") from error


def _write_outputs(args: argparse.Namespace, image: str, entities: list[dict[str, Any]]) -> Path:
    from sohes_hf.cli.show import write_pictures
    from sohes_hf.exporters import to_sam_records, write_json
    from sohes_hf.pipelines import load_image_input
    from sohes_hf.visualization import as_rgb_image

    stem = Path(image.split("?")[0]).stem or "image"
    picture = as_rgb_image(load_image_input(image))
    height, width = picture.shape[:2]
    if not args.no_pictures:
        write_pictures(args.output, stem, picture, entities)
    if args.sam:
        write_json(args.output / f"{stem}.sam.json", to_sam_records(entities))
    payload = {"image": image, "width": width, "height": height, "entities": entities}
    return write_json(args.output / f"{stem}.json", payload)


def run(args: argparse.Namespace) -> int:
    """Segments the images; prints one summary line per image; returns the exit code."""
    from tqdm.auto import tqdm

    from sohes_hf.cli.arguments import check_writable_folder
    from sohes_hf.cli.main import CliError

    _check_args(args)
    check_writable_folder(args.output)  # before the model loads: a read-only disk costs one line
    pending = [
        image
        for image in args.images
        if args.overwrite or not (args.output / f"{Path(image.split('?')[0]).stem or 'image'}.json").exists()
    ]
    skipped = len(args.images) - len(pending)
    if skipped:
        logger.info("skipping %d image(s) with results in %s (use --overwrite to redo)", skipped, args.output)
    if not pending:
        print(f"all {len(args.images)} image(s) already done in {args.output}")
        return 0

    from transformers import pipeline

    from sohes_hf.hub import raise_if_hub_unreachable
    from sohes_hf.pipelines import TASK_NAME, register_pipeline

    register_pipeline()
    try:
        segmenter = pipeline(cast(Any, TASK_NAME), model=args.model, device=args.device)
    except (OSError, ValueError) as error:
        raise_if_hub_unreachable(error, args.model, flag="--model")
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"--model: cannot load {args.model!r}: {first_line}") from error

    print(f"{'image':<40} {'entities':>8} {'wholes':>7} {'parts':>6} {'deeper':>7}  output")
    for start in tqdm(range(0, len(pending), args.batch_size), desc="segment", unit="batch"):
        batch = pending[start : start + args.batch_size]
        results = segmenter(
            batch,
            batch_size=len(batch),
            threshold=args.threshold,
            max_instances=args.max_instances,
            ancestor_threshold=args.ancestor_threshold,
        )
        for image, entities in zip(batch, results, strict=True):
            path = _write_outputs(args, image, entities)
            depths = [entity["depth"] for entity in entities]
            wholes, parts = depths.count(0), depths.count(1)
            deeper = len(depths) - wholes - parts
            print(f"{image[-40:]:<40} {len(entities):>8} {wholes:>7} {parts:>6} {deeper:>7}  {path}")
    return 0
