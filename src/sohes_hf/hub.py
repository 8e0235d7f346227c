"""Telling "the Hugging Face Hub could not be reached" apart from other loading failures.

Without network (or with ``HF_HUB_OFFLINE=1``) and no cached copy, ``from_pretrained`` ends in a
long transformers ``OSError``; the command line turns :class:`HubUnreachableError` into one line
that names the two ways forward. Any other error is re-raised unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class HubUnreachableError(OSError):
    """``name`` is not a local folder, is not cached, and the Hub could not be reached.

    Attributes:
        name: the Hub id that could not be downloaded.
        reason: why ("offline mode is enabled", "no network and no cached copy", ...).
        flag: the command-line flag that takes a local folder instead (named in the CLI's message).
    """

    def __init__(self, name: str, reason: str, flag: str = "--backbone") -> None:
        super().__init__(f"could not reach the Hugging Face Hub to download {name} ({reason})")
        self.name = name
        self.reason = reason
        self.flag = flag


def _unreachable_reason(error: BaseException) -> str | None:
    """A short reason when ``error`` (or an exception it was raised from) means "no Hub access"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OfflineModeIsEnabled):
            return "offline mode is enabled"
        if isinstance(current, LocalEntryNotFoundError):
            return "no network and no cached copy"
        name = type(current).__name__
        if name in {"ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout"}:
            return f"{name}: no network"
        current = current.__cause__ or current.__context__
    return None


def load_from_hub_or_folder(loader: Callable[..., T], name: str, *args: Any, **kwargs: Any) -> T:
    """``loader(name, *args, **kwargs)``, raising :class:`HubUnreachableError` when offline.

    Raises:
        HubUnreachableError: the load failed because the Hub could not be reached.
    """
    try:
        return loader(name, *args, **kwargs)
    except OSError as error:
        raise_if_hub_unreachable(error, name)
        raise


def raise_if_hub_unreachable(error: BaseException, name: str, flag: str = "--backbone") -> None:
    """Raises :class:`HubUnreachableError` (from ``error``) when ``error`` means "no Hub access".

    For callers that catch a loading error themselves (``pipeline(...)`` raises ``OSError`` or
    ``ValueError``); ``flag`` is the command-line flag that takes a local folder instead.
    """
    if isinstance(error, HubUnreachableError):
        raise HubUnreachableError(error.name, error.reason, flag) from error
    reason = _unreachable_reason(error)
    if reason is not None:
        raise HubUnreachableError(name, reason, flag) from error
