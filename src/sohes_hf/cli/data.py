"""``sohes data``: prepare evaluation splits and pseudo-label stores (see docs/data.md).

Subcommands:
    make-sa1b-split PACK --output DIR [--num-images N]   SA-1B pack -> COCO evaluation split
    ade20k-to-coco --images DIR --instances DIR --output FILE
    convert-labels JSON... --output FILE.arrow|.parquet pseudo-label JSON shards -> Arrow/Parquet
    check (--tar PACK... | --image-dir DIR) --pseudo-labels PATH
                                                         stream the join and print its counts
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sohes_hf.data.sa1b import DEFAULT_MAX_IMAGE_PIXELS


def _cli_error(message: str) -> Exception:
    from sohes_hf.cli.main import CliError

    return CliError(message)


def _positive_int(flag: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise _cli_error(f"{flag}: must be a positive integer, got {value}")


def register(subparsers: Any) -> None:
    """Adds the ``data`` parser and its subcommands."""
    parser = subparsers.add_parser("data", help="prepare evaluation splits and pseudo-label stores")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    split = commands.add_parser("make-sa1b-split", help="carve a COCO evaluation split from an SA-1B pack")
    split.add_argument("pack", help="path or URL of an sa_XXXXXX.tar pack not used for training")
    split.add_argument(
        "--output", required=True, type=Path, help="output folder (images/ + annotations.json)"
    )
    split.add_argument(
        "--num-images", type=int, default=None, help="stop after N images (default: whole pack)"
    )
    split.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    split.set_defaults(func=run, data_func=_make_sa1b_split)

    ade = commands.add_parser("ade20k-to-coco", help="ADE20K instance PNGs -> class-agnostic COCO JSON")
    ade.add_argument("--images", required=True, type=Path, help="folder of <stem>.jpg images")
    ade.add_argument("--instances", required=True, type=Path, help="folder of <stem>.png instance maps")
    ade.add_argument("--output", required=True, type=Path, help="COCO JSON to write")
    ade.set_defaults(func=run, data_func=_ade20k_to_coco)

    convert = commands.add_parser(
        "convert-labels", help="pseudo-label JSON shards -> one .arrow (training) or .parquet (storage) file"
    )
    convert.add_argument("inputs", nargs="+", help="pseudo-label JSON files or folders of *.json")
    convert.add_argument("--output", required=True, type=Path, help=".arrow or .parquet file to write")
    convert.add_argument("--rows-per-group", type=int, default=16, help="images per row group / record batch")
    convert.set_defaults(func=run, data_func=_convert_labels)

    check = commands.add_parser("check", help="stream images joined with pseudo-labels and print the counts")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--tar", nargs="+", help="SA-1B pack paths or URLs")
    source.add_argument("--image-dir", help="folder of images named as in the pseudo-label file")
    check.add_argument(
        "--pseudo-labels", nargs="+", required=True, help=".arrow/.parquet file or JSON files/folders"
    )
    check.set_defaults(func=run, data_func=_check)


def run(args: argparse.Namespace) -> int:
    """Runs the chosen ``sohes data`` subcommand; returns the exit code."""
    return int(args.data_func(args))


def _make_sa1b_split(args: argparse.Namespace) -> int:
    from sohes_hf.data.converters import make_sa1b_eval_split

    _positive_int("--num-images", args.num_images)
    _positive_int("--max-image-pixels", args.max_image_pixels)
    if "://" not in args.pack and not Path(args.pack).is_file():
        raise _cli_error(f"PACK: {args.pack} does not exist")
    try:
        summary = make_sa1b_eval_split(
            args.pack, args.output, num_images=args.num_images, max_image_pixels=args.max_image_pixels
        )
    except (ValueError, FileNotFoundError) as error:
        raise _cli_error(f"PACK: {error}; see the skipped members logged above") from error
    skipped = summary.report.total_skipped if summary.report else 0
    print(f"images\t{summary.num_images}\nmasks\t{summary.num_annotations}\nskipped\t{skipped}")
    print(f"annotations\t{summary.annotation_file}\nimage_dir\t{summary.image_dir}")
    return 0


def _ade20k_to_coco(args: argparse.Namespace) -> int:
    from sohes_hf.data.converters import ade20k_instances_to_coco

    for flag, folder in (("--images", args.images), ("--instances", args.instances)):
        if not folder.is_dir():
            raise _cli_error(f"{flag}: {folder} is not a folder")
    summary = ade20k_instances_to_coco(args.images, args.instances, args.output)
    print(
        f"images\t{summary.num_images}\nmasks\t{summary.num_annotations}\nannotations\t{summary.annotation_file}"
    )
    return 0


def _convert_labels(args: argparse.Namespace) -> int:
    from sohes_hf.data.pseudo_label_store import convert_pseudo_labels

    _positive_int("--rows-per-group", args.rows_per_group)
    if args.output.suffix not in (".arrow", ".parquet"):
        raise _cli_error(f"--output: must end with .arrow or .parquet, got {args.output}")
    for item in args.inputs:
        if not Path(item).exists():
            raise _cli_error(f"INPUTS: {item} does not exist")
    try:
        count = convert_pseudo_labels(args.inputs, args.output, rows_per_group=args.rows_per_group)
    except ValueError as error:  # a malformed pseudo-label file; the message names it
        raise _cli_error(f"INPUTS: {error}") from error
    print(f"images\t{count}\noutput\t{args.output}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from sohes_hf.data.builder import ImageFolderPseudoLabelBuilder, SA1BPseudoLabelBuilder

    labels = args.pseudo_labels[0] if len(args.pseudo_labels) == 1 else list(args.pseudo_labels)
    builder: SA1BPseudoLabelBuilder | ImageFolderPseudoLabelBuilder
    try:
        if args.tar:
            builder = SA1BPseudoLabelBuilder(tar_files=list(args.tar), pseudo_labels=labels)
        else:
            builder = ImageFolderPseudoLabelBuilder(image_dir=args.image_dir, pseudo_labels=labels)
    except ValueError as error:
        raise _cli_error(f"--tar/--image-dir/--pseudo-labels: {error}") from error
    num_masks = 0
    for example in builder.as_streaming_dataset(split="train").select_columns(["pseudo_labels"]):
        num_masks += len(example["pseudo_labels"]["parents"])
    stats = builder.stats
    print(f"examples\t{stats.num_yielded}\nmasks\t{num_masks}")
    print(
        f"without_pseudo_labels\t{stats.num_without_pseudo_labels}\nsize_mismatch\t{stats.num_size_mismatch}"
    )
    for kind, count in sorted(stats.read.num_skipped.items()):
        print(f"skipped_{kind}\t{count}")
    return 0
