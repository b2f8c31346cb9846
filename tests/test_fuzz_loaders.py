"""Fuzzing the loaders: mutated MMSA and MAG pickles end in a clear robustmsa error or a valid load.

Twelve mutation families (truncation, bit flips, byte splicing, wrong types, wrong ranks, inconsistent lengths,
NaN/inf, huge declared shapes and lengths, deep nesting, globals, memo tricks, numpy dtype/state misuse) turn
a valid MMSA feature pickle or MAG/MIB word-aligned pickle into bytes; :func:`run_case` loads them as
``robustmsa data check`` and ``data convert --format mag`` would (validation, ``describe``, ``content_hash``)
under a watchdog and ``tracemalloc``. Every case must end in a valid load or a
:class:`~robustmsa.datasets.errors.DataFormatError` that names the file, within a time bound, with peak memory
within ``MEMORY_FACTOR x size + MEMORY_FLOOR``, and without running anything: payloads would create a marker
file, call :func:`sentinel` or import ``this``.

``bench/bench_fuzz.py`` runs the same families at scale; this file is its fast, deterministic subset
(hypothesis with ``derandomize=True``), plus explicit cases for each attack.
"""

from __future__ import annotations

import collections
import copyreg
import faulthandler
import io
import itertools
import os
import pickle
import pickletools
import random
import signal
import struct
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_raw_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustmsa.datasets.errors import (
    DataFormatError,
    DataValidationError,
    PickleLimitError,
    UnreadablePickleError,
    UnsafePickleError,
)
from robustmsa.datasets.inspect import describe
from robustmsa.datasets.io import read_mmsa_pickle
from robustmsa.datasets.mag import read_mag_pickle
from robustmsa.datasets.safe_pickle import MEMORY_FACTOR, MEMORY_FLOOR, SafeUnpickler, safe_loads
from robustmsa.datasets.split import content_hash

FORMATS = ("mmsa", "mag")
SOFT_SECONDS = 5.0  # per case: SIGALRM interrupts Python code past this ...
HARD_SECONDS = 60.0  # ... and faulthandler ends the process past this (a hang in C)
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"robustmsa-fuzz-marker-{os.getpid()}"
SENTINEL_CALLS: list[tuple] = []


def sentinel(*args: Any) -> str:
    """What a payload calls if the unpickler ever executes a global it names."""
    SENTINEL_CALLS.append(args)
    return "sentinel ran"


# ------------------------------------------------------------------------------------------- base files
def base_mmsa(rnd: random.Random, n: int = 4, big: bool = False) -> dict:
    """A valid MMSA pickle dict (tiny, or MOSI-like dims when ``big``), aligned or not."""
    dims = ({"lt": 12, "la": 30, "lv": 20, "dt": 16, "da": 5, "dv": 20} if big
            else {"lt": 6, "la": 7, "lv": 5, "dt": 3, "da": 2, "dv": 2})
    return make_raw_dataset(n=n, seed=rnd.randrange(1000), aligned=rnd.random() < 0.3, **dims)


WORDS = ["the", "movie", "was", "great", "not", "very", "good", "i", "hated", "it", "zork", "plot"]


def base_mag(rnd: random.Random, n: int = 2, big: bool = False) -> dict:
    """A valid MAG/MIB pickle dict: ``{train, dev, test}`` lists of ((words, visual, acoustic), label, segment)."""
    rng = np.random.default_rng(rnd.randrange(1000))
    dv, da = (47, 74) if big else (4, 3)

    def example(i: int) -> tuple:
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(1, 12 if big else 5))]
        visual, acoustic = rng.normal(size=(len(words), dv)), rng.normal(size=(len(words), da))
        value = round(rnd.uniform(-3, 3), 2)
        label = rnd.choice([value, np.array([[value]], dtype=np.float32), np.array([value]), np.float32(value)])
        return ((words, visual, acoustic), label, f"vid{i // 3}[{i % 3}]")

    dev = "valid" if rnd.random() < 0.2 else "dev"
    return {name: [example(i) for i in range(n + (name == "train"))] for name in ("train", dev, "test")}


BIG_BASES = False  # bench/bench_fuzz.py sets it: MOSI-like dimensions, files of about 200 kB


def base_of(fmt: str, rnd: random.Random, big: bool | None = None) -> dict:
    big = BIG_BASES if big is None else big
    return base_mmsa(rnd, n=12 if big else 4, big=big) if fmt == "mmsa" else base_mag(rnd, n=10 if big else 2,
                                                                                        big=big)


def dumps(obj: Any, rnd: random.Random) -> bytes:
    return pickle.dumps(obj, protocol=rnd.choice([2, 3, 4, 5]))


# ----------------------------------------------------------------------------- opcode-level snippets
# Each builds bytes for the pickle machine; ``embed`` puts a snippet that pushes one object in place of a
# value of a real pickle, so the rest of the file stays valid.
def op_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2 ** 31) <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw)) + raw


def op_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


_MEMO_BASES = itertools.cycle(range(1_000_000, 4_000_000_000, 100_000))


def inner(obj: Any, protocol: int = 2) -> bytes:
    """The opcodes of ``pickle.dumps(obj)`` that push ``obj``, its memo indices moved far from any host's."""
    data = pickle.dumps(obj, protocol=protocol)
    base = next(_MEMO_BASES)
    ops = list(pickletools.genops(data))
    out, stored = [], 0
    for (op, arg, pos), (_, _, end) in zip(ops, [*ops[1:], (None, None, len(data))]):
        if op.name in ("PROTO", "FRAME", "STOP"):
            continue
        if op.name == "MEMOIZE":
            out.append(b"r" + struct.pack("<I", base + stored))
            stored += 1
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            out.append(b"r" + struct.pack("<I", base + arg))
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            out.append(b"j" + struct.pack("<I", base + arg))
        else:
            out.append(data[pos:end])
    return b"".join(out)


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_call(func: bytes, *args: bytes) -> bytes:
    return func + op_tuple(*args) + b"R"


