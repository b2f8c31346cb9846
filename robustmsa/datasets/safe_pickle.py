"""A restricted, resource-bounded unpickler for feature pickles: numpy arrays and plain containers, nothing else.

A pickle is a program for a small stack machine, and a hostile (or merely damaged) file can do more than name
``os.system``. :class:`SafeUnpickler` answers each way a file can hurt the reader:

- **Code execution.** ``find_class`` resolves only an allow-list (numpy's array, dtype and scalar
  reconstructors, ``_codecs.encode`` and builtin containers) and refuses every other global *before* it is
  imported or called. It never hands out the real callables: each allowed name is a stand-in that checks its
  arguments the way numpy's own pickles use them (no ``bytes(10**12)``, no codec but latin-1, no dtype with
  fields, subarrays or metadata, no ``ndarray`` subclass) and only then calls numpy or the builtin. Extension
  codes, persistent ids and ``BUILD`` on anything but a fresh array or dtype are refused.
- **Memory.** Every length the file declares is compared with the bytes left in the file before anything is
  allocated (the C unpickler allocates what a 13-byte file declares, 10 GB and more, and sizes its memo by the
  largest index a ``LONG_BINPUT`` names). Objects made while reading are charged against a budget of
  ``memory_factor`` times the file's size plus ``memory_floor``; an array's shape times its item size is
  charged before the array exists.
- **numpy internals.** An array's state is checked before ``ndarray.__setstate__`` sees it: the payload must
  hold exactly shape x itemsize bytes and an object array's list exactly one item per element (numpy reads
  past the end of a short list: a segfault). An object array may not hold an object array (freeing a deep
  chain of those overflows the C stack).
- **Nesting and sharing.** After loading, the object graph must be acyclic, at most :data:`MAX_DEPTH` deep,
  and its *expanded* size (a shared object counted once per reference, as ``repr`` or ``np.asarray`` would
  copy it) within the same budget: a few kilobytes of memo references cannot become a billion list items.

Every failure is a :class:`~robustmsa.datasets.errors.UnreadablePickleError` (or its subclasses
:class:`~robustmsa.datasets.errors.PickleLimitError` and :class:`~robustmsa.datasets.errors.UnsafePickleError`)
whose message names the file. The machine is the pure-Python ``pickle._Unpickler`` with its dispatch table
overridden, so that every opcode can be checked. A feature pickle's time goes into a few large payloads, read
about as fast as by the C unpickler (a 444 MB MOSI-shaped file: 0.30 s against 0.24 s); opcode-dense files
such as MAG word lists take about 5x its time (a 14 MB one: 0.15 s).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import struct
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .errors import DataFormatError, PickleLimitError, UnreadablePickleError, UnsafePickleError, short_repr

__all__ = [
    "EXPANSION_FLOOR",
    "MAX_DEPTH",
    "MEMORY_FACTOR",
    "MEMORY_FLOOR",
    "PickleLimitError",
    "SafeUnpickler",
    "UnreadablePickleError",
    "UnsafePickleError",
    "safe_load_pickle",
    "safe_loads",
]

MEMORY_FACTOR = 16  # objects made while reading may take this many times the file's size ...
MEMORY_FLOOR = 64 << 20  # ... plus this many bytes
EXPANSION_FLOOR = 64 << 10  # the expanded size (shared references counted each time) may take the factor + this
MAX_DEPTH = 32  # nesting of containers; MMSA needs 3, MAG/MIB 6
MAX_NDIM = 32  # numpy allows 64
_DIM_FLOOR = 1 << 20  # no array dimension may exceed max(file size, this), even in an empty array


def _numpy_core(module: str, name: str) -> Any:
    """Resolve a numpy internal that moved from ``numpy.core`` (1.x) to ``numpy._core`` (2.x)."""
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


_reconstruct = _numpy_core("multiarray", "_reconstruct")
_scalar = _numpy_core("multiarray", "scalar")
_frombuffer = _numpy_core("numeric", "_frombuffer")

_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"})
_TEXT_CODECS = _LATIN1 | {"utf-8", "utf8", "utf_8", "ascii"}
_TYPESTR = re.compile(r"[<>|=]?[A-Za-z?]\d{0,6}")
_DTYPE_KINDS = "biufcOUS"  # no void (fields), datetimes (metadata) or new-style string dtypes
_NUMBERS = (int, float, complex, np.number, np.bool_)


class _Allowed:
    """A stand-in for one allowed global: checks its arguments, then calls the real thing."""

    __slots__ = ("call", "name", "newobj")

    def __init__(self, name: str, call: Callable[..., Any], newobj: bool = False) -> None:
        self.name, self.call, self.newobj = name, call, newobj

    def __call__(self, *args: Any) -> Any:
        return self.call(*args)

    def __repr__(self) -> str:
        return f"<allowed global {self.name}>"


def _sized(file: Any, size: int | None) -> tuple[Any, int]:
    """``file`` and the number of bytes left in it (read into memory when that cannot be known)."""
    if size is not None:
        return file, int(size)
    try:
        return file, os.fstat(file.fileno()).st_size - file.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    if isinstance(file, io.BytesIO):
        with file.getbuffer() as view:
            return file, len(view) - file.tell()
    data = file.read()
    return io.BytesIO(data), len(data)


class _BoundedReader:
    """The file as the unpickler sees it: a read past the end is an error before anything is allocated."""

    def __init__(self, file: Any, size: int, source: str) -> None:
        self._file, self.remaining, self._source, self.offset = file, size, source, 0

    def _truncated(self, wanted: int) -> UnreadablePickleError:
        return UnreadablePickleError(
            f"{self._source}: not a readable pickle (truncated or corrupt: at byte {self.offset} it asks for "
            f"{wanted} more bytes, the file has {self.remaining} left)", source=self._source)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.remaining
        if n > self.remaining:
            raise self._truncated(n)
        data = self._file.read(n)
        if len(data) != n:  # the file shrank while being read
            raise self._truncated(n)
        self.remaining -= n
        self.offset += n
        return data

    def readline(self, limit: int = -1) -> bytes:
        line = self._file.readline(self.remaining) if self.remaining > 0 else b""
        if not line.endswith(b"\n"):  # a text opcode's argument runs into the end of the file
            raise self._truncated(self.remaining + 1)
        self.remaining -= len(line)
        self.offset += len(line)
        return line


def _valid_code_points(data: Any, dtype: np.dtype) -> bool:
    """Whether a str array's (or scalar's) payload holds only code points up to U+10FFFF.

    numpy turns a larger one into a corrupt Python str (iterating it raises SystemError).
    """
    if dtype.kind != "U" or not dtype.itemsize:
        return True
    points = np.frombuffer(data, dtype=dtype.byteorder.replace("|", "=") + "u4")
    return bool(points.size == 0 or points.max() <= 0x10FFFF)


def _int_dim(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


# Approximate bytes of memory each opcode can create besides payloads (charged separately): containers,
# stack slots, memo entries. Used to keep a file of one-byte opcodes (EMPTY_SET x 10^8) within the budget.
_COST = [16] * 256
for _op, _bytes in ((pickle.EMPTY_SET, 232), (pickle.FROZENSET, 232), (pickle.EMPTY_DICT, 72), (pickle.DICT, 72),
                    (pickle.EMPTY_LIST, 72), (pickle.LIST, 72), (pickle.MARK, 72), (pickle.TUPLE, 64),
                    (pickle.TUPLE1, 64), (pickle.TUPLE2, 72), (pickle.TUPLE3, 80), (pickle.MEMOIZE, 112),
                    (pickle.BINPUT, 112), (pickle.LONG_BINPUT, 112), (pickle.PUT, 112), (pickle.BININT, 48),
                    (pickle.BININT2, 48), (pickle.INT, 48), (pickle.BINFLOAT, 40), (pickle.FLOAT, 40),
                    (pickle.POP, 0), (pickle.STOP, 0), (pickle.PROTO, 0), (pickle.FRAME, 0)):
    _COST[_op[0]] = _bytes


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that admits only numpy arrays, numpy scalars/dtypes and builtin containers, within limits.

    Args:
        file: a binary file (``read`` and ``readline``) positioned at the pickle.
        source: how messages name the file.
        size: bytes left in ``file``; found with ``fstat`` (or read into memory) when not given.
        memory_factor, memory_floor: the memory budget while reading, ``memory_factor * size + memory_floor``.
        expansion_floor: the budget of the expanded size, ``memory_factor * size + expansion_floor``. It is
            small: without sharing the expanded size is about what was read, and sharing is what it limits.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, source: str = "<bytes>", size: int | None = None,
                 memory_factor: int = MEMORY_FACTOR, memory_floor: int = MEMORY_FLOOR,
                 expansion_floor: int = EXPANSION_FLOOR) -> None:
        file, size = _sized(file, size)
        self._source = source
        self._input = _BoundedReader(file, size, source)
        # latin1 lets numpy arrays pickled under Python 2 load (numpy's documented recommendation).
        super().__init__(self._input, encoding="latin1")
        self.size = size
        self.budget = memory_factor * size + memory_floor
        self.expansion_budget = memory_factor * size + expansion_floor
        self.used = 0
        self._factor, self._floor, self._expansion_floor = memory_factor, memory_floor, expansion_floor
        self._dim_cap = max(size, _DIM_FLOOR)
        self._pending_arrays: dict[int, np.ndarray] = {}  # made by _reconstruct, waiting for their BUILD
        self._fresh_dtypes: dict[int, np.dtype] = {}  # made by numpy.dtype, BUILD allowed before first use
        self._globals = self._make_globals()

    # ------------------------------------------------------------------------------------------ errors
    def _error(self, cls: type[UnreadablePickleError], message: str) -> UnreadablePickleError:
        return cls(f"{self._source}: {message}", source=self._source)

    def _unsafe(self, message: str) -> UnsafePickleError:
        return self._error(UnsafePickleError, message + "; nothing from the file was executed")  # type: ignore

    def _bad(self, message: str) -> UnreadablePickleError:
        return self._error(UnreadablePickleError, f"not a readable pickle ({message})")

    def _charge(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.budget:
            raise self._error(PickleLimitError, (
                f"{what} would take the memory used while reading past its limit of {self.budget} bytes "
                f"({self._factor} x the file's {self.size} bytes + {self._floor >> 20} MiB); refused before "
                f"allocating it"))

    # ------------------------------------------------------------------------------------------ driver
    def load(self) -> Any:
        """Read the pickle; any problem is an :class:`UnreadablePickleError` (or subclass) naming the file."""
        try:
            value = self._run()
            self._check_graph(value)
            return value
        except (DataFormatError, MemoryError):
            raise
        except Exception as exc:
            try:
                detail = str(exc)[:200]
            except Exception:  # noqa: BLE001
                detail = ""
            raise self._bad(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__) from exc
        finally:  # release what the machine holds now, not when the unpickler goes
            self.memo, self.stack, self.metastack = {}, [], []
            self._pending_arrays, self._fresh_dtypes = {}, {}

    def _run(self) -> Any:
        # pickle._Unpickler.load, with a memory charge per opcode and unknown opcodes named
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, table, cost = self.read, self._table, _COST
        try:
            while True:
                key = read(1)
                if not key:
                    raise self._bad("truncated: the data ends before the pickle's STOP opcode")
                code = key[0]
                self.used += cost[code]
                if self.used > self.budget:
                    self._charge(0, "the objects made so far")
                table[code](self)
        except pickle._Stop as stop:
            return stop.value

    def _bytes_left(self) -> int:
        frame = self._unframer.current_frame
        left = self._input.remaining
        if frame is not None:
            with frame.getbuffer() as view:
                left += len(view) - frame.tell()
        return left

    # ----------------------------------------------------------------------------------------- globals
    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise self._error(UnsafePickleError, (
                f"refused to unpickle a reference to {short_repr(module, 80)[1:-1]}.{short_repr(name, 80)[1:-1]}; "
                f"feature pickles may contain only numpy arrays, numpy scalars/dtypes and plain lists, dicts, str "
                f"and numbers. Nothing from the file was executed. If you trust this file, convert it to plain "
                f"numpy arrays first.")) from None

    def persistent_load(self, pid: Any) -> Any:
        raise self._unsafe("persistent ids are not allowed in feature pickles")

    def _make_globals(self) -> dict[tuple[str, str], _Allowed]:
        table: dict[tuple[str, str], _Allowed] = {}
        self._ndarray = _Allowed("numpy.ndarray", self._call_ndarray)
        table[("numpy", "ndarray")] = self._ndarray
        table[("numpy", "dtype")] = _Allowed("numpy.dtype", self._make_dtype)
        for prefix in ("numpy.core", "numpy._core"):
            table[(f"{prefix}.multiarray", "_reconstruct")] = _Allowed("numpy _reconstruct", self._reconstruct)
            table[(f"{prefix}.multiarray", "scalar")] = _Allowed("numpy scalar", self._scalar)
            table[(f"{prefix}.numeric", "_frombuffer")] = _Allowed("numpy _frombuffer", self._frombuffer)
        table[("_codecs", "encode")] = _Allowed("_codecs.encode", self._encode)
        table[("collections", "OrderedDict")] = _Allowed(
            "collections.OrderedDict", lambda *a: self._container(collections.OrderedDict, a), newobj=True)
        calls: dict[str, Callable[..., Any]] = {
            "set": lambda *a: self._container(set, a), "frozenset": lambda *a: self._container(frozenset, a),
            "list": lambda *a: self._container(list, a), "tuple": lambda *a: self._container(tuple, a),
            "dict": lambda *a: self._container(dict, a), "str": self._str, "int": self._int,
            "float": self._float, "bool": self._bool, "complex": self._complex,
            "bytes": lambda *a: self._bytes(bytes, a), "bytearray": lambda *a: self._bytes(bytearray, a),
        }
        for module in ("builtins", "__builtin__"):
            for name, call in calls.items():
                table[(module, name)] = _Allowed(name, call, newobj=True)
        return table

    # -------------------------------------------------------------------------------- numpy stand-ins
    def _shape(self, shape: Any, what: str) -> tuple[int, ...]:
        if _int_dim(shape) is not None:
            shape = (shape,)
        if type(shape) not in (tuple, list) or len(shape) > MAX_NDIM:
            raise self._bad(f"{what}: a shape must be a tuple of at most {MAX_NDIM} ints, found {short_repr(shape)}")
        dims = []
        for value in shape:
            dim = _int_dim(value)
            if dim is None or dim < 0:
                raise self._bad(f"{what}: shape {short_repr(shape)} holds {short_repr(value)}, not a size")
            if dim > self._dim_cap:
                raise self._error(PickleLimitError, (
                    f"{what}: shape declares a dimension of {short_repr(value)}, more than a file of {self.size} "
                    f"bytes can justify (at most {self._dim_cap}); refused before allocating"))
            dims.append(dim)
        return tuple(dims)

    def _dtype(self, value: Any, what: str, *, allow_object: bool) -> np.dtype:
        """A dtype given as a numpy dtype or a type code; simple kinds only."""
        if isinstance(value, np.dtype):
            dtype = value
            self._fresh_dtypes.pop(id(value), None)  # in use: no BUILD from now on
        else:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if not isinstance(text, str) or not _TYPESTR.fullmatch(text):
                raise self._unsafe(f"{what}: dtype {short_repr(value)} is not a simple numpy type code")
            try:
                dtype = np.dtype(text)
            except Exception as exc:  # noqa: BLE001 - numpy's parser on an arbitrary code
                raise self._bad(f"{what}: dtype {short_repr(text)}: {type(exc).__name__}") from None
        if (dtype.fields is not None or dtype.subdtype is not None or dtype.metadata is not None
                or dtype.kind not in _DTYPE_KINDS or (dtype.hasobject and dtype.kind != "O")):
            raise self._unsafe(f"{what}: dtype {dtype.str} (fields, subarrays, metadata, void or datetime "
                               f"dtypes are not allowed in feature pickles)")
        if dtype.kind == "O" and not allow_object:
            raise self._unsafe(f"{what}: an object dtype is not allowed here")
        return dtype

    def _make_dtype(self, obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
        base = self._dtype(obj, "numpy.dtype", allow_object=True)
        if not isinstance(align, (bool, int, np.bool_)) or not isinstance(copy, (bool, int, np.bool_)):
            raise self._bad(f"numpy.dtype: flags {short_repr(align)}, {short_repr(copy)}")
        self._charge(256, "a numpy dtype")
        dtype = np.dtype(base, align=bool(align), copy=True)  # always a copy: BUILD must not touch numpy's own
        self._fresh_dtypes[id(dtype)] = dtype
        return dtype

    def _build_dtype(self, dtype: np.dtype, state: Any) -> None:
        ints = (lambda v: type(v) is int)
        if type(state) is not tuple or len(state) not in (8, 9):
            raise self._bad(f"numpy dtype state {short_repr(state)}")
        version, endian, subarray, names, fields, elsize, alignment, flags = state[:8]
        metadata = state[8] if len(state) == 9 else None
        if not (ints(version) and version in (3, 4) and isinstance(endian, str) and endian in "<>|="
                and len(endian) == 1 and subarray is None and names is None and fields is None and metadata is None
                and ints(elsize) and elsize in (-1, dtype.itemsize) and ints(alignment)
                and alignment in (-1, dtype.alignment) and ints(flags) and flags == dtype.flags):
            raise self._unsafe(f"a numpy dtype state that changes more than the byte order of {dtype.str} "
                               f"(fields, subarrays, metadata, sizes and flags must stay as they are)")
        dtype.__setstate__(state)
        self._dtype(dtype, "numpy dtype state", allow_object=True)

    def _call_ndarray(self, *args: Any) -> Any:
        raise self._unsafe("numpy.ndarray(...) is called directly (numpy pickles arrays with _reconstruct or "
                           "_frombuffer)")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not self._ndarray:
            raise self._unsafe(f"_reconstruct of {short_repr(subtype)}; only numpy.ndarray is allowed")
        dims = self._shape(shape, "_reconstruct")
        dt = self._dtype(dtype, "_reconstruct", allow_object=False)
        self._charge(math.prod(dims) * dt.itemsize + 256, f"an array of shape {dims}")
        array = _reconstruct(np.ndarray, dims, dt)
        self._pending_arrays[id(array)] = array
        return array

    def _build_array(self, array: np.ndarray, state: Any) -> None:
        if type(state) is not tuple or len(state) not in (4, 5):
            raise self._bad(f"numpy array state {short_repr(state)}")
        version, (shape, dtype, fortran, raw) = (state[0], state[1:]) if len(state) == 5 else (1, state)
        if type(version) is not int or not isinstance(dtype, np.dtype):
            raise self._bad(f"numpy array state with version {short_repr(version)}, dtype {short_repr(dtype)}")
        if not isinstance(fortran, (bool, int, np.bool_)):
            raise self._bad(f"numpy array state with order flag {short_repr(fortran)}")
        dims = self._shape(shape, "numpy array state")
        dt = self._dtype(dtype, "numpy array state", allow_object=True)
        size = math.prod(dims)
        what = f"an array of shape {dims} and dtype {dt.str}"
        if dt.hasobject:
            if type(raw) is not list or len(raw) != size:
                raise self._bad(f"{what} whose state lists {short_repr(raw)}, not {size} items")
            for item in raw:
                if isinstance(item, np.ndarray) and (item.dtype.hasobject or id(item) in self._pending_arrays):
                    raise self._unsafe(f"{what} holding an object array or an unfinished array")
            self._charge(8 * size, what)
        else:
            if isinstance(raw, str):  # a Python 2 str payload, decoded as latin-1
                raw = raw.encode("latin-1")
            if not isinstance(raw, (bytes, bytearray)) or len(raw) != size * dt.itemsize:
                raise self._bad(f"{what} needs {size * dt.itemsize} bytes, its state holds {short_repr(raw)}")
            if not _valid_code_points(raw, dt):
                raise self._bad(f"{what} holds code points beyond U+10FFFF")
            self._charge(len(raw), what)
        array.__setstate__((version, dims, dt, bool(fortran), raw) if len(state) == 5 else (dims, dt, bool(fortran), raw))

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise self._bad(f"_frombuffer of {short_repr(buf)}")
        dims = self._shape(shape, "_frombuffer")
        dt = self._dtype(dtype, "_frombuffer", allow_object=False)
        nbytes = memoryview(buf).nbytes
        if order not in ("C", "F") or type(order) is not str or nbytes != math.prod(dims) * dt.itemsize:
            raise self._bad(f"_frombuffer of {nbytes} bytes as shape {dims}, dtype {dt.str}, order "
                            f"{short_repr(order)}")
        if not _valid_code_points(buf, dt):
            raise self._bad("_frombuffer of a str array holding code points beyond U+10FFFF")
        self._charge(128, "an array view")
        return _frombuffer(buf, dt, dims, order)

    def _scalar(self, dtype: Any, obj: Any = None) -> Any:
        if not isinstance(dtype, np.dtype):
            raise self._bad(f"numpy scalar of dtype {short_repr(dtype)}")
        dt = self._dtype(dtype, "numpy scalar", allow_object=False)
        if isinstance(obj, str):  # Python 2 payload
            obj = obj.encode("latin-1")
        if not isinstance(obj, bytes) or len(obj) != dt.itemsize or not _valid_code_points(obj, dt):
            raise self._bad(f"numpy scalar of dtype {dt.str} from {short_repr(obj)}")
        return _scalar(dt, obj)

    # ------------------------------------------------------------------------------ builtin stand-ins
    def _encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if (not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1
                or errors != "strict"):
            raise self._unsafe(f"_codecs.encode({short_repr(obj)}, {short_repr(encoding)}): only latin-1 text "
                               f"(how protocol-2 pickles store bytes) is allowed")
        self._charge(len(obj) + 33, "bytes")
        return obj.encode("latin-1")

    def _container(self, kind: type, args: tuple) -> Any:
        if not args:
            return kind()
        source = args[0]
        if len(args) != 1 or type(source) not in (list, tuple, set, frozenset, dict, collections.OrderedDict):
            raise self._unsafe(f"{kind.__name__}() of {', '.join(short_repr(a) for a in args[:3])}")
        self._charge(64 + (96 if kind in (dict, collections.OrderedDict, set, frozenset) else 8) * len(source),
                     f"a {kind.__name__} of {len(source)} items")
        return kind(source)

    def _str(self, *args: Any) -> str:
        if len(args) == 1 and (isinstance(args[0], (str, float, bool, type(None)))
                               or (isinstance(args[0], int) and args[0].bit_length() < 10_000)):
            return str(args[0])
        if (1 < len(args) <= 3 and isinstance(args[0], (bytes, bytearray)) and isinstance(args[1], str)
                and args[1].lower() in _TEXT_CODECS and all(isinstance(a, str) for a in args[2:])):
            self._charge(4 * len(args[0]) + 49, "a str")
            return str(*args)
        raise self._unsafe(f"str() of {', '.join(short_repr(a) for a in args[:3])}")

    def _int(self, *args: Any) -> int:
        if len(args) <= 2 and all(isinstance(a, (int, float, str, bytes, bool)) for a in args):
            return int(*args)
        raise self._unsafe(f"int() of {', '.join(short_repr(a) for a in args[:3])}")

    def _float(self, *args: Any) -> float:
        if len(args) <= 1 and all(isinstance(a, (int, float, str, bytes, bool)) for a in args):
            return float(*args)
        raise self._unsafe(f"float() of {', '.join(short_repr(a) for a in args[:3])}")

    def _bool(self, *args: Any) -> bool:
        if len(args) <= 1 and not any(isinstance(a, np.ndarray) for a in args):
            return bool(*args)
        raise self._unsafe(f"bool() of {', '.join(short_repr(a) for a in args[:3])}")

    def _complex(self, *args: Any) -> complex:
        if len(args) <= 2 and all(isinstance(a, (int, float, bool, np.number)) for a in args):
            return complex(*args)
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) < 1000:
            return complex(args[0])
        raise self._unsafe(f"complex() of {', '.join(short_repr(a) for a in args[:3])}")

    def _bytes(self, kind: type, args: tuple) -> Any:
        if not args:
            return kind()
        source = args[0]
        if len(args) == 1 and isinstance(source, (bytes, bytearray, memoryview, list, tuple)):
            self._charge(len(source) + 57, f"{kind.__name__} of {len(source)} bytes")
            return kind(source)
        if (1 < len(args) <= 3 and isinstance(source, str) and isinstance(args[1], str)
                and args[1].lower() in _TEXT_CODECS and all(isinstance(a, str) for a in args[2:])):
            self._charge(4 * len(source) + 57, f"{kind.__name__} of {len(source)} characters")
            return kind(*args)
        raise self._unsafe(f"{kind.__name__}() of {', '.join(short_repr(a) for a in args[:3])} (only a copy of "
                           f"bytes or latin-1/UTF-8 text; bytes(n) would allocate what the file does not hold)")

    # ------------------------------------------------------------------------------------ opcodes
    def _call(self, func: Any, args: Any, how: str) -> Any:
        if not isinstance(func, _Allowed):
            raise self._unsafe(f"{how} calls {short_repr(func)}, which is not an allowed global")
        if type(args) is not tuple:
            raise self._bad(f"{how} arguments are {short_repr(args)}, not a tuple")
        self._charge(64, "an object")
        return func(*args)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args, "REDUCE")

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self.append(self._call(klass, tuple(args), "INST/OBJ"))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, _Allowed) or not cls.newobj:
            raise self._unsafe(f"NEWOBJ of {short_repr(cls)}")
        self.append(self._call(cls, args, "NEWOBJ"))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if kwargs != {} or type(kwargs) is not dict:
            raise self._unsafe(f"NEWOBJ_EX with keyword arguments {short_repr(kwargs)}")
        self.load_newobj()

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        target = stack[-1]
        key = id(target)
        if type(target) is np.ndarray and key in self._pending_arrays:
            del self._pending_arrays[key]
            self._build_array(target, state)
        elif isinstance(target, np.dtype):
            if self._fresh_dtypes.pop(key, None) is None:
                raise self._unsafe("BUILD of a numpy dtype that is already in use")
            self._build_dtype(target, state)
        else:
            raise self._unsafe(f"BUILD (setting the state) of {short_repr(target)}; only a new numpy array or "
                               f"dtype takes a state")

    dispatch[pickle.BUILD[0]] = load_build

    def _refuse_extension(self) -> None:
        raise self._unsafe("extension-registry codes (EXT1/EXT2/EXT4) are not allowed in feature pickles")

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension

    def _target(self, kinds: tuple[type, ...], opcode: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise self._bad(f"{opcode} into {short_repr(target)}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._charge(64, "a dict item")
        self._target((dict, collections.OrderedDict), "SETITEM")[key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "SETITEMS")
        if len(items) % 2:
            raise self._bad("SETITEMS with an odd number of items")
        self._charge(64 * (len(items) // 2), "dict items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise self._bad("DICT with an odd number of items")
        self._charge(64 * (len(items) // 2), "dict items")
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    dispatch[pickle.DICT[0]] = load_dict

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self._charge(64 * len(items), "frozenset items")
        self.append(frozenset(items))

    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._charge(64 * len(items), "set items")
        self._target((set,), "ADDITEMS").update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._bytes_left():
            raise self._bad(f"truncated or corrupt: BYTEARRAY8 declares {n} bytes, the file has "
                            f"{self._bytes_left()} left")
        self._charge(n + 57, f"a bytearray of {n} bytes")
        buffer = bytearray(n)
        self.readinto(buffer)
        self.append(buffer)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def _charging(opcode: bytes, original: Callable[[Any], None]) -> Callable[[Any], None]:
        def load(self: SafeUnpickler) -> None:
            original(self)
            self._charge(sys.getsizeof(self.stack[-1]), "a string")
        load.__name__ = original.__name__
        return load

    for _op in (pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8, pickle.UNICODE, pickle.BINSTRING,
                pickle.SHORT_BINSTRING, pickle.STRING, pickle.BINBYTES, pickle.SHORT_BINBYTES, pickle.BINBYTES8,
                pickle.LONG, pickle.LONG1, pickle.LONG4):
        dispatch[_op[0]] = _charging(_op, dispatch[_op[0]])
    del _op, _charging

    # ---------------------------------------------------------------------------- after loading
    def _check_graph(self, root: Any) -> None:
        """Refuse cycles, nesting deeper than MAX_DEPTH and an expanded size past the budget."""
        if _leaf_size(root) is not None:
            return
        budget = self.expansion_budget
        finished: dict[int, int] = {}
        path = {id(root)}
        frames: list[list[Any]] = [[root, _children(root), _own_size(root)]]
        while frames:
            frame = frames[-1]
            for child in frame[1]:
                size = _leaf_size(child)
                if size is None:
                    key = id(child)
                    size = finished.get(key)
                    if size is None:
                        if key in path:
                            raise self._bad("a container holds itself (a reference cycle)")
                        if len(frames) >= MAX_DEPTH:
                            raise self._error(PickleLimitError, f"containers nested more than {MAX_DEPTH} deep")
                        path.add(key)
                        frames.append([child, _children(child), _own_size(child)])
                        break
                frame[2] += size
                if frame[2] > budget:
                    self._expanded_too_big(frame[2])
            else:
                frames.pop()
                path.discard(id(frame[0]))
                finished[id(frame[0])] = frame[2]
                if frames:
                    frames[-1][2] += frame[2]
                    if frames[-1][2] > budget:
                        self._expanded_too_big(frames[-1][2])

    def _expanded_too_big(self, size: int) -> None:
        raise self._error(PickleLimitError, (
            f"shared references expand to more than {size} bytes (every reference counted, as a copy or repr "
            f"would), past the limit of {self.expansion_budget} ({self._factor} x the file's {self.size} bytes + "
            f"{self._expansion_floor >> 10} KiB)"))


SafeUnpickler._table = [SafeUnpickler.dispatch.get(code) or (lambda self, c=code: self._unknown(c))
                        for code in range(256)]


def _unknown(self: SafeUnpickler, code: int) -> None:
    raise self._bad(f"unknown opcode {bytes([code])!r} at byte {self._input.offset}")


SafeUnpickler._unknown = _unknown


def _leaf_size(obj: Any) -> int | None:
    """Expanded size of a non-container (a pointer plus its data), or None for a container."""
    kind = type(obj)
    if kind is str or kind is bytes or kind is bytearray:
        return 8 + len(obj)
    if kind is list or kind is tuple or kind is dict or kind is set or kind is frozenset \
            or kind is collections.OrderedDict:
        return None
    if kind is np.ndarray:
        return None if obj.dtype.hasobject else 8 + obj.nbytes
    if kind is memoryview:
        return 8 + obj.nbytes
    return 8


def _own_size(obj: Any) -> int:
    return 56 + 8 * (len(obj) if not isinstance(obj, np.ndarray) else obj.size)


def _children(obj: Any) -> Any:
    if isinstance(obj, dict):
        return (part for item in obj.items() for part in item)
    if isinstance(obj, np.ndarray):
        return iter(obj.flat)
    return iter(obj)


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`."""
    return SafeUnpickler(io.BytesIO(data), source=source, size=len(data)).load()


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle file with :class:`SafeUnpickler`; errors name the file."""
    source = os.fspath(path)
    with open(source, "rb") as handle:
        return SafeUnpickler(handle, source=source, size=os.fstat(handle.fileno()).st_size).load()

