"""A restricted unpickler for feature pickles: numpy arrays and plain containers, nothing else.

A pickle can name any importable callable and have the unpickler call it (``os.system`` is the
classic payload). MMSA feature files only need numpy's array/dtype/scalar reconstructors and
builtin containers, so :class:`SafeUnpickler` resolves exactly those names and refuses every other
global *before* it is imported or called: a refused file runs none of its code.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["SafeUnpickler", "UnsafePickleError", "safe_load_pickle", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list; nothing from it was executed."""


def _numpy_core(module: str, name: str) -> Any:
    """Resolve a numpy internal that moved from ``numpy.core`` (1.x) to ``numpy._core`` (2.x)."""
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


# (module, name) -> object. Both numpy 1.x and 2.x spellings are admitted; the object is taken
# from the installed numpy, never imported by the name the file gives.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,  # protocol-2 numpy pickles store bytes via it
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}
for _prefix in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_prefix}.multiarray", "_reconstruct")] = _numpy_core("multiarray", "_reconstruct")
    _ALLOWED[(f"{_prefix}.multiarray", "scalar")] = _numpy_core("multiarray", "scalar")
    _ALLOWED[(f"{_prefix}.numeric", "_frombuffer")] = _numpy_core("numeric", "_frombuffer")
for _builtins in ("builtins", "__builtin__"):
    for _name in ("set", "frozenset", "complex", "bytearray", "list", "dict", "tuple", "str", "int",
                  "float", "bool", "bytes"):
        _ALLOWED[(_builtins, _name)] = __import__("builtins").__dict__[_name]


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only numpy arrays and builtin containers."""

    def __init__(self, file, *, source: str = "<bytes>") -> None:
        # latin1 lets numpy arrays pickled under Python 2 load (numpy's documented recommendation).
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to unpickle a reference to {module}.{name}; feature pickles may "
                f"contain only numpy arrays, numpy scalars/dtypes and plain lists, dicts, str and numbers. "
                f"Nothing from the file was executed. If you trust this file, convert it to plain numpy "
                f"arrays first."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in feature pickles")


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`."""
    return SafeUnpickler(io.BytesIO(data), source=source).load()


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle file with :class:`SafeUnpickler`; errors name the file."""
    source = os.fspath(path)
    with open(source, "rb") as handle:
        try:
            return SafeUnpickler(handle, source=source).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
