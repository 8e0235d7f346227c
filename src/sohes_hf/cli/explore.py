"""``sohes explore``: phase 1 (self-exploration, paper section 3.1) as a sharded, resumable job.

Examples::

    sohes explore images/ --output pseudo/ --refiner none
    sohes explore images/ --output pseudo/ --workers 8                            # 8 images at once
    accelerate launch -m sohes_hf.cli.main explore sa1b/*.tar --output pseudo/   # one shard per process
    sohes explore --merge pseudo/ --output pseudo_labels.json                    # shards -> one COCO file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from sohes_hf.cli.arguments import check_device
from sohes_hf.logging_utils import get_logger

logger = get_logger(__name__)

_REFINERS = ("cascadepsp", "none")
_FEATURE_KINDS = ("keys", "queries", "values", "tokens")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_REFINER_PRECISIONS = ("fp32", "fp16", "bf16")


def register(subparsers: Any) -> None:
    """Adds the ``explore`` parser."""
    parser = subparsers.add_parser(
        "explore",
        help="self-exploration: hierarchical pseudo-labels from raw images (phase 1)",
        description=(
            "Generates SOHES initial pseudo-labels (paper section 3.1) as COCO JSON, one file per "
            "shard in --output; re-running the same command resumes. With --merge DIR, merges the "
            "shard files of DIR into the single COCO file --output."
        ),
    )
    parser.add_argument(
        "images", nargs="*", help="image folders (recursive), list files (.txt), SA-1B .tar packs"
    )
    parser.add_argument("--output", required=True, help="output folder (or the merged file with --merge)")
    parser.add_argument("--merge", metavar="DIR", help="merge the shard files of DIR into --output")
    parser.add_argument("--backbone", default="facebook/dino-vitb8", help="ViT Hub id or local folder")
    parser.add_argument("--feature", default="keys", help="last-layer feature: keys, queries, values, tokens")
    parser.add_argument("--refiner", default="cascadepsp", help="mask refiner: cascadepsp or none")
    parser.add_argument("--refiner-weights", help="folder holding CascadePSP's checkpoint as <folder>/model")
    parser.add_argument("--batch-size", type=int, default=8, help="images or crops per backbone pass")
    parser.add_argument(
        "--refiner-batch-size", type=int, default=8, help="mask crops of one shape per CascadePSP pass"
    )
    parser.add_argument(
        "--refiner-precision", default="fp32", help="CascadePSP precision: fp32 (exact), bf16, fp16"
    )
    parser.add_argument("--device", help="torch device (default: the accelerate process's device)")
    parser.add_argument("--num-shards", type=int, help="shards (default: accelerate's process count)")
    parser.add_argument(
        "--shard-index", type=int, help="this run's shard (default: accelerate's process index)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="images explored at once by CPU threads (clustering in parallel; network passes one at a time)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=10, help="images between journal flushes")
    parser.add_argument("--image-size", type=int, default=1024, help="S, the clustering resolution (pixels)")
    parser.add_argument(
        "--max-image-pixels", type=int, default=None, help="skip images above this many pixels (default 1e8)"
    )
    parser.add_argument("--precision", default="auto", help="backbone precision: auto, fp32, fp16, bf16")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``sohes explore``; returns the exit code."""
    from sohes_hf.cli.main import CliError

    if args.merge is not None:
        return _run_merge(args, CliError)
    if not args.images:
        raise CliError("IMAGES: give at least one image folder, list file or tar pack (or use --merge DIR)")
    job, device = _job_from_args(args, CliError)

    from sohes_hf.pseudo_labeling.explore_job import run_explore_job
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor
    from sohes_hf.pseudo_labeling.refinement import build_refiner

    config = job.exploration
    extractor = DinoFeatureExtractor(
        args.backbone,
        feature_kind=config.feature_kind,
        device=device,
        precision=config.precision,
        batch_size=config.feature_batch_size,
    )
    refiner = build_refiner(
        config.refiner,
        weights_folder=args.refiner_weights,
        device=str(extractor.device),
        max_side=config.refinement_max_side,
        fast=config.refinement_fast,
        batch_size=config.refinement_batch_size,
        precision=config.refinement_precision,
    )
    summary = run_explore_job(job, extractor, refiner, show_progress=not args.no_progress)
    sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 0


