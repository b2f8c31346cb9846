"""Benchmark ``RandomMissing(0.5)`` on a MOSEI-shaped test split against two references.

Contenders, all timed in one process in alternating rounds (order rotated every round):

* ``copy``: ``np.copy`` of ``text``, ``text_bert``, ``audio`` and ``vision`` (the floor: any
  corruption that returns new arrays must at least write them);
* ``ours``: ``robustmsa.corruptions.RandomMissing(0.5)(split, seed=1111)`` (independent streams);
* ``ours (lnln)``: the same with ``seeding="lnln"`` (LNLN's legacy ``RandomState`` draws);
* ``reference (LNLN as written)``: LNLN's ``generate_m`` (``Haoyu-ha/LNLN:core/dataset.py``) written
  here from the protocol description the way its code is written (per-sample loops, int64 masks,
  float64 outputs), doing the same logical work as ours: [UNK] ids in ``text_bert``, zeroed ``text``
  rows of dropped tokens and zeroed audio/vision frames; the reference of target (a);
* ``reference (vectorised)``: the same protocol without Python loops and with float32 masks, a
  stricter comparison reported beside it.

Targets: ours at least 1.5x faster than the LNLN-style reference (ratio of medians), within 3x of the copy,
and a peak of extra allocations during the call (``tracemalloc``, which sees numpy's buffers) of at
most one copy of the split's array bytes. Before timing, ``ours (lnln)`` is checked to reproduce the
references exactly. Memory is measured in a separate pass, never while timing.

    python bench/bench_random_missing.py [--rounds 7] [--samples 4659] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np

from _markdown import write_section
from robustmsa.corruptions import RandomMissing
from robustmsa.datasets.split import CLS_ID, SEP_ID, UNK_ID, Split

RATE = 0.5
SEED = 1111
SHAPES = {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)}
TEXT_LENGTHS = (10, 50)  # inclusive ranges of the valid lengths ([CLS] and [SEP] included for text)
FRAME_LENGTHS = (50, 500)
SPEEDUP_TARGET, COPY_TARGET, MEMORY_TARGET = 1.5, 3.0, 1.0


# ---------------------------------------------------------------- data
def make_split(n: int, seed: int = 0) -> Split:
    """A MOSEI-shaped float32 test split with random features, variable lengths and zero end padding."""
    rng = np.random.default_rng(seed)
    lt, dt = SHAPES["text"]
    text_len = rng.integers(TEXT_LENGTHS[0], TEXT_LENGTHS[1] + 1, size=n)
    mask = np.arange(lt)[None, :] < text_len[:, None]
    ids = rng.integers(1000, 30000, size=(n, lt)).astype(np.float32)
    ids[:, 0] = CLS_ID
    ids[np.arange(n), text_len - 1] = SEP_ID
    ids *= mask
    text_bert = np.stack([ids, mask.astype(np.float32), np.zeros((n, lt), np.float32)], axis=1)
    features, lengths = {"text": _padded(rng, (n, lt, dt), mask)}, {}
    for modality in ("audio", "vision"):
        length, dim = SHAPES[modality]
        lengths[modality] = rng.integers(FRAME_LENGTHS[0], FRAME_LENGTHS[1] + 1, size=n)
        valid = np.arange(length)[None, :] < lengths[modality][:, None]
        features[modality] = _padded(rng, (n, length, dim), valid)
    return Split(
        name="test",
        raw_text=np.array([f"sentence {i}" for i in range(n)], dtype=object),
        id=np.array([f"vid{i}" for i in range(n)], dtype=object),
        text_bert=text_bert,
        audio_lengths=lengths["audio"],
        vision_lengths=lengths["vision"],
        regression_labels=rng.uniform(-3, 3, size=n).astype(np.float32),
        has_length_keys=True,
        **features,
    )


def _padded(rng: np.random.Generator, shape: tuple[int, int, int], valid: np.ndarray) -> np.ndarray:
    """Standard-normal float32 features of ``shape`` with the rows outside ``valid`` zeroed (in place)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    x[~valid] = 0.0
    return x


def split_bytes(split: Split) -> int:
    """Total ``nbytes`` of the split's arrays."""
    return sum(getattr(split, key).nbytes for key in Split.array_keys()) + sum(
        v.nbytes for v in split.extras.values())


