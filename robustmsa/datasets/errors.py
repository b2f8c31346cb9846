"""The errors the data layer raises for a malformed, unsafe or oversized input file.

Every one is a :class:`DataFormatError`, itself a ``ValueError``, and its message names the file::

    DataFormatError(ValueError)                  a data file is not what it should be
    ├── DataValidationError                      the structure is wrong: file, split, key, expected, found
    └── UnreadablePickleError(+UnpicklingError)  not a well-formed pickle: truncated, bad opcode, broken memo
        ├── PickleLimitError                     well formed, but asks for more memory or nesting than its
        │                                        size justifies (a huge declared shape, billion-laughs sharing)
        └── UnsafePickleError                    references a global outside the allow-list, or uses an
                                                 allowed one in a way numpy never does; nothing was executed

``UnreadablePickleError`` and its subclasses are also ``pickle.UnpicklingError``, so code that caught the
standard error keeps working. :func:`short_repr` describes a value from an untrusted file in a bounded
number of characters (an error message must never grow with, or fail on, what the file holds).
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = [
    "DataFormatError",
    "DataValidationError",
    "PickleLimitError",
    "UnreadablePickleError",
    "UnsafePickleError",
    "short_repr",
]


class DataFormatError(ValueError):
    """A data file is malformed, unsafe or beyond the reader's limits; the message names the file."""

    source: str | None = None


class DataValidationError(DataFormatError):
    """A dataset file does not have the expected structure; the message says where and how.

    Attributes ``source``, ``split``, ``key``, ``expected`` and ``found`` hold the parts of the message.
    """

    def __init__(self, source: str, split: str | None, key: str | None, expected: str, found: str) -> None:
        where = source
        if split is not None:
            where += f", split {split!r}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: expected {expected}, found {found}")
        self.source, self.split, self.key, self.expected, self.found = source, split, key, expected, found

    def __reduce__(self):  # picklable across processes (launchers), attributes included
        return (type(self), (self.source, self.split, self.key, self.expected, self.found), self.__dict__)


class UnreadablePickleError(DataFormatError, pickle.UnpicklingError):
    """The file is not a well-formed pickle (truncated, unknown opcode, broken memo or stack, ...)."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class PickleLimitError(UnreadablePickleError):
    """The pickle would need more memory or deeper nesting than its size justifies; refused before that."""


class UnsafePickleError(UnreadablePickleError):
    """The pickle references a global outside the allow-list (or misuses an allowed one); nothing ran."""


def short_repr(value: Any, limit: int = 60) -> str:
    """A description of ``value`` of at most about ``limit`` characters that cannot fail.

    Huge ints (whose ``repr`` raises past 4300 digits), long strings, containers and arrays are summarised
    by type and size instead of being printed.
    """
    try:
        if isinstance(value, bool) or value is None:
            return repr(value)
        if isinstance(value, int):
            if value.bit_length() > 64:
                return f"an int of {value.bit_length()} bits"
            return repr(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, (str, bytes, bytearray)):
            text = repr(value[:limit])
            return text if len(value) <= limit else f"{text}... ({len(value)} long)"
        shape = getattr(value, "shape", None)
        if isinstance(shape, tuple):
            return f"{type(value).__name__} of shape {shape}"
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            return f"{type(value).__name__} of length {len(value)}"
        return type(value).__name__
    except Exception:  # noqa: BLE001 - a description must never raise
        return type(value).__name__