def _run_merge(args: argparse.Namespace, cli_error: type[Exception]) -> int:
    from sohes_hf.pseudo_labeling.explore_job import merge_shards

    if args.images:
        raise cli_error("IMAGES: not used with --merge (give the shard folder as --merge DIR)")
    if not Path(args.merge).is_dir():
        raise cli_error(f"--merge: {args.merge} is not a folder")
    try:
        result = merge_shards(args.merge, args.output)
    except (FileNotFoundError, ValueError) as error:
        raise cli_error(f"--merge: {error}") from error
    sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
    return 0


def _job_from_args(args: argparse.Namespace, cli_error: type[Exception]) -> tuple[Any, str | None]:
    from sohes_hf.data.image_sources import DEFAULT_MAX_IMAGE_PIXELS
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig

    if args.refiner not in _REFINERS:
        raise cli_error(
            f"--refiner: {args.refiner!r} is not accepted; accepted values: {', '.join(_REFINERS)}"
        )
    if args.feature not in _FEATURE_KINDS:
        raise cli_error(
            f"--feature: {args.feature!r} is not accepted; accepted values: {', '.join(_FEATURE_KINDS)}"
        )
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--refiner-batch-size", args.refiner_batch_size),
        ("--checkpoint-every", args.checkpoint_every),
        ("--workers", args.workers),
    ):
        if value < 1:
            raise cli_error(f"{flag}: must be a positive integer, got {value}")
    if args.image_size < 8 or args.image_size % 8 != 0:
        raise cli_error(
            f"--image-size: must be a positive multiple of 8 (the ViT-B/8 patch), got {args.image_size}"
        )
    if args.precision not in _PRECISIONS:
        raise cli_error(
            f"--precision: {args.precision!r} is not accepted; accepted values: {', '.join(_PRECISIONS)}"
        )
    if args.refiner_precision not in _REFINER_PRECISIONS:
        raise cli_error(
            f"--refiner-precision: {args.refiner_precision!r} is not accepted; accepted values: "
            f"{', '.join(_REFINER_PRECISIONS)}"
        )
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise cli_error(f"--max-image-pixels: must be a positive integer, got {args.max_image_pixels}")
    if args.refiner_weights is not None and not (Path(args.refiner_weights) / "model").is_file():
        raise cli_error(f"--refiner-weights: {args.refiner_weights}/model not found (CascadePSP state dict)")
    for image_input in args.images:
        if not Path(image_input).exists():
            raise cli_error(f"IMAGES: {image_input} does not exist")
    check_device(args.device)
    num_shards, shard_index, device = _resolve_shard(args, cli_error)
    try:
        exploration = SelfExplorationConfig(
            image_size=args.image_size,
            feature_kind=args.feature,
            refiner=args.refiner,
            feature_batch_size=args.batch_size,
            refinement_batch_size=args.refiner_batch_size,
            refinement_precision=args.refiner_precision,
            precision=args.precision,
        )
        job = ExploreJobConfig(
            inputs=tuple(args.images),
            output_dir=args.output,
            num_shards=num_shards,
            shard_index=shard_index,
            checkpoint_every=args.checkpoint_every,
            backbone=args.backbone,
            exploration=exploration,
            max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
            workers=args.workers,
        )
    except ValueError as error:
        raise cli_error(str(error)) from error
    return job, args.device or device


def _resolve_shard(args: argparse.Namespace, cli_error: type[Exception]) -> tuple[int, int, str | None]:
    """(num_shards, shard_index, device): explicit flags, else accelerate's process layout."""
    if (args.num_shards is None) != (args.shard_index is None):
        raise cli_error("--num-shards/--shard-index: give both or neither (neither: one shard per process)")
    if args.num_shards is not None:
        if args.num_shards < 1:
            raise cli_error(f"--num-shards: must be a positive integer, got {args.num_shards}")
        if not 0 <= args.shard_index < args.num_shards:
            raise cli_error(f"--shard-index: must be in [0, {args.num_shards - 1}], got {args.shard_index}")
        return args.num_shards, args.shard_index, None
    from accelerate import PartialState

    state = PartialState()
    device = None if state.device is None else str(state.device)
    return state.num_processes, state.process_index, device