def op_dtype(code: str = "<f8", state: tuple | None = None, copy: bool = True) -> bytes:
    """numpy's own dtype pickle: dtype(code, False, copy) then BUILD with ``state`` (numpy's when None)."""
    dtype = np.dtype(code)
    call = op_global("numpy", "dtype") + b"(" + op_str(dtype.__reduce__()[1][0]) + b"\x89" + (
        b"\x88" if copy else b"\x89") + b"tR"
    state = dtype.__reduce__()[2] if state is None else state
    return call + inner(state) + b"b"


def op_array(shape: Any, dtype: bytes | None = None, raw: bytes | None = None, items: bytes | None = None,
             core: str = "numpy._core") -> bytes:
    """numpy's own array pickle (_reconstruct, then BUILD (1, shape, dtype, False, raw)), any part a lie."""
    dtype = op_dtype() if dtype is None else dtype
    shape_op = inner(shape)
    payload = items if items is not None else op_bytes(raw if raw is not None else b"")
    return (op_call(op_global(f"{core}.multiarray", "_reconstruct"), op_global("numpy", "ndarray"),
                    op_tuple(op_int(0)), op_bytes(b"b"))
            + op_tuple(op_int(1), shape_op, dtype, b"\x89", payload) + b"b")


def op_list_of(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


PLACEHOLDER = "\x00robustmsa-fuzz-placeholder\x00"


def unframed(data: bytes) -> bytes:
    """``data`` without FRAME opcodes (optional in a pickle), so bytes can be replaced inside it."""
    out, last = [], 0
    for op, _, pos in pickletools.genops(data):
        if op.name == "FRAME":
            out.append(data[last:pos])
            last = pos + 9
    out.append(data[last:])
    return b"".join(out)


def embed(obj: Any, snippet: bytes, rnd: random.Random) -> bytes:
    """Pickle ``obj`` (which holds PLACEHOLDER once) and put ``snippet`` where the placeholder string was.

    Protocols 2 and 3 number memo entries explicitly, so a snippet's own entries (far from the host's) leave the
    host's references intact; protocol 4's MEMOIZE numbers them by count.
    """
    data = pickle.dumps(obj, protocol=rnd.choice([2, 3]))
    ops = list(pickletools.genops(data))
    for (op, arg, pos), (_, _, end) in itertools.pairwise(ops):
        if arg == PLACEHOLDER and "UNICODE" in op.name:
            return data[:pos] + snippet + data[end:]
    raise AssertionError("placeholder not found")


# ------------------------------------------------------------------------------ object-level slots
def _well_formed(example: Any) -> bool:
    return (isinstance(example, tuple) and len(example) == 3 and isinstance(example[0], tuple)
            and len(example[0]) == 3 and isinstance(example[0][0], list) and len(example[0][0]) > 0)


def slots(fmt: str, raw: dict) -> list[tuple]:
    """Places a value can be put: (split, key) for MMSA; (split, index, part) for MAG."""
    if fmt == "mmsa":
        return [(split, key) for split in raw if isinstance(raw[split], dict) for key in raw[split]]
    parts = ("words", "visual", "acoustic", "label", "segment", "features", "example", "word")
    return [(split, i, part) for split in raw if isinstance(raw[split], list) for i in range(len(raw[split]))
            if _well_formed(raw[split][i]) for part in parts]


def get_slot(raw: dict, slot: tuple) -> Any:
    if len(slot) == 2:
        return raw[slot[0]][slot[1]]
    split, i, part = slot
    (words, visual, acoustic), label, segment = raw[split][i]
    return {"words": words, "visual": visual, "acoustic": acoustic, "label": label, "segment": segment,
            "features": (words, visual, acoustic), "example": raw[split][i], "word": words[0]}[part]


def set_slot(raw: dict, slot: tuple, value: Any) -> None:
    if len(slot) == 2:
        raw[slot[0]][slot[1]] = value
        return
    split, i, part = slot
    (words, visual, acoustic), label, segment = raw[split][i]
    if part == "word":
        words = [value, *words[1:]]
    features = {"words": (value, visual, acoustic), "visual": (words, value, acoustic),
                "acoustic": (words, visual, value), "features": value}.get(part, (words, visual, acoustic))
    example = (features, value if part == "label" else label, value if part == "segment" else segment)
    raw[split][i] = value if part == "example" else example


def pick(rnd: random.Random, fmt: str, raw: dict, parts: tuple[str, ...] | None = None) -> tuple:
    choices = [s for s in slots(fmt, raw) if parts is None or s[-1] in parts]
    return rnd.choice(choices)


def replace_with_snippet(rnd: random.Random, fmt: str, snippet: bytes, raw: dict | None = None) -> bytes:
    """A valid base file with ``snippet`` in place of one of its values (or of the whole file)."""
    raw = base_of(fmt, rnd) if raw is None else raw
    if rnd.random() < 0.1:
        return b"\x80\x04" + snippet + b"."
    set_slot(raw, pick(rnd, fmt, raw), PLACEHOLDER)
    return embed(raw, snippet, rnd)


# ---------------------------------------------------------------------------------------- families
def fam_truncate(rnd: random.Random, fmt: str) -> bytes:
    data = dumps(base_of(fmt, rnd), rnd)
    return data[:rnd.randrange(len(data))]


def fam_bitflip(rnd: random.Random, fmt: str) -> bytes:
    data = bytearray(dumps(base_of(fmt, rnd), rnd))
    for _ in range(rnd.choice([1, 1, 2, 3, 8])):
        data[rnd.randrange(len(data))] ^= rnd.choice([1 << rnd.randrange(8), rnd.randrange(1, 256)])
    return bytes(data)


INTERESTING = [b"N", b"(", b")", b"t", b"e", b"s", b"u", b"a", b"b", b"R", b"0", b"1", b"2", b".", b"\x94",
               b"\x85", b"\x86", b"\x87", b"]", b"}", b"\x8f", b"\x90", b"\x91", b"\x81", b"\x92", b"\x93",
               b"h\x00", b"h\xff", b"j\xff\xff\xff\x7f", b"q\x00", b"r\xff\xff\xff\xff", b"K\xff", b"M\xff\xff",
               b"J\xff\xff\xff\xff", b"\x8a\x08" + b"\xff" * 8, b"\x88", b"\x89", b"\x95" + b"\xff" * 8, b"\x96",
               b"\x97", b"\x98", b"\x82\x01", b"P1\n", b"Q", b"i__builtin__\nlist\n", b"cnumpy\ndtype\n",
               b"\xff", b"\x00", b"\x80\x05"]


def fam_splice(rnd: random.Random, fmt: str) -> bytes:
    data = bytearray(dumps(base_of(fmt, rnd), rnd))
    for _ in range(rnd.randint(1, 3)):
        a = rnd.randrange(len(data))
        b = min(len(data), a + rnd.choice([1, 2, 4, 8, 64, 1024]))
        kind = rnd.randrange(5)
        if kind == 0:
            del data[a:b]
        elif kind == 1:
            data[a:a] = data[a:b]
        elif kind == 2:
            data[a:a] = rnd.choice(INTERESTING)
        elif kind == 3:
            data[a:b] = bytes(rnd.randrange(256) for _ in range(b - a))
        else:
            data[a:a] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    return bytes(data)


def weird_values(rnd: random.Random) -> list[Callable[[], Any]]:
    return [
        lambda: None, lambda: True, lambda: 0, lambda: -1, lambda: 2 ** 70, lambda: -(10 ** 5000), lambda: 1.5,
        lambda: float("nan"), lambda: float("inf"), lambda: 1 + 2j, lambda: "", lambda: "text", lambda: "x" * 5000,
        lambda: b"bytes", lambda: bytearray(b"ab"), list, lambda: [1, 2, 3], lambda: [[1, 2], [3]],
        lambda: [["a"]], lambda: ["a", "b"], lambda: (1,), dict, lambda: {"a": 1}, lambda: {1: 2},
        lambda: {1, 2}, lambda: frozenset(), lambda: collections.OrderedDict(a=1), lambda: np.float32(1.5),
        lambda: np.int64(3), lambda: np.str_("s"), lambda: np.array(3.0), lambda: np.array("x"),
        lambda: np.zeros((2, 2), complex), lambda: np.array([1, "a"], dtype=object),
        lambda: np.array([[1.0]] * 3, dtype=object), lambda: np.zeros(3, "U3"), lambda: np.zeros(2, "S2"),
        lambda: np.zeros(2, bool), lambda: np.zeros((0, 3)), lambda: np.zeros((3, 0, 2)),
        lambda: np.zeros(2, "M8[s]"), lambda: np.zeros(2, [("a", "f4")]), lambda: np.arange(4, dtype=">f8"),
        lambda: np.asfortranarray(np.ones((2, 3))), lambda: np.ones((2, 3))[:, ::2],
        lambda: np.array([np.zeros(2), None], dtype=object), lambda: [np.zeros((2, 2)), np.zeros((3, 2))],
        lambda: np.full((2, 2), 10 ** 30, dtype=object), lambda: {"train": 1}, lambda: [None] * 50,
        lambda: "a\ud800b", lambda: np.array(["\udfffx", "y"]), lambda: {"\ud800": np.zeros(2)},
        lambda: np.array(["\ud83d\ude00", 3], dtype=object),
    ]


def same_shape_other_dtype(value: Any, rnd: random.Random) -> Any:
    try:
        array = np.asarray(value)
    except ValueError:  # a MAG example or feature triple: not an array
        return rnd.choice(weird_values(rnd))()
    if array.dtype.kind not in "biufc" or array.ndim == 0:
        return array
    dtype = rnd.choice(["U4", "S2", object, complex, bool, np.int8, np.uint64, np.float16, ">f4"])
    if dtype is object:
        out = np.empty(array.shape, dtype=object)
        out.flat[:] = [rnd.choice([1.0, "a", None, [1], 10 ** 40]) for _ in range(array.size)]
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return array.astype(dtype)


def fam_wrong_type(rnd: random.Random, fmt: str) -> bytes:
    raw = base_of(fmt, rnd)
    for _ in range(rnd.choice([1, 1, 2])):
        draw = rnd.random()
        if draw < 0.1:  # a whole split, or the whole file
            value = rnd.choice(weird_values(rnd))()
            if draw < 0.05:
                return dumps(value, rnd)
            raw[rnd.choice(list(raw))] = value
            return dumps(raw, rnd)
        slot = pick(rnd, fmt, raw)
        value = get_slot(raw, slot)
        set_slot(raw, slot, same_shape_other_dtype(value, rnd) if draw < 0.4 else rnd.choice(weird_values(rnd))())
    return dumps(raw, rnd)


def reranked(value: Any, rnd: random.Random) -> Any:
    array = np.asarray(value)
    options: list[Callable[[], Any]] = [lambda: array[..., None], lambda: array.reshape(-1),
                                        lambda: array[None], lambda: np.asarray(array.tolist(), dtype=object)]
    if array.ndim:
        options += [lambda: array[0], lambda: array.T, lambda: array.reshape(array.shape[0], -1)]
    if array.ndim > 2:
        options.append(lambda: array.reshape(array.shape[0], array.shape[1], -1, 1))
    return rnd.choice(options)()


def fam_wrong_rank(rnd: random.Random, fmt: str) -> bytes:
    raw = base_of(fmt, rnd)
    parts = None if fmt == "mmsa" else ("words", "visual", "acoustic", "label")
    slot = pick(rnd, fmt, raw, parts)
    set_slot(raw, slot, reranked(get_slot(raw, slot), rnd))
    return dumps(raw, rnd)


def fam_inconsistent_lengths(rnd: random.Random, fmt: str) -> bytes:
    raw = base_of(fmt, rnd)
    if fmt == "mmsa":
        split = rnd.choice(list(raw))
        data = raw[split]
        key = rnd.choice(sorted(data))
        value = np.asarray(data[key])
        change = rnd.randrange(7)
        if change == 0:
            data[key] = value[:-1]
        elif change == 1:
            data[key] = np.concatenate([value, value[:1]])
        elif change == 2 and "audio_lengths" in data:
            lengths_key = rnd.choice(["audio_lengths", "vision_lengths"])
            data[lengths_key] = data[lengths_key] + rnd.choice([-100, 1, 1000, 0.5, 2 ** 62])
        elif change == 3:
            data.pop(key)
        elif change == 4:
            data[f"extra_{rnd.randrange(3)}"] = np.zeros(rnd.randrange(1, 9))
        elif change == 5 and value.ndim == 3:
            data[key] = value[:, :-1] if rnd.random() < 0.5 else value[:, :, :-1]
        else:
            raw[rnd.choice(list(raw))] = raw[split]  # same dict under two splits (memo sharing, valid)
    else:
        split = rnd.choice(list(raw))
        i = rnd.randrange(len(raw[split]))
        (words, visual, acoustic), label, segment = raw[split][i]
        change = rnd.randrange(6)
        if change == 0:
            words = [*words, "extra"]
        elif change == 1:
            visual = visual[:-1]
        elif change == 2:
            acoustic = np.zeros((len(words), acoustic.shape[1] + rnd.choice([-1, 1, 1000])))
        elif change == 3:
            words, visual, acoustic = [], np.zeros((0, rnd.choice([0, 4, 10 ** 6]))), np.zeros((0, 3))
        elif change == 4:
            raw[split][i] = rnd.choice([(words, visual), ((words, visual, acoustic, words), label, segment),
                                        (words, visual, acoustic, label, segment)])
            return dumps(raw, rnd)
        else:
            raw[split] = []
            return dumps(raw, rnd)
        raw[split][i] = ((words, visual, acoustic), label, segment)
    return dumps(raw, rnd)


def fam_nonfinite(rnd: random.Random, fmt: str) -> bytes:
    raw = base_of(fmt, rnd)
    for _ in range(rnd.randint(1, 3)):
        parts = None if fmt == "mmsa" else ("visual", "acoustic", "label")
        slot = pick(rnd, fmt, raw, parts)
        value = np.array(get_slot(raw, slot), copy=True)
        if value.dtype.kind not in "fc":
            if value.dtype.kind not in "iub":
                continue
            value = value.astype(np.float64)
        if value.size:
            value.flat[rnd.randrange(value.size)] = rnd.choice([np.nan, np.inf, -np.inf])
        set_slot(raw, slot, value)
    return dumps(raw, rnd)


HUGE = [10 ** 6, 10 ** 9, 2 ** 31, 2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 30, -1, -(2 ** 63)]


def fam_huge_shape(rnd: random.Random, fmt: str) -> bytes:
    big = rnd.choice(HUGE)
    dtype = op_dtype(rnd.choice(["<f8", "<f4", "|O", "<U3", "|b1"]))
    choices: list[Callable[[], bytes]] = [
        lambda: op_array((big,), dtype, raw=b"\x00" * 8),
        lambda: op_array((big, big), dtype, raw=b""),
        lambda: op_array((0, big), dtype, raw=b""),
        lambda: op_array(tuple([2] * rnd.choice([33, 64, 65])), dtype, raw=b""),
        lambda: op_array((rnd.randrange(3, 300),), op_dtype("|O"), items=op_list_of(op_str("a"), op_str("b"))),
        lambda: op_array(rnd.choice(["abc", 2.5, ((2,),), None, [3], (True,)]), dtype, raw=b""),
        lambda: op_array((3,), op_dtype("<f8"), raw=b"\x00" * rnd.choice([0, 7, 23, 25, 10 ** 4])),
        lambda: op_call(op_global("numpy._core.multiarray", "_reconstruct"), op_global("numpy", "ndarray"),
                        inner((big,)), op_bytes(b"f")),
        lambda: op_call(op_global("numpy.core.numeric", "_frombuffer"), op_bytes(b"\x00" * 16), op_dtype(),
                        inner((big,)), op_str("C")),
        lambda: op_call(op_global("builtins", rnd.choice(["bytes", "bytearray"])), op_int(abs(big))),
        lambda: b"\x8e" + struct.pack("<Q", abs(big) % 2 ** 64) + b"abc",  # BINBYTES8
        lambda: b"\x96" + struct.pack("<Q", abs(big) % 2 ** 64) + b"abc",  # BYTEARRAY8
        lambda: b"\x8d" + struct.pack("<Q", abs(big) % 2 ** 64) + b"abc",  # BINUNICODE8
        lambda: b"\x95" + struct.pack("<Q", abs(big) % 2 ** 64) + b"N",  # FRAME
        lambda: b"\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01",  # LONG4
        lambda: b"T" + struct.pack("<i", 2 ** 31 - 1) + b"ab",  # BINSTRING
    ]
    return replace_with_snippet(rnd, fmt, rnd.choice(choices)())


def nested(kind: str, depth: int) -> bytes:
    if kind == "list":
        return b"]" * depth + b"a" * (depth - 1)
    if kind == "tuple":
        return b"N" + b"\x85" * depth
    if kind == "dict":
        return b"}K\x01" * depth + b"N" + b"s" * depth
    if kind == "mark":
        return b"(" * depth + b"N" + b"l" * depth
    # object arrays each holding the next: refused (freeing a deep chain of them overflows the C stack)
    inner = op_str("leaf")
    for _ in range(depth):
        inner = op_array((1,), op_dtype("|O"), items=op_list_of(inner))
    return inner


def fam_deep_nesting(rnd: random.Random, fmt: str) -> bytes:
    kind = rnd.choice(["list", "tuple", "dict", "mark", "objarray"])
    depth = rnd.choice([5, 31, 33, 100, 1000, 20000]) if kind != "objarray" else rnd.choice([1, 2, 40])
    if rnd.random() < 0.3:  # through the pickler: nested Python containers around a real value
        raw = base_of(fmt, rnd)
        slot = pick(rnd, fmt, raw)
        value = get_slot(raw, slot)
        for _ in range(min(depth, 300)):
            value = rnd.choice([lambda v: [v], lambda v: (v,), lambda v: {"k": v}])(value)
        set_slot(raw, slot, value)
        return dumps(raw, rnd)
    return replace_with_snippet(rnd, fmt, nested(kind, depth))


def payloads(rnd: random.Random) -> list[bytes]:
    """Snippets that would run code (marker file, sentinel, an import) or misuse an allowed global."""
    touch = op_str(f"touch {MARKER}")
    create = op_str(f"open({str(MARKER)!r}, 'w').close()")
    here = sentinel.__module__
    return [
        op_call(op_global("posix", "system"), touch),
        op_call(op_global("os", "system"), touch),
        op_call(op_str("os") + op_str("system") + b"\x93", touch),  # STACK_GLOBAL
        b"(" + touch + b"iposix\nsystem\n",  # INST
        b"(" + op_global("os", "system") + touch + b"o",  # OBJ
        op_global("os", "system") + op_tuple(touch) + b"\x81",  # NEWOBJ
        op_call(op_global("builtins", "exec"), create),
        op_call(op_global("builtins", "eval"), create),
        op_call(op_global("__builtin__", "eval"), create),
        op_call(op_global("builtins", "__import__"), op_str("this")),
        op_call(op_global("importlib", "import_module"), op_str("this")),
        op_global("this", "s"),
        op_call(op_global("builtins", "open"), op_str(str(MARKER)), op_str("w")),
        op_call(op_global("subprocess", "call"), op_str(f"touch {MARKER}")),
        op_call(op_global(here, "sentinel"), op_str("called")),
        op_call(op_global("builtins", "getattr"), op_global("builtins", "list"), op_str("__class__")),
        op_call(op_global("numpy", "load"), op_str(str(MARKER))),
        op_call(op_global("pickle", "loads"), op_bytes(pickle.dumps(1))),
        op_call(op_global("copyreg", "_reconstructor"), op_global("builtins", "list"),
                op_global("builtins", "list"), b"N"),
        op_global("numpy", "ndarray.__new__"),
        op_global("collections", "Counter"),
        op_global("numpy.core.multiarray", "_reconstruct.__globals__"),
        b"P1\n", b"N\x51",  # PERSID / BINPERSID
        b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00",  # EXT1 / EXT2 / EXT4
        # allowed globals used the way numpy never does
        op_call(op_global("_codecs", "encode"), op_str("x"), op_str(rnd.choice(["rot13", "zlib", "utf-16",
                                                                                  "nonexistent"]))),
        op_call(op_global("builtins", "str"), op_bytes(b"x"), op_str("utf-16")),
        op_call(op_global("builtins", "int"), op_str("9" * 5000)),
        op_call(op_global("builtins", "set"), op_str("abc")),
        op_call(op_global("numpy", "ndarray"), op_tuple(op_int(10), op_int(10))),
        op_call(op_global("numpy._core.multiarray", "_reconstruct"), op_global("builtins", "dict"),
                op_tuple(op_int(0)), op_bytes(b"b")),
        op_global("builtins", "list") + b"]b",  # BUILD on a stand-in
        b"]}b",  # BUILD setting a list's __dict__
        b"N" + op_tuple() + b"R",  # REDUCE of None
        op_global("builtins", "dict") + op_tuple(op_int(1)) + b"}\x92",  # NEWOBJ_EX with kwargs
    ]


def fam_globals(rnd: random.Random, fmt: str) -> bytes:
    return replace_with_snippet(rnd, fmt, rnd.choice(payloads(rnd)))


def billion_laughs(width: int, levels: int, base: int = 900_000) -> bytes:
    out = op_str("abcdefgh" * 4) + b"r" + struct.pack("<I", base) + b"0"
    for level in range(1, levels + 1):
        refs = (b"j" + struct.pack("<I", base + level - 1)) * width
        out += b"](" + refs + b"e" + b"r" + struct.pack("<I", base + level) + (b"0" if level < levels else b"")
    return out


def fam_memo(rnd: random.Random, fmt: str) -> bytes:
    index = rnd.choice([0, 1, 255, 256, 65535, 2 ** 31, 2 ** 32 - 1])
    choices: list[Callable[[], bytes]] = [
        lambda: b"j" + struct.pack("<I", index),  # LONG_BINGET of something never stored
        lambda: b"h" + bytes([index % 256]),
        lambda: b"N" + b"r" + struct.pack("<I", index),  # LONG_BINPUT: the C unpickler sizes its memo by it
        lambda: b"N" + b"p" + str(index * 1000).encode() + b"\n",
        lambda: b"g" + str(index).encode() + b"\n",
        lambda: billion_laughs(rnd.choice([2, 10, 30]), rnd.choice([3, 6, 12])),
        lambda: b"]r" + struct.pack("<I", 900_001) + b"j" + struct.pack("<I", 900_001) + b"a",  # list in itself
        lambda: b"}r" + struct.pack("<I", 900_001) + b"K\x01j" + struct.pack("<I", 900_001) + b"s",
        lambda: b"\x94" * rnd.randint(1, 3),  # MEMOIZE with whatever is on the stack (or nothing)
        lambda: b"2" * rnd.randint(1, 4) + b"N",  # DUP
        lambda: b"1N",  # POP_MARK without a mark
        lambda: b"0" * rnd.randint(1, 4) + b"N",  # POP below the bottom
        lambda: (b"]r" + struct.pack("<I", 900_002) + b"0" + b"(" + (b"j" + struct.pack("<I", 900_002)) * 2000
                 + b"t"),  # a tuple of 2000 refs to one list
        lambda: (op_str("x" * 1000) + b"r" + struct.pack("<I", 900_003) + b"0" + b"]("
                 + (b"j" + struct.pack("<I", 900_003)) * 3000 + b"e"),  # one long string, 3000 refs
    ]
    return replace_with_snippet(rnd, fmt, rnd.choice(choices)())


def fam_numpy_dtype(rnd: random.Random, fmt: str) -> bytes:
    f8 = np.dtype("<f8").__reduce__()[2]
    choices: list[Callable[[], bytes]] = [
        lambda: op_array((2,), op_dtype("<f8", (3, "<", None, None, None, -1, -1, 63)), raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (3, "<", None, ("a",), {"a": (np.dtype("<f8"), 1000)}, 8, 8, 0)),
                         raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (3, "<", (np.dtype("<f8"), (10 ** 9,)), None, None, -1, -1, 0)),
                         raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (3, "x", None, None, None, -1, -1, 0)), raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (3, "<", None, None, None, 4, -1, 0)), raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (4, "<", None, None, None, -1, -1, 0, {"m": 1})), raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", (rnd.choice([0, 2, 5, "3"]), *f8[1:])), raw=b"\x00" * 16),
        lambda: op_array((2,), op_dtype("<f8", f8[:5]), raw=b"\x00" * 16),
        lambda: op_dtype("<f8", (3, ">", None, None, None, -1, -1, 0), copy=False),  # numpy's own float64?
        lambda: op_call(op_global("numpy", "dtype"), op_str(rnd.choice(["V8", "M8[s]", "f8,i4", "(3,)f8",
                                                                         "U999999999", "T", "a5", "O4", "?",
                                                                         "q", "fizz", "", "<>f8"]))),
        lambda: op_call(op_global("numpy._core.multiarray", "scalar"), op_dtype("|O"), op_str("x")),
        lambda: op_call(op_global("numpy._core.multiarray", "scalar"), op_dtype("<f8"), op_bytes(b"\x00" * 3)),
        lambda: op_call(op_global("numpy._core.multiarray", "scalar"), op_dtype(rnd.choice(["<f4", "<i8", "<U2"])),
                        op_bytes(b"\x01" * {"<f4": 4, "<i8": 8, "<U2": 8}[rnd.choice(["<f4", "<i8", "<U2"])])),
        lambda: op_call(op_global("numpy._core.numeric", "_frombuffer"), op_bytes(b"\x00" * 24), op_dtype("<f8"),
                        op_tuple(op_int(rnd.choice([2, 3, 4]))), op_str(rnd.choice(["C", "F", "K", "A"]))),
        lambda: op_call(op_global("numpy._core.numeric", "_frombuffer"), op_bytes(b"\x00" * 16), op_dtype("|O"),
                        op_tuple(op_int(2)), op_str("C")),
        lambda: op_array((2,), op_dtype("|O"), items=op_list_of(op_array((1,), op_dtype("|O"),
                                                                       items=op_list_of(op_str("a"))), b"N")),
        lambda: op_array((1,), op_dtype("|O"), items=op_list_of(op_call(
            op_global("numpy._core.multiarray", "_reconstruct"), op_global("numpy", "ndarray"),
            op_tuple(op_int(0)), op_bytes(b"b")))),  # holds an unfinished array
        lambda: op_array((2,), None, raw=b"\x00" * 16) + op_tuple(op_int(1), op_tuple(op_int(1)), op_dtype(),
                                                                   b"\x89", op_bytes(b"\x00" * 8)) + b"b",
        lambda: op_array((3,), op_dtype("<U2"), raw=b"a\x00\x00\x00" * 6),
        lambda: op_array((2, 2), op_dtype(rnd.choice(["<c16", ">i4", "|u1", "<f2"])), raw=b"\x01" * 64)[:-1],
        lambda: op_array((1,), b"N", raw=b"\x00"),
        lambda: op_array((1,), op_str("f8"), raw=b"\x00" * 8),
        lambda: op_array((2,), op_dtype("<f8"), raw=b"\x00" * 16, core="numpy.core"),
        # str payloads past U+10FFFF: numpy would make corrupt Python strs of them
        lambda: op_array((2,), op_dtype(rnd.choice(["<U1", ">U1"])), raw=rnd.choice([
            struct.pack("<2I", 0x110000, 0x41), struct.pack(">2I", 0x110000, 0x41), struct.pack("<2I", 0xD800, 0x41)])),
        lambda: op_call(op_global("numpy._core.multiarray", "scalar"), op_dtype("<U1"),
                        op_bytes(struct.pack("<I", rnd.choice([0x110000, 0xFFFFFFFF, 0xDFFF])))),
        lambda: op_call(op_global("numpy._core.numeric", "_frombuffer"), op_bytes(struct.pack("<I", 0x7FFFFFFF)),
                        op_dtype("<U1"), op_tuple(op_int(1)), op_str("C")),
    ]
    return replace_with_snippet(rnd, fmt, rnd.choice(choices)())


