"""A small generic registry: names to objects, with suggestions for typos and no silent overwrites.

One instance per kind (corruptions, datasets, later methods). Registering a taken name raises, so
two modules cannot quietly shadow each other.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "close_matches", "unknown_name_message"]

T = TypeVar("T")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def close_matches(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` that look like ``name`` (case-insensitive: ``ALMT`` suggests ``almt``)."""
    names = list(names)
    by_lower: dict[str, str] = {}
    for candidate in names:
        by_lower.setdefault(candidate.lower(), candidate)
    return [by_lower[m] for m in difflib.get_close_matches(str(name).lower(), list(by_lower), n=n)]


def unknown_name_message(kind: str, name: str, names: Iterable[str], *, lead: str | None = None) -> str:
    """``unknown KIND 'NAME'. Did you mean: A, B? Available: ...`` (one line).

    ``lead`` replaces the first sentence (e.g. "'x' is neither an existing file nor a registered dataset.").
    """
    names = list(names)
    close = close_matches(name, names)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    first = lead if lead is not None else f"unknown {kind} {name!r}."
    return f"{first}{hint} Available: {', '.join(names) or 'none'}"


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a taken name is an error."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists close matches and all names."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, *, lead: str | None = None) -> str:
        """``unknown KIND 'NAME'. Did you mean: ...? Available: ...`` (``lead`` replaces the first part)."""
        return unknown_name_message(self.kind, name, self.names(), lead=lead)

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in natural order, optionally filtered by an fnmatch ``pattern``."""
        names = sorted(self._items, key=_natural_key)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
