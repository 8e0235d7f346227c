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
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sohes_hf.cli.arguments import HelpFormatter, check_device, check_writable_folder
from sohes_hf.logging_utils import ROOT_LOGGER_NAME, get_logger

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
        epilog=(
            "On a CPU, the defaults (--image-size 1024, --refiner cascadepsp) take minutes per image; "
            "--image-size 512 --refiner none is the quickest first look."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "images", nargs="*", help="image folders (recursive), list files (.txt), SA-1B .tar packs"
    )
    parser.add_argument(
        "--output", required=True, help="output folder (or, with --merge, the merged COCO file)"
    )
    parser.add_argument("--merge", metavar="DIR", help="merge the shard files of DIR into --output")
    parser.add_argument(
        "--backbone",
        default="facebook/dino-vitb8",
        help="ViT Hub id or local folder, or 'colour-texture': offline colour/texture patch statistics, "
        "a documented stand-in that is NOT DINO (docs/self_exploration.md)",
    )
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
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:N or mps (default: the accelerate process's device: a GPU if any)"
    )
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
        "--max-image-pixels",
        type=int,
        default=None,
        help="skip (and report) images above this many pixels, a decompression-bomb guard (default: 1e8)",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=None,
        help="skip image files (tar members) larger than this many bytes, unread (default 256 MiB)",
    )
    parser.add_argument("--precision", default="auto", help="backbone precision: auto, fp32, fp16, bf16")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--pictures",
        type=int,
        default=0,
        metavar="N",
        help="draw the pseudo-labels of the shard's first N images (depth panel, tree) in OUTPUT/pictures",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``sohes explore``; returns the exit code."""
    from sohes_hf.cli.main import CliError

    if args.merge is not None:
        return _run_merge(args, CliError)
    if not args.images:
        raise CliError("IMAGES: give at least one image folder, list file or tar pack (or use --merge DIR)")
    job, device = _job_from_args(args, CliError)
    check_writable_folder(args.output)

    from sohes_hf.pseudo_labeling.explore_job import ExploreInputError, run_explore_job
    from sohes_hf.pseudo_labeling.explore_journal import ExploreOutputError
    from sohes_hf.pseudo_labeling.refinement import build_refiner

    config = job.exploration
    extractor = _load_backbone(args.backbone, config, device, CliError)
    refiner = build_refiner(
        config.refiner,
        weights_folder=args.refiner_weights,
        device=str(extractor.device),
        max_side=config.refinement_max_side,
        fast=config.refinement_fast,
        batch_size=config.refinement_batch_size,
        precision=config.refinement_precision,
    )
    _warn_if_slow(config, str(extractor.device), extractor.patch_size)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger(ROOT_LOGGER_NAME)]):
            summary = run_explore_job(job, extractor, refiner, show_progress=not args.no_progress)
    except ExploreOutputError as error:
        raise CliError(str(error).replace("output: ", "--output: ", 1)) from error
    except ExploreInputError as error:
        raise CliError(f"IMAGES: {error}") from error
    except (ValueError, FileNotFoundError) as error:
        _raise_input_error(error, CliError)
        raise
    sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    if args.pictures and summary.num_labeled:
        _draw_pictures(summary, job, args.pictures)
    _check_labelled(summary, job)
    return 0


def _draw_pictures(summary: Any, job: Any, count: int) -> None:
    """Draws the pseudo-labels of the shard's first ``count`` labelled images in OUTPUT/pictures."""
    from sohes_hf.cli.show import draw_label_pictures, read_labels
    from sohes_hf.data.image_sources import ImageReader, list_images, shard_entries

    labels = read_labels(summary.paths.annotations, max_images=count)
    entries = {
        entry.image_id: entry
        for entry in shard_entries(list_images(job.inputs), job.num_shards, job.shard_index)
    }
    folder = Path(job.output_dir) / "pictures"
    with ImageReader(job.max_image_pixels, job.exploration.min_image_side) as reader:
        lines = draw_label_pictures(labels, lambda image: reader.read(entries[int(image["id"])]), folder)
    for line in lines:
        logger.info("pictures: %s", line)


def _raise_input_error(error: Exception, cli_error: type[Exception]) -> None:
    """Turns the job's errors about its inputs or output folder into a CLI error naming the flag."""
    message = str(error)
    for prefix, flag in (("inputs: ", "IMAGES"), ("output: ", "--output")):
        if message.startswith(prefix):
            raise cli_error(f"{flag}: {message[len(prefix) :]}") from error