FAMILIES: dict[str, Callable[[random.Random, str], bytes]] = {
    "truncate": fam_truncate,
    "bitflip": fam_bitflip,
    "splice": fam_splice,
    "wrong_type": fam_wrong_type,
    "wrong_rank": fam_wrong_rank,
    "inconsistent_lengths": fam_inconsistent_lengths,
    "nonfinite": fam_nonfinite,
    "huge_shape": fam_huge_shape,
    "deep_nesting": fam_deep_nesting,
    "globals": fam_globals,
    "memo": fam_memo,
    "numpy_dtype": fam_numpy_dtype,
}


# -------------------------------------------------------------------------------------------- the run
class StubEncoder:
    """A stand-in text encoder for MAG conversion: a few ids per word, 4-d features; no torch needed."""

    spec, device, max_length, dim = "stub", "cpu", 64, 4

    def tokenizer(self, words: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[1000 + ord(c) % 997 for c in word[:3]] for word in words]}

    def special_ids(self) -> dict[str, int]:
        return {"pad": 0, "unk": 100, "cls": 101, "sep": 102}

    def encode(self, text_bert: np.ndarray, progress: Any = None) -> np.ndarray:
        out = np.zeros((*text_bert.shape[::2], self.dim), dtype=np.float32)
        out[..., 0] = text_bert[:, 1, :]
        return out

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "dim": self.dim}


