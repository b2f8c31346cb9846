"""Sweep overhead: ALMT on the embedded default, 5 corruptions x 10 levels x 1 seed, against training once.

Reference in the same run: training ALMT once (empty cache) plus one clean test evaluation. The sweep (empty
cache, fresh output directory) trains once and evaluates 50 cells. Target (issue 5): sweep <= 1.5x the reference.
Both run in-process, alternating, ``torch.set_num_threads(2)``.

    python bench/bench_sweep.py [--rounds 2] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _markdown import write_section
from robustmsa.datasets import load
from robustmsa.engine import evaluate_split, train
from robustmsa.sweep import parse_levels, run_sweep

CORRUPTIONS = ["random_missing", "word_drop", "word_shuffle", "frame_drop", "blur"]
LEVELS = "0:0.9:0.1"
TARGET = 1.5


def reference(data) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        model = train("almt", data, seed=1111, cache=cache)
        evaluate_split(model, data.test)
        return time.perf_counter() - start


def sweep(data) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_sweep(["almt"], data, CORRUPTIONS, parse_levels(LEVELS), [1111], Path(tmp) / "run",
                            cache=Path(tmp) / "cache")
        seconds = time.perf_counter() - start
        assert summary.computed == 50 and summary.trained == 1, summary
        return seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", help="update the sweep section of this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = load("synth")
    times: dict[str, list[float]] = {"train once + clean eval": [], "sweep (50 cells)": []}
    for round_ in range(args.rounds):
        order = [("train once + clean eval", reference), ("sweep (50 cells)", sweep)]
        for name, fn in (order if round_ % 2 == 0 else order[::-1]):
            times[name].append(fn(data))
    ref, ours = (statistics.median(v) for v in times.values())
    ratio = ours / ref
    lines = [
        "## Sweep overhead (ALMT on synth, 5 corruptions x 10 levels x 1 seed)",
        "",
        f"- Command: `python bench/bench_sweep.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"torch {torch.__version__}, 2 threads; empty caches; {args.rounds} alternating rounds",
        f"- Corruptions {', '.join(CORRUPTIONS)}; levels {LEVELS}",
        "",
        "| run | median s | all runs s |",
        "|---|---:|---|",
        *[f"| {name} | {statistics.median(v):.1f} | {', '.join(f'{t:.1f}' for t in v)} |" for name, v in times.items()],
        "",
        f"Sweep / reference = {ratio:.2f}x (target <= {TARGET}x): {'pass' if ratio <= TARGET else '**FAIL**'}",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(Path(args.write), section, name="sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