def _warn_if_slow(config: Any, device: str, patch_size: int) -> None:
    """Says up front when a CPU run at these settings takes minutes per image, and what to change."""
    if not device.startswith("cpu"):
        return
    causes, changes = [], []
    if config.image_size > 512:
        patches = (config.image_size // patch_size) ** 2
        causes.append(f"--image-size {config.image_size} ({patches:,} patches per backbone pass)")
        changes.append("--image-size 512")
    if config.refiner == "cascadepsp":
        causes.append("--refiner cascadepsp (one CascadePSP pass per mask, dozens of masks per image)")
        changes.append("--refiner none")
    if causes:
        logger.warning(
            "running on CPU with %s: expect minutes per image; for a first look use %s, "
            "or a GPU (--device cuda)",
            " and ".join(causes),
            " ".join(changes),
        )


def _check_labelled(summary: Any, job: Any) -> None:
    """Fails (one line, exit 1) when the run produced no pseudo-label at all, saying what to check."""
    from sohes_hf.cli.main import CliFailure
    from sohes_hf.pseudo_labeling.explore_report import emptied_step

    if summary.num_images == 0:
        logger.warning(
            "shard %d of %d has no image: the inputs hold fewer images than shards",
            job.shard_index,
            job.num_shards,
        )
        return
    if summary.num_labeled == 0:
        skipped = json.loads(summary.paths.skipped.read_text(encoding="utf-8"))["skipped"]
        first = f" (first: {skipped[0]['key']}: {skipped[0]['reason']})" if skipped else ""
        raise CliFailure(
            f"no image could be labelled: all {summary.num_images} images were skipped{first}; "
            f"the reasons are in {summary.paths.skipped}"
        )
    if summary.num_masks == 0:
        emptied = emptied_step(summary.masks_after_step)
        where = (
            f": {emptied.step} removed every mask ({emptied.num_before} before it, 0 after); {emptied.hint}"
            if emptied is not None
            else f" (masks after each step: {summary.masks_after_step})"
        )
        raise CliFailure(
            f"no pseudo-label was made for any of the {summary.num_labeled} labelled images{where}"
        )


def _load_backbone(name: str, config: Any, device: str | None, cli_error: type[Exception]) -> Any:
    """The feature extractor; a folder that is not a loadable ViT is one line naming it."""
    from pickle import UnpicklingError

    from safetensors import SafetensorError

    from sohes_hf.hub import HubUnreachableError
    from sohes_hf.pseudo_labeling.colour_texture_features import (
        COLOUR_TEXTURE_BACKBONE,
        ColourTextureFeatureExtractor,
    )
    from sohes_hf.pseudo_labeling.features import DinoFeatureExtractor

    if name == COLOUR_TEXTURE_BACKBONE:
        return ColourTextureFeatureExtractor(device=device)
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise cli_error(f"--backbone: {name} is not a folder; give a ViT model folder or a Hub id")
    try:
        return DinoFeatureExtractor(
            name,
            feature_kind=config.feature_kind,
            device=device,
            precision=config.precision,
            batch_size=config.feature_batch_size,
        )
    except HubUnreachableError:
        raise  # the CLI's own message: offline, with the local-copy hint
    except (OSError, ValueError, SafetensorError, UnpicklingError) as error:  # weights_only refusal too
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise cli_error(
            f"--backbone: cannot load {name} as a ViT ({type(error).__name__}: {reason[:300]}); "
            "give a folder with config.json and model.safetensors (transformers ViTModel) or a Hub id"
        ) from error


def _run_merge(args: argparse.Namespace, cli_error: type[Exception]) -> int:
    from sohes_hf.pseudo_labeling.shard_merge import check_merge_output, merge_shards  # no torch

    if args.images:
        raise cli_error("IMAGES: not used with --merge (give the shard folder as --merge DIR)")
    if args.pictures:
        raise cli_error("--pictures: not used with --merge (draw a merged file with `sohes show`)")
    if not Path(args.merge).is_dir():
        raise cli_error(f"--merge: {args.merge} is not a folder")
    try:
        check_merge_output(args.merge, args.output)
    except ValueError as error:
        raise cli_error(f"--output: {str(error).removeprefix('output_file: ')}") from error
    check_writable_folder(Path(args.output).parent or ".")
    try:
        result = merge_shards(args.merge, args.output)
    except (FileNotFoundError, ValueError) as error:
        # The library names its argument ("output_dir: ..."); here that folder is --merge DIR.
        raise cli_error(f"--merge: {str(error).removeprefix('output_dir: ')}") from error
    sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
    return 0


def _check_choice(flag: str, value: str, accepted: Sequence[str], cli_error: type[Exception]) -> None:
    if value not in accepted:
        raise cli_error(f"{flag}: {value!r} is not accepted; accepted values: {', '.join(accepted)}")


def _job_from_args(args: argparse.Namespace, cli_error: type[Exception]) -> tuple[Any, str | None]:
    from sohes_hf.data.image_sources import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
    from sohes_hf.pseudo_labeling.config import SelfExplorationConfig
    from sohes_hf.pseudo_labeling.explore_job import ExploreJobConfig

    _check_choice("--refiner", args.refiner, _REFINERS, cli_error)
    if args.backbone == "colour-texture" and args.feature != "keys":
        raise cli_error("--feature: only for ViT backbones; --backbone colour-texture has no keys or queries")
    _check_choice("--feature", args.feature, _FEATURE_KINDS, cli_error)
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--refiner-batch-size", args.refiner_batch_size),
        ("--checkpoint-every", args.checkpoint_every),
        ("--workers", args.workers),
    ):
        if value < 1:
            raise cli_error(f"{flag}: must be a positive integer, got {value}")
    if args.pictures < 0:
        raise cli_error(f"--pictures: must be >= 0, got {args.pictures}")
    if args.image_size < 8 or args.image_size % 8 != 0:
        raise cli_error(
            f"--image-size: must be a positive multiple of 8 (the ViT-B/8 patch), got {args.image_size}"
        )
    _check_choice("--precision", args.precision, _PRECISIONS, cli_error)
    _check_choice("--refiner-precision", args.refiner_precision, _REFINER_PRECISIONS, cli_error)
    for flag, limit in (
        ("--max-image-pixels", args.max_image_pixels),
        ("--max-file-bytes", args.max_file_bytes),
    ):
        if limit is not None and limit < 1:
            raise cli_error(f"{flag}: must be a positive integer, got {limit}")
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
            max_file_bytes=args.max_file_bytes or DEFAULT_MAX_FILE_BYTES,
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
