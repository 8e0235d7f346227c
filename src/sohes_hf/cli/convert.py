"""``sohes convert``: original DINO ``.pth`` checkpoint -> transformers ``ViTModel`` directory.

The output directory is what :meth:`SohesForHierarchicalSegmentation.from_dino` and the
self-exploration feature extractor take as a backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sohes_hf.cli.arguments import HelpFormatter
from sohes_hf.cli.main import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an original DINO .pth checkpoint to a transformers ViTModel directory",
        description="Convert an original DINO checkpoint (dino_vitbase8_pretrain.pth or a full training "
        "checkpoint, whose teacher is used) to a transformers ViTModel directory.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--dino-checkpoint", required=True, type=Path, help="original DINO .pth file")
    parser.add_argument(
        "--output", required=True, type=Path, help="directory to write (config + safetensors)"
    )
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        help="heads per layer (default: hidden size / 64, true for every released DINO ViT)",
    )
    parser.add_argument(
        "--layer-norm-eps", type=float, default=1e-6, help="LayerNorm epsilon (default: DINO's 1e-6)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Converts the checkpoint; prints the output directory. Returns the exit code."""
    from sohes_hf.modeling.conversion import convert_dino_checkpoint

    if not args.dino_checkpoint.is_file():
        raise CliError(f"--dino-checkpoint: file not found: {args.dino_checkpoint}")
    if args.output.exists() and not args.overwrite:
        raise CliError(f"--output: {args.output} exists; accepted values: a new path, or pass --overwrite")
    if args.num_attention_heads is not None and args.num_attention_heads <= 0:
        raise CliError(f"--num-attention-heads: must be positive, got {args.num_attention_heads}")
    if args.layer_norm_eps <= 0:
        raise CliError(f"--layer-norm-eps: must be positive, got {args.layer_norm_eps}")
    try:
        output = convert_dino_checkpoint(
            args.dino_checkpoint,
            args.output,
            num_attention_heads=args.num_attention_heads,
            layer_norm_eps=args.layer_norm_eps,
            overwrite=args.overwrite,
        )
    except ValueError as error:
        raise CliError(f"--dino-checkpoint: {error}") from error
    print(output)
    return 0