class CaseTimeout(BaseException):
    """Raised by the watchdog in the case's own thread: a case ran past its time bound."""


@dataclass
class Outcome:
    """How one case ended: ``ok``, a DataFormatError class name, or a failure (UNEXPECTED, TIMEOUT, ...)."""

    kind: str
    seconds: float
    peak: int
    size: int
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.kind.isupper()

    @property
    def memory_bound(self) -> int:
        return MEMORY_FACTOR * self.size + MEMORY_FLOOR


def load_case(path: Path, fmt: str) -> None:
    """What ``data check`` / ``data convert --format mag`` do with a file, up to the printed description."""
    if fmt == "mmsa":
        dataset = read_mmsa_pickle(path, warn=False)
    else:
        dataset = read_mag_pickle(path, StubEncoder(), max_seq_length=12, warn=False)  # type: ignore[arg-type]
    from rich.console import Console

    Console(file=io.StringIO(), width=120).print(describe(dataset))
    content_hash(dataset)


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def run_case(data: bytes, fmt: str, path: Path, *, soft: float = SOFT_SECONDS, hard: float = HARD_SECONDS,
             measure: bool = True) -> Outcome:
    """Write ``data`` to ``path``, load it under a watchdog and tracemalloc, classify the ending."""
    path.write_bytes(data)
    had_this = "this" in sys.modules
    calls_before = len(SENTINEL_CALLS)
    previous = signal.signal(signal.SIGALRM, _alarm)
    faulthandler.dump_traceback_later(hard, exit=True)
    if measure:
        tracemalloc.start()
    kind, message = "ok", ""
    start = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_case(path, fmt)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except DataFormatError as exc:
        kind, message = type(exc).__name__, str(exc)
        if str(path) not in message or len(message) > 2000:
            kind = f"UNCLEAR {kind}"
    except CaseTimeout:
        kind = "TIMEOUT"
    except BaseException as exc:  # noqa: BLE001 - the point: anything else is a finding
        kind, message = f"UNEXPECTED {type(exc).__name__}", str(exc)[:300]
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
        if measure:
            tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
    if MARKER.exists() or len(SENTINEL_CALLS) != calls_before or ("this" in sys.modules and not had_this):
        kind = "CODE EXECUTION"
        MARKER.unlink(missing_ok=True)
    outcome = Outcome(kind, seconds, peak, len(data), message)
    if not outcome.failed and measure and peak > outcome.memory_bound:
        outcome.kind = "MEMORY BOUND EXCEEDED"
    return outcome


