"""The ``sohes`` entry point: help, version, exit codes, and the logging switch."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from sohes_hf import __version__
from sohes_hf.cli import main as cli
from sohes_hf.logging_utils import configure_logging, resolve_log_level


def test_version_and_help_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as version_exit:
        cli.main(["--version"])
    assert version_exit.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["--help"])
    assert help_exit.value.code == 0
    help_text = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in help_text


def test_no_command_and_unknown_command_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as unknown:
        cli.main(["no-such-command"])
    assert unknown.value.code == 2
    assert "no-such-command" in capsys.readouterr().err


def test_subcommand_is_imported_only_when_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subcommand's CliError becomes a usage error naming the argument, with exit code 2."""
    module = type(sys)("fake_subcommand")

    def run(args: object) -> int:
        raise cli.CliError("--size: must be positive; accepted values: integers >= 1")

    def register(subparsers: object) -> None:
        parser = subparsers.add_parser("fake")  # type: ignore[attr-defined]
        parser.set_defaults(func=run)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_subcommand", module)
    monkeypatch.setattr(
        cli, "SUBCOMMANDS", {"fake": ("fake_subcommand", "a fake"), "other": ("missing.module", "x")}
    )
    with pytest.raises(SystemExit) as error:
        cli.main(["fake"])
    assert error.value.code == 2
    assert "--size: must be positive" in capsys.readouterr().err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sohes_hf.cli.main", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_log_level_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOHES_LOG_LEVEL", "debug")
    assert resolve_log_level() == logging.DEBUG
    assert resolve_log_level("warning") == logging.WARNING
    monkeypatch.setenv("SOHES_LOG_LEVEL", "chatty")
    with pytest.raises(ValueError, match="SOHES_LOG_LEVEL"):
        resolve_log_level()
    configure_logging("ERROR")
    assert logging.getLogger("sohes_hf").level == logging.ERROR
    configure_logging("ERROR")
    handlers = [h for h in logging.getLogger("sohes_hf").handlers if isinstance(h, logging.StreamHandler)]
    assert len(handlers) == 1


def test_log_records_follow_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    logging.getLogger("sohes_hf.test").info("hello from the library")
    assert "hello from the library" in capsys.readouterr().err


def test_device_check_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from sohes_hf.cli.arguments import check_device

    check_device(None)
    check_device("cpu")
    with pytest.raises(cli.CliError, match=r"--device: unknown device 'gpu'; accepted values: cpu, cuda"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(cli.CliError, match="cuda:1 requested but CUDA is not available"):
        check_device("cuda:1")
