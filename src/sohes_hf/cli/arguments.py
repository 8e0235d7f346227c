"""Checks and help layout shared by several subcommands; each check raises ``CliError`` naming the flag."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from sohes_hf.cli.main import CliError


def check_device(device: str | None, flag: str = "--device") -> None:
    """Accepts cpu, cuda, cuda:N and mps (None means "choose automatically").

    A CUDA device on a machine without CUDA is refused here rather than deep inside torch.
    """
    if device is None:
        return
    if not (device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise CliError(f"{flag}: unknown device {device!r}; accepted values: cpu, cuda, cuda:N, mps")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError(f"{flag}: {device} requested but CUDA is not available; use {flag} cpu")


class HelpFormatter(argparse.HelpFormatter):
    """Help that keeps the description's examples as written and shows every option's default.

    ``(default: X)`` is appended to options whose default is a value (not None, False or []), unless
    the help text already speaks of its default. Description paragraphs (separated by blank lines) are wrapped
    to the terminal, except paragraphs with indented lines (examples), which are kept as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines[1:]) or paragraph.startswith(" "):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == []
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def check_model_path(model: str, flag: str = "--model") -> None:
    """Refuses a ``model`` that is written as a path (``/x``, ``./x``, ``~/x``, ``a/b/c``) but does not exist.

    Such a name is not a Hub id either, and transformers would answer with a message about repo
    id syntax; say instead that the folder is missing.
    """
    from pathlib import Path

    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path and not Path(model).expanduser().exists():
        raise CliError(f"{flag}: no folder {model} (give a saved model folder, or a Hub id like org/name)")


def check_writable_folder(folder: str | os.PathLike[str], flag: str = "--output") -> None:
    """Creates ``folder`` if needed and writes a probe file in it; CliError naming ``flag`` if not.

    Called before a model is loaded, so a read-only or full output disk costs one line at once
    instead of tracebacks after minutes of work. The probe (64 bytes, fsync'ed) is removed.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path, prefix=".sohes-write-check.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(bytes(64))  # needs a block: a full disk refuses it
                stream.flush()
                os.fsync(stream.fileno())
        finally:
            os.unlink(name)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CliError(
            f"{flag}: cannot write to {path} ({reason}); choose a writable folder with free space"
        ) from error