# ------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def case_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "case.pkl"
    rnd = random.Random(0)
    for fmt in FORMATS:
        assert run_case(dumps(base_of(fmt, rnd), rnd), fmt, path).kind == "ok"
    return path


def _check(outcome: Outcome, family: str, fmt: str) -> None:
    assert not outcome.failed, f"{family}/{fmt}: {outcome.kind}: {outcome.message}"
    assert outcome.seconds < SOFT_SECONDS
    assert outcome.peak <= outcome.memory_bound


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_pickles_end_in_a_clear_error_or_a_valid_load(case_path, family, fmt, rnd):
    data = FAMILIES[family](rnd, fmt)
    _check(run_case(data, fmt, case_path), family, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unmutated_bases_of_every_protocol_load(case_path, fmt):
    rnd = random.Random(1)
    for protocol in (2, 3, 4, 5):
        data = pickle.dumps(base_of(fmt, rnd), protocol=protocol)
        assert run_case(data, fmt, case_path).kind == "ok"
        # numpy's own bytes for an array, spliced where the array was, load: the splicing is sound
        raw = base_of(fmt, rnd)
        slot = ("test", "annotations") if fmt == "mmsa" else ("train", 0, "visual")
        array = np.asarray(get_slot(raw, slot))
        set_slot(raw, slot, PLACEHOLDER)
        assert run_case(embed(raw, inner(array, protocol), rnd), fmt, case_path).kind == "ok"


@pytest.mark.parametrize("index", range(len(payloads(random.Random(0)))))
def test_globals_are_refused_before_anything_runs(case_path, index):
    for fmt in FORMATS:
        for seed in range(2):
            rnd = random.Random(seed)
            data = replace_with_snippet(rnd, fmt, payloads(rnd)[index])
            outcome = run_case(data, fmt, case_path)
            assert outcome.kind in ("UnsafePickleError", "UnreadablePickleError"), (outcome.kind, outcome.message)
    assert not MARKER.exists() and not SENTINEL_CALLS and "this" not in sys.modules


def test_a_registered_extension_code_is_refused_too(case_path):
    copyreg.add_extension("posix", "system", 240)
    try:
        outcome = run_case(b"\x80\x02\x82\xf0" + op_tuple(op_str(f"touch {MARKER}")) + b"R.", "mmsa", case_path)
    finally:
        copyreg.remove_extension("posix", "system", 240)
    assert outcome.kind == "UnsafePickleError" and "extension" in outcome.message
    assert not MARKER.exists()


# A few bytes each; unguarded, every one allocates gigabytes (or crashes the interpreter).
ATTACKS = {
    "BINBYTES8 length": b"\x80\x04\x8e" + struct.pack("<Q", 10 ** 10) + b"abc.",
    "BYTEARRAY8 length": b"\x80\x05\x96" + struct.pack("<Q", 10 ** 10) + b"abc.",
    "BINUNICODE8 length": b"\x80\x04\x8d" + struct.pack("<Q", 10 ** 10) + b"abc.",
    "FRAME length": b"\x80\x04\x95" + struct.pack("<Q", 10 ** 10) + b"N.",
    "_reconstruct shape": b"\x80\x02" + op_call(op_global("numpy._core.multiarray", "_reconstruct"),
                                                op_global("numpy", "ndarray"), op_tuple(op_int(10 ** 10)),
                                                op_bytes(b"f")) + b".",
    "state shape": b"\x80\x02" + op_array((10 ** 5, 10 ** 5), raw=b"") + b".",
    "subarray dtype": b"\x80\x02" + op_array((4,), op_dtype("<f8", (3, "<", (np.dtype("<f8"), (10 ** 9,)), None,
                                                                       None, -1, -1, 0)), raw=b"") + b".",
    "short object list": b"\x80\x02" + op_array((10 ** 6,), op_dtype("|O"), items=op_list_of(op_str("a"))) + b".",
    "bytes(n)": b"\x80\x02" + op_call(op_global("builtins", "bytes"), op_int(10 ** 10)) + b".",
    "billion laughs": b"\x80\x04" + billion_laughs(40, 8) + b".",
    "list copies": b"\x80\x04" + op_list_of(*[op_int(1)] * 5000) + b"r" + struct.pack("<I", 1) + b"0" + b"("
                   + (op_global("builtins", "list") + b"(j" + struct.pack("<I", 1) + b"tR") * 3000 + b"l.",
    "deep lists": b"\x80\x04" + nested("list", 100_000) + b".",
    "deep object arrays": b"\x80\x04" + nested("objarray", 3) + b".",
}


BUDGETED = ("list copies",)  # refused once the objects made reach the memory budget, not before


@pytest.mark.parametrize("name", list(ATTACKS))
def test_resource_attacks_are_refused_before_allocating(name):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UnreadablePickleError) as info:
            safe_loads(ATTACKS[name], source="attack.pkl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "attack.pkl" in str(info.value)
    bound = MEMORY_FACTOR * len(ATTACKS[name]) + MEMORY_FLOOR if name in BUDGETED else 32 << 20
    assert peak < bound, f"{name}: peak {peak} bytes"
    assert time.perf_counter() - start < SOFT_SECONDS


def test_a_huge_memo_index_costs_one_entry():
    data = b"\x80\x04N" + b"r" + struct.pack("<I", 2 ** 32 - 1) + b"j" + struct.pack("<I", 2 ** 32 - 1) + b"."
    tracemalloc.start()  # the C unpickler sizes its memo array by the index: 32 GiB for these 15 bytes
    try:
        assert safe_loads(data) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("opcodes", [b"\x8f", b"}", b"N\x94", b"(", b"]"])
def test_memory_budget_stops_a_flood_of_tiny_objects(opcodes):
    # EMPTY_SET, EMPTY_DICT, MEMOIZE, MARK, EMPTY_LIST: 60-230 bytes of objects per byte of file
    data = b"\x80\x04" + opcodes * (60_000 // len(opcodes)) + b"."
    floor = 1 << 20  # the default floor (64 MiB) works the same way, on a bigger flood
    tracemalloc.start()
    try:
        with pytest.raises(PickleLimitError, match="refused before allocating"):
            SafeUnpickler(io.BytesIO(data), source="flood.pkl", memory_floor=floor).load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(data) + 2 * floor  # unbounded: up to 14 MB


@pytest.mark.parametrize("protocol", range(6))
def test_everything_numpy_and_python_pickle_loads_as_pickle_loads_it(protocol):
    data = {"f": np.arange(6.0).reshape(2, 3), "o": np.array([["a", 1], [None, 2.5]], dtype=object),
            "u": np.array(["xy", "z"]), "S": np.array([b"ab", b"c"]), "b": np.array([True, False]),
            "F": np.asfortranarray(np.ones((2, 3))), "strided": np.arange(10.0)[::3], "be": np.arange(3, dtype=">i4"),
            "0d": np.array(5.0), "empty": np.zeros((0, 3)), "f2": np.arange(3, dtype=np.float16),
            "scalars": [np.int64(4), np.float32(2.5), np.str_("hé"), np.bool_(True), np.complex64(1j)],
            "dtypes": [np.dtype(">f8"), np.dtype("U3"), np.dtype("O")], "py": [1, 2.0, "x", (1, 2), 1 + 2j, 10 ** 30],
            "containers": [{1, 2}, frozenset({3}), collections.OrderedDict(a=1), b"\x00\xff", bytearray(b"ab"), None]}
    blob = pickle.dumps(data, protocol=protocol)
    ours, theirs = safe_loads(blob), pickle.loads(blob)
    for key, value in theirs.items():
        if isinstance(value, np.ndarray):
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
            assert ours[key].flags.f_contiguous == value.flags.f_contiguous
            np.testing.assert_array_equal(ours[key], value)
        else:
            assert [type(v) for v in ours[key]] == [type(v) for v in value] and ours[key] == value


def test_numpy_dtype_singletons_are_never_modified():
    data = b"\x80\x02" + op_dtype("<f8", (3, ">", None, None, None, -1, -1, 0), copy=False) + b"."
    loaded = safe_loads(data)
    assert loaded.byteorder == ">" and loaded is not np.dtype("<f8")
    assert np.dtype("<f8").byteorder == "=" and np.arange(3.0).dtype.isnative


def test_mag_feature_dimensions_must_be_justified_by_the_file(case_path):
    # 8000 empty examples and one 8000-d row: a 0.5 MB file whose aligned arrays would need 13 GB
    wide = 8_000
    empty = [(([], np.zeros((0, wide)), np.zeros((0, 3))), 0.5, f"e{i}") for i in range(wide)]
    raw = {"train": [((["good"], np.ones((1, wide)), np.ones((1, 3))), 1.0, "x"), *empty], "dev": [], "test": []}
    case_path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(DataValidationError, match="dimensions the file's size can justify"):
        read_mag_pickle(case_path, StubEncoder(), max_seq_length=12)  # type: ignore[arg-type]
    raw = {"train": [(([], np.zeros((0, 4)), np.zeros((0, 3))), 0.5, "e")], "dev": [], "test": []}
    case_path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(DataValidationError, match="at least one example with words"):
        read_mag_pickle(case_path, StubEncoder(), max_seq_length=12)  # type: ignore[arg-type]


def test_error_hierarchy():
    for cls in (DataValidationError, UnreadablePickleError, PickleLimitError, UnsafePickleError):
        assert issubclass(cls, DataFormatError) and issubclass(cls, ValueError)
    for cls in (UnreadablePickleError, PickleLimitError, UnsafePickleError):
        assert issubclass(cls, pickle.UnpicklingError)
    error = DataValidationError("f.pkl", "train", "audio", "rank 3", "shape (2,)")
    back = pickle.loads(pickle.dumps(error))
    assert str(back) == str(error) and back.key == "audio"


def test_cli_reports_each_error_class_in_one_line(case_path):
    from typer.testing import CliRunner

    from robustmsa.cli import app

    cases = {"UnsafePickleError": b"\x80\x02" + op_call(op_global("os", "system"), op_str("true")) + b".",
             "PickleLimitError": ATTACKS["billion laughs"], "UnreadablePickleError": b"\x80\x04N",
             "DataValidationError": pickle.dumps({"train": 1})}
    for name, data in cases.items():
        case_path.write_bytes(data)
        result = CliRunner().invoke(app, ["data", "check", str(case_path)])
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(case_path) in lines[0], (name, lines)
