"""Entry point of the ``sohes`` command.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser
whose ``func`` default takes the parsed namespace and returns an exit code. A subcommand module
is imported only when the command line names it, so ``sohes --help`` does not pay for torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from sohes_hf import __version__
from sohes_hf.hub import HubUnreachableError
from sohes_hf.logging_utils import configure_logging, get_logger

logger = get_logger(__name__)

# Subcommand name -> (module exposing ``register``, one-line help), in the order of the phases.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "explore": (
        "sohes_hf.cli.explore",
        "self-exploration: hierarchical pseudo-labels from raw images (phase 1)",
    ),
    "convert": (
        "sohes_hf.cli.convert",
        "convert an original DINO .pth checkpoint to a transformers ViTModel directory",
    ),
    "train": (
        "sohes_hf.cli.train",
        "train the model: self-instruction (phase 2) or self-correction (phase 3)",
    ),
    "data": ("sohes_hf.cli.data", "prepare evaluation splits and pseudo-label stores"),
    "evaluate": (
        "sohes_hf.cli.evaluate",
        "class-agnostic mask AP/AR (up to 1,000 detections) of predictions or a model",
    ),
    "segment": (
        "sohes_hf.cli.segment",
        "segment images into a hierarchy of entities; write JSON and pictures",
    ),
    "show": (
        "sohes_hf.cli.show",
        "draw the masks of a pseudo-label, prediction or ground-truth COCO file as pictures",
    ),
}


class CliError(Exception):
    """A user error on the command line; its message names the argument at fault."""


class CliFailure(Exception):
    """The command ran but could not do its job (e.g. nothing could be labelled).

    Printed as one ``sohes: error: ...`` line saying what to check, without the usage; exit 1.
    """


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EROFS, errno.EACCES, errno.EPERM}


def _storage_error_line(error: OSError) -> str | None:
    """One line for a full or write-protected disk met while writing results, else None.

    Atomic writes and the journal leave finished work intact on such errors, so the line says
    that re-running resumes; anything else is a bug and keeps its traceback.
    """
    where = error.filename or "output"
    if error.errno in _FULL:
        return (
            f"sohes: error: {where}: {error.strerror} while writing; free disk space (or raise the "
            "quota / file-size limit) and re-run the command: finished work is kept"
        )
    if error.errno in _DENIED:
        return (
            f"sohes: error: {where}: {error.strerror}; check its permissions (outputs need a writable folder)"
        )
    return None


def build_parser(arguments: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Builds the parser, importing only the subcommand module that ``arguments`` name."""
    parser = argparse.ArgumentParser(
        prog="sohes",
        description="SOHES: self-supervised open-world hierarchical entity segmentation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sohes-hf {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in arguments if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == wanted:
            importlib.import_module(module_name).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``sohes`` command; returns the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args, unknown = parser.parse_known_args(arguments)
    # A bad flag is reported with the usage of the subcommand it was given to, not the top level's.
    command_parser = _subcommand_parser(parser, arguments)
    if unknown:
        _usage_error(command_parser, f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging("DEBUG" if args.verbose else "WARNING" if args.quiet else None)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CliError as error:
        _usage_error(command_parser, str(error))
    except CliFailure as error:
        print(f"sohes: error: {error}", file=sys.stderr)
        return 1
    except HubUnreachableError as error:
        print(
            f'sohes: error: {error}; pass {error.flag} DIR with a local copy (see README "Network '
            f'and offline use"), or run once with network / `hf download {error.name} --local-dir DIR`',
            file=sys.stderr,
        )
        return 2
    except OSError as error:
        if error.filename is None and getattr(args, "output", None) is not None:
            error.filename = f"--output {args.output}"  # a write to an open file names no path
        line = _storage_error_line(error)
        if line is None:
            raise
        logger.debug("storage error", exc_info=True)  # the traceback with -v
        print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logger.warning("interrupted; finished work is saved and re-running the command resumes")
        return 130
    return 1


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Prints ``parser``'s usage and one ``sohes: error:`` line; exits with status 2."""
    parser.print_usage(sys.stderr)
    parser.exit(2, f"sohes: error: {message}\n")


def _subcommand_parser(parser: argparse.ArgumentParser, arguments: Sequence[str]) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``arguments`` name (``sohes data check`` -> check's)."""
    current = parser
    for token in arguments:
        actions = current._subparsers._group_actions if current._subparsers else []
        choices = next((a.choices for a in actions if isinstance(a, argparse._SubParsersAction)), None)
        if choices is None:
            break
        found = choices.get(token)
        if isinstance(found, argparse.ArgumentParser):
            current = found
    return current


if __name__ == "__main__":
    # Run as ``python -m sohes_hf.cli.main``, this file is ``__main__`` and its ``CliError`` is not
    # the class the subcommands raise; call the imported module's ``main`` so errors stay one line.
    from sohes_hf.cli.main import main as _imported_main

    sys.exit(_imported_main())
