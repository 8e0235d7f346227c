"""Library logging: one named logger tree, silent unless the application configures it.

The library never prints. The CLI calls :func:`configure_logging`; applications may do the
same or configure the ``sohes_hf`` logger themselves. ``SOHES_LOG_LEVEL`` (e.g. ``DEBUG``)
sets the default level when :func:`configure_logging` gets none.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

ROOT_LOGGER_NAME = "sohes_hf"
LOG_LEVEL_ENV_VAR = "SOHES_LOG_LEVEL"
_VALID_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

logging.getLogger(ROOT_LOGGER_NAME).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """Returns the logger for a module: pass ``__name__``."""
    return logging.getLogger(name)


def resolve_log_level(level: str | None = None) -> int:
    """Turns a level name (or ``$SOHES_LOG_LEVEL``, default INFO) into a logging level.

    Raises:
        ValueError: the name is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG.
    """
    name = (level or os.environ.get(LOG_LEVEL_ENV_VAR) or "INFO").upper()
    if name not in _VALID_LEVELS:
        source = "log level" if level else LOG_LEVEL_ENV_VAR
        raise ValueError(f"{source}={name!r} is not one of {', '.join(_VALID_LEVELS)}")
    return int(getattr(logging, name))


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain StreamHandler keeps the stream of the moment it was created, which breaks once
    stderr is replaced (pytest's capture, notebooks redirecting output).
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str | None = None) -> None:
    """Sends ``sohes_hf`` records to stderr at ``level`` (applications and the CLI only)."""
    logger = logging.getLogger(ROOT_LOGGER_NAME)
    logger.setLevel(resolve_log_level(level))
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
