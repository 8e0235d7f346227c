"""Checks shared by several subcommands; each raises ``CliError`` naming the flag."""

from __future__ import annotations

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
