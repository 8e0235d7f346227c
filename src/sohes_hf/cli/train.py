"""``sohes train``: phase 2 (self-instruction) or phase 3 (self-correction) training.

Same as ``examples/train.py``; launch multi-GPU / multi-node runs through Accelerate::

    accelerate launch -m sohes_hf.cli.train --phase self-instruction --config recipe.yaml
    accelerate launch examples/train.py --phase self-correction --config recipe.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from sohes_hf.cli.arguments import HelpFormatter
from sohes_hf.training.config import PHASES

HELP = "train the model: self-instruction (phase 2) or self-correction (phase 3)"
DESCRIPTION = """\
Trains phase 2 (self-instruction, on the pseudo-labels of `sohes explore`) or phase 3
(self-correction, teacher-student) from a recipe (examples/configs/); prints the saved model folder.

Multi-GPU / multi-node runs are launched through Accelerate:
  accelerate launch -m sohes_hf.cli.train --phase self-instruction --config recipe.yaml
  accelerate launch examples/train.py --phase self-correction --config recipe.yaml"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the training arguments to ``parser`` (shared with ``examples/train.py``)."""
    parser.add_argument("--phase", required=True, choices=PHASES, help="which phase to train")
    parser.add_argument("--config", default=None, help="recipe YAML/JSON (see examples/configs/)")
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (YAML value; dotted keys: augmentation.image_size=512); repeatable",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|DIR",
        help="continue a run from its latest checkpoint or from a checkpoint folder",
    )
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")


def register(subparsers: Any) -> None:
    """Adds ``sohes train`` to the ``sohes`` command."""
    parser = subparsers.add_parser("train", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Trains one phase; prints the saved model folder. Returns the exit code.

    Raises:
        CliError: unreadable or invalid recipe (the message names the field or file).
    """
    from sohes_hf.cli.arguments import check_writable_folder
    from sohes_hf.cli.main import CliError
    from sohes_hf.data.pseudo_label_checks import PseudoLabelError
    from sohes_hf.training import SelfCorrectionTrainer, SelfInstructionTrainer, load_training_config
    from sohes_hf.training.checkpointing import CheckpointError
    from sohes_hf.training.config import SelfCorrectionConfig
    from sohes_hf.training.datasets import TrainingDataError

    try:
        config = load_training_config(args.config, args.phase, args.override)
    except FileNotFoundError as error:
        raise CliError(f"--config: {error}") from error
    except ValueError as error:
        raise CliError(f"--config/--override: {error}") from error
    check_writable_folder(config.output_dir, "output_dir (recipe or -o output_dir=DIR)")
    try:
        if isinstance(config, SelfCorrectionConfig):
            trainer: SelfInstructionTrainer = SelfCorrectionTrainer(config, cpu=args.cpu)
        else:
            trainer = SelfInstructionTrainer(config, cpu=args.cpu)
        result = trainer.train(resume_from=args.resume)
    except FileNotFoundError as error:
        raise CliError(str(error)) from error
    except CheckpointError as error:
        raise CliError(str(error)) from error
    except PseudoLabelError as error:  # found when the labels are loaded, before the first step
        raise CliError(f"train_annotations: {error}") from error
    except TrainingDataError as error:  # too many unreadable images (at load or mid-run)
        raise CliError(str(error)) from error
    if trainer.accelerator.is_main_process:
        print(result.model_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m sohes_hf.cli.train``, ``accelerate launch -m ...``)."""
    from sohes_hf.cli.main import CliError
    from sohes_hf.logging_utils import configure_logging

    parser = argparse.ArgumentParser(
        prog="sohes train", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return run(args)
    except CliError as error:
        parser.error(str(error))
    return 2


if __name__ == "__main__":
    sys.exit(main())
