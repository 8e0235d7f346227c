"""JSON parsing that refuses numbers beyond the float range instead of turning them into inf.

Python's ``json`` reads ``1e400`` as ``inf``; an ``image_id`` or a size of ``1e400`` then fails
far from the file as ``OverflowError: cannot convert float infinity to integer``. Labels,
predictions and ground truth are parsed here so such a file is refused with its name and line.
``NaN``/``Infinity`` literals are left to the callers, whose field checks name the record.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class _OutOfRange(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _OutOfRange(literal)
    return value


def loads_finite(text: str, name: str) -> Any:
    """Parses ``text`` (the content of the file called ``name``) as JSON.

    Raises:
        ValueError: not valid JSON, or a number overflows a float (``1e400``); the message names
            ``name`` and the line.
    """
    try:
        return json.loads(text, parse_float=_finite_float)
    except _OutOfRange as error:
        match = re.search(rf"(?<![\w.]){re.escape(error.literal)}(?![\w.])", text)
        line = text.count("\n", 0, match.start()) + 1 if match else "?"
        raise ValueError(
            f"{name}: line {line}: number {error.literal} is beyond the float range; ids, sizes, "
            "scores and coordinates must be finite numbers: fix the file"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error})") from error
