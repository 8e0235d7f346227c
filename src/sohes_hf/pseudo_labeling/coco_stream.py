"""COCO JSON files written and read one image / annotation at a time, in bounded memory.

A self-exploration shard of SA-1B (paper section 4: 11M images, ~100 pseudo-labels each, ~1 KB
per RLE) is tens of GB of JSON, far more than a node's memory when held as Python objects. The
job (:mod:`.explore_job`) therefore never builds the COCO dict:

* :class:`CocoStreamWriter` writes ``{"info", "images", "categories", "annotations"}`` element by
  element. Images go straight to the output's temporary file; annotations go to a second,
  anonymous temporary file that is appended after the images when the writer closes (one pass
  over the input, no second parse). The bytes equal ``json.dumps(coco)`` of the same dict with
  the default separators (``", "`` and ``": "``, no indentation) plus a newline, which is what the
  job wrote when it assembled the dict in memory. The file is fsync'ed and moved onto the
  target with ``os.replace``; on an error the target is untouched.
* :func:`iter_coco_members` reads a COCO file (any JSON object) member by member, and the
  elements of array members one at a time, holding one read chunk and one element in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from sohes_hf.atomic_io import atomic_path

CATEGORIES: list[dict[str, Any]] = [{"id": 1, "name": "entity"}]
"""The single category of SOHES pseudo-labels (class-agnostic entities)."""

DEFAULT_CHUNK_CHARS = 1 << 14
"""Characters read per refill by :func:`iter_coco_members` (16 Ki)."""

MAX_ELEMENT_CHARS = 1 << 26
"""Largest single JSON value :func:`iter_coco_members` accepts (64 Mi characters): a bigger one
is a corrupt file (one annotation of a 1500 x 2250 SA-1B image is at most a few hundred KB)."""


def json_default(value: Any) -> Any:
    """``default=`` hook for ``json``: numpy integers and floats as Python numbers, nothing else."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


_ENCODER = json.JSONEncoder(allow_nan=False, default=json_default)  # built once: many small values
_SCALAR_END = re.compile(r"[,\]}\s]")
_COPY_CHARS = DEFAULT_CHUNK_CHARS  # characters per read when the annotations are appended to the images


def dumps(value: Any) -> str:
    """One JSON value as the COCO files write it: default separators, NaN refused, numpy scalars ok."""
    return _ENCODER.encode(value)


class CocoStreamWriter:
    """Writes one COCO file atomically, one image and one annotation at a time.

    Use as a context manager; add images and annotations in any interleaving (each kind keeps its
    own order). The file appears at ``path`` only when the block ends without an exception.

    Args:
        path: the output ``.json`` file.
        info: the ``info`` member (written first).
        categories: the ``categories`` member.

    Attributes:
        num_images, num_annotations: elements added so far.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: Mapping[str, Any],
        categories: Sequence[Mapping[str, Any]] = CATEGORIES,
    ) -> None:
        self.path = Path(path)
        self.info = info
        self.categories = categories
        self.num_images = 0
        self.num_annotations = 0
        self._stack: ExitStack | None = None
        self._out: IO[str] | None = None
        self._spill: IO[str] | None = None

    def __enter__(self) -> CocoStreamWriter:
        with ExitStack() as stack:
            temporary = stack.enter_context(atomic_path(self.path))
            self._out = stack.enter_context(open(temporary, "w", encoding="utf-8"))
            self._spill = stack.enter_context(
                tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)
            )
            self._out.write(f'{{"info": {dumps(self.info)}, "images": [')
            self._stack = stack.pop_all()  # kept open until __exit__
        return self

    def add_image(self, image: Mapping[str, Any]) -> None:
        """Appends one ``images`` element (``{"id", "file_name", "width", "height"}``)."""
        if self._out is None:
            raise RuntimeError("CocoStreamWriter: add_image called outside the `with` block")
        self._out.write((", " if self.num_images else "") + dumps(image))
        self.num_images += 1

    def add_annotation(self, annotation: Mapping[str, Any]) -> None:
        """Appends one ``annotations`` element."""
        if self._spill is None:
            raise RuntimeError("CocoStreamWriter: add_annotation called outside the `with` block")
        self._spill.write((", " if self.num_annotations else "") + dumps(annotation))
        self.num_annotations += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, out, spill = self._stack, self._out, self._spill
        self._stack = self._out = self._spill = None
        if stack is None or out is None or spill is None:
            return
        if exc_type is not None:
            stack.__exit__(exc_type, exc, traceback)  # closes the files, removes the temporary one
            return
        try:
            out.write(f'], "categories": {dumps(self.categories)}, "annotations": [')
            spill.flush()
            spill.seek(0)
            shutil.copyfileobj(spill, out, _COPY_CHARS)
            out.write("]}\n")
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):
                raise
        else:
            stack.close()  # closes the files, then moves the temporary file onto the target


def iter_coco_members(
    path: str | os.PathLike[str], chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> Iterator[tuple[str, Any]]:
    """Streams the members of a JSON object file: ``(name, element)`` per array element.

    A member whose value is an array yields one pair per element (none for ``[]``); any other
    member yields one pair with its whole value. Memory holds one chunk of ``chunk_chars``
    characters and the element being decoded, whatever the file size.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not one complete JSON object (truncated, corrupt, or a value
            longer than :data:`MAX_ELEMENT_CHARS`); the message names the file.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars: must be positive, got {chunk_chars}")
    with open(file, encoding="utf-8") as stream:
        yield from _ObjectStream(stream, file, chunk_chars).members()