# ---------------------------------------------------------------- contenders
def lnln_as_written(split: Split, rate: float = RATE, seed: int = SEED) -> dict[str, np.ndarray]:
    """LNLN's ``generate_m`` as its code is written (metrics-and-protocol.md section 3), plus the ``text`` rows.

    Per-sample rate array broadcast with ``repeat``/``reshape``; text: ``input_len = argmin(mask)``,
    ``np.random.seed(seed)``, ``missing_mask = (U > r) * mask``, a per-sample loop keeping [CLS] and
    position ``input_len - 1``, dropped ids -> 100; audio/vision: ``input_mask`` built from Python
    lists (int64), ``np.random.seed(seed)``, ``missing_mask[..., None] * features`` (so float64 out, as
    in LNLN). ``missing_mask[..., None] * text`` is added because robustmsa corrupts ``text`` too.
    This is the reference of target (a).
    """
    n = len(split)
    missing_rate = np.full(n, rate)
    ids, mask = split.text_bert[:, 0, :], split.text_bert[:, 1, :]
    input_len = np.argmin(mask, axis=1)
    np.random.seed(seed)
    missing_mask = (np.random.uniform(size=mask.shape) > missing_rate.repeat(mask.shape[1]).reshape(mask.shape)) * mask
    for i, instance in enumerate(missing_mask):
        instance[0] = instance[input_len[i] - 1] = 1
    ids_m = missing_mask * ids + (UNK_ID * np.ones_like(ids)) * (mask - missing_mask)
    out = {
        "text_bert": np.concatenate((ids_m[:, None, :], split.text_bert[:, 1:, :]), axis=1),
        "text": np.expand_dims(missing_mask, axis=2) * split.text,
    }
    for modality in ("audio", "vision"):
        features = getattr(split, modality)
        length = features.shape[1]
        input_mask = np.array([np.array([1] * int(v) + [0] * (length - int(v)))
                               for v in getattr(split, f"{modality}_lengths")])
        np.random.seed(seed)
        missing_mask = (np.random.uniform(size=input_mask.shape)
                        > missing_rate.repeat(length).reshape(input_mask.shape)) * input_mask
        out[modality] = np.expand_dims(missing_mask, axis=2) * features
    return out


