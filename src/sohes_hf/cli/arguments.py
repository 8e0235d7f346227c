"""Checks shared by several subcommands; each raises ``CliError`` naming the flag."""

from __future__ import annotations

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