class _ObjectStream:
    """Incremental parser of ``{"name": value | [element, ...], ...}`` over ``json.raw_decode``."""

    def __init__(self, stream: IO[str], path: Path, chunk_chars: int) -> None:
        self.stream = stream
        self.path = path
        self.chunk_chars = chunk_chars
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.decoder = json.JSONDecoder()

    def members(self) -> Iterator[tuple[str, Any]]:
        self._expect("{")
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                name = self._value()
                if not isinstance(name, str):
                    raise self._error("expected a member name")
                self._expect(":")
                if self._peek() == "[":
                    self.pos += 1
                    if self._peek() == "]":
                        self.pos += 1
                    else:
                        while True:
                            yield name, self._value()
                            if self._next_of(",]") == "]":
                                break
                else:
                    yield name, self._value()
                if self._next_of(",}") == "}":
                    break
        if self._peek(required=False) is not None:
            raise self._error("data after the end of the JSON object")

    def _refill(self, at_least: int) -> bool:
        """Appends at least ``at_least`` characters (fewer at end of file); False at end of file."""
        if self.eof:
            return False
        self.buffer = self.buffer[self.pos :]
        self.pos = 0
        chunk = self.stream.read(max(at_least, self.chunk_chars))
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _peek(self, required: bool = True) -> str | None:
        """The next non-blank character (not consumed)."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._refill(self.chunk_chars):
                if required:
                    raise self._error("unexpected end of file")
                return None

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise self._error(f"expected {char!r}")
        self.pos += 1

    def _next_of(self, chars: str) -> str:
        char = self._peek()
        if char is None or char not in chars:
            raise self._error(f"expected one of {chars!r}")
        self.pos += 1
        return char

    def _value(self) -> Any:
        """Decodes the value at the cursor, reading more while it may be cut by the chunk end."""
        first = self._peek()
        if first is not None and first not in '{["':
            # A number or literal is complete only once a delimiter follows it ("1.5e" would
            # decode as 1.5, "12" as 12 when the file says 123): read up to one.
            while _SCALAR_END.search(self.buffer, self.pos) is None and self._grow():
                pass
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                if self._grow():
                    continue
                raise self._error(f"invalid JSON ({error.msg})") from error
            self.pos = end
            return value

    def _grow(self) -> bool:
        pending = len(self.buffer) - self.pos
        if pending > MAX_ELEMENT_CHARS:
            raise self._error(f"a value longer than {MAX_ELEMENT_CHARS} characters (corrupt file?)")
        return self._refill(max(pending, self.chunk_chars))

    def _error(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not a complete JSON object file: {what}")