def lnln_vectorised(split: Split, rate: float = RATE, seed: int = SEED) -> dict[str, np.ndarray]:
    """The same protocol written as fast as numpy allows: no Python loops, float32 masks (float32 out).

    Not what LNLN runs; reported as a stricter second reference.
    """
    ids, mask = split.text_bert[:, 0, :], split.text_bert[:, 1, :]
    input_len = np.argmin(mask, axis=1)
    np.random.seed(seed)
    missing_mask = (np.random.uniform(size=mask.shape) > rate) * mask
    missing_mask[:, 0] = 1
    missing_mask[np.arange(mask.shape[0]), input_len - 1] = 1
    ids_m = missing_mask * ids + (UNK_ID * np.ones_like(ids)) * (mask - missing_mask)
    out = {
        "text_bert": np.concatenate((ids_m[:, None, :], split.text_bert[:, 1:, :]), axis=1),
        "text": missing_mask[..., None] * split.text,
    }
    for modality in ("audio", "vision"):
        features = getattr(split, modality)
        lengths = getattr(split, f"{modality}_lengths")
        input_mask = (np.arange(features.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        np.random.seed(seed)
        missing_mask = (np.random.uniform(size=input_mask.shape) > rate) * input_mask
        out[modality] = missing_mask[..., None] * features
    return out


def plain_copy(split: Split) -> tuple[np.ndarray, ...]:
    """``np.copy`` of the four arrays random missing rewrites."""
    return tuple(np.copy(getattr(split, key)) for key in ("text", "text_bert", "audio", "vision"))


def contenders(split: Split) -> dict[str, Callable[[], object]]:
    """The timed calls, by name."""
    ours, ours_lnln = RandomMissing(RATE), RandomMissing(RATE, seeding="lnln")
    return {
        "copy": lambda: plain_copy(split),
        "ours": lambda: ours(split, seed=SEED),
        "ours (lnln)": lambda: ours_lnln(split, seed=SEED),
        "reference (LNLN as written)": lambda: lnln_as_written(split),
        "reference (vectorised)": lambda: lnln_vectorised(split),
    }


def check_equivalence(split: Split) -> None:
    """Assert that ``seeding="lnln"`` gives exactly both references' ids, text rows and frames (values)."""
    ours = RandomMissing(RATE, seeding="lnln")(split, seed=SEED)
    for reference_fn in (lnln_as_written, lnln_vectorised):
        reference = reference_fn(split)
        for key in ("text_bert", "text", "audio", "vision"):
            got, want = getattr(ours, key), reference[key]
            assert got.shape == want.shape, (key, got.shape, want.shape)
            assert np.array_equal(got, want), f"{key}: ours (lnln) differs from {reference_fn.__name__}"
        del reference
        gc.collect()
    del ours
    gc.collect()


# ---------------------------------------------------------------- measuring
def time_rounds(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall times per contender over ``rounds`` rounds (order rotated each round, outputs freed)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            result = calls[name]()
            times[name].append(time.perf_counter() - start)
            del result
            gc.collect()
    return times


def peak_extra_bytes(call: Callable[[], object]) -> int:
    """Peak bytes allocated (and traced) during ``call``, outputs included."""
    gc.collect()
    tracemalloc.start()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    gc.collect()
    return peak


# ---------------------------------------------------------------- reporting
def report(split: Split, times: dict[str, list[float]], peaks: dict[str, int], argv: list[str]) -> str:
    """The Markdown section: setup, table and the pass/fail of each target."""
    size = split_bytes(split)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ref, vec = "reference (LNLN as written)", "reference (vectorised)"
    speedup = median[ref] / median["ours"]
    vs_copy = median["ours"] / median["copy"]
    memory = peaks["ours"] / size
    lines = [
        "## random_missing (severity 0.5, MOSEI-shaped test split)",
        "",
        f"- Command: `{' '.join(['python bench/bench_random_missing.py', *argv])}`",
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, "
        f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}",
        f"- Split: {len(split)} samples, text {_shape(split.text)}, text_bert {_shape(split.text_bert)}, "
        f"audio {_shape(split.audio)}, vision {_shape(split.vision)}, float32, end padding; "
        f"text lengths {TEXT_LENGTHS[0]}..{TEXT_LENGTHS[1]}, audio/vision lengths "
        f"{FRAME_LENGTHS[0]}..{FRAME_LENGTHS[1]}; {size / 2**20:,.0f} MiB of arrays",
        f"- {len(times['ours'])} alternating rounds in one process (order rotated each round); peak extra "
        "memory by `tracemalloc` in a separate pass; `ours (lnln)` asserted equal to both references",
        "",
        "| call | median s | min s | median vs ours | peak extra MiB | peak / split |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in times:
        relative = median[name] / median["ours"]
        lines.append(f"| {name} | {median[name]:.3f} | {best[name]:.3f} | {relative:.2f}x "
                     f"| {peaks[name] / 2**20:,.1f} | {peaks[name] / size:.4f} |")
    excess = (peaks["ours"] - size) / 2**20
    lines += [
        "",
        "| target | measured | result |",
        "|---|---|---|",
        f"| (a) LNLN-style reference / ours >= {SPEEDUP_TARGET}x | {speedup:.2f}x medians "
        f"({best[ref] / best['ours']:.2f}x mins) | {_verdict(speedup >= SPEEDUP_TARGET)} |",
        f"| (a') vectorised reference / ours (no target) | {median[vec] / median['ours']:.2f}x medians "
        f"({best[vec] / best['ours']:.2f}x mins) | - |",
        f"| (b) ours / copy <= {COPY_TARGET}x | {vs_copy:.2f}x medians "
        f"({best['ours'] / best['copy']:.2f}x mins) | {_verdict(vs_copy <= COPY_TARGET)} |",
        f"| (c) peak extra <= {MEMORY_TARGET:g} x split | {memory:.4f}x (one copy {excess:+.1f} MiB; "
        f"LNLN-style {peaks[ref] / size:.4f}x, vectorised {peaks[vec] / size:.4f}x) "
        f"| {_verdict(memory <= MEMORY_TARGET)} |",
    ]
    return "\n".join(lines) + "\n"


def _shape(x: np.ndarray) -> str:
    return "x".join(str(d) for d in x.shape[1:])


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (default 7)")
    parser.add_argument("--samples", type=int, default=4659, help="samples in the split (MOSEI test: 4659)")
    parser.add_argument("--write", type=Path, help="update the random_missing section of this Markdown file")
    args = parser.parse_args(argv)

    split = make_split(args.samples)
    check_equivalence(split)
    calls = contenders(split)
    calls["copy"]()  # warm-up: a first large allocation can stall on huge-page compaction
    gc.collect()
    times = time_rounds(calls, args.rounds)
    peaks = {name: peak_extra_bytes(call) for name, call in calls.items()}
    section = report(split, times, peaks, argv)
    print(section)
    if args.write:
        write_section(args.write, section, name="random_missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
