"""Every registered method on the embedded default through the CLI: ``robustmsa eval --method NAME --noise 0.3``.

Runs the README's main command for each method in a fresh process (empty checkpoint cache, ``OMP_NUM_THREADS=2``),
reads its ``--output`` record, and tabulates clean and corrupted test metrics next to predicting the training mean,
with the wall clock of each run. Shows that every method beats the training mean on ``synth`` and that the eval
command runs for each.

    python bench/bench_synth_methods.py [--methods almt,lf_dnn] [--seeds 1] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _markdown import write_section
from robustmsa.datasets import load
from robustmsa.methods import list_methods


def training_mean_baseline() -> dict[str, float]:
    """MAE and Non0 Acc-2 of predicting the training-label mean on synth's test split."""
    data = load("synth")
    y = data.test.regression_labels.astype(np.float64)
    mean = float(data.train.regression_labels.mean())
    non_zero = y != 0
    return {"MAE": float(np.mean(np.abs(y - mean))), "Non0_acc_2": float(np.mean((y[non_zero] > 0) == (mean > 0)))}


def run(method: str, seeds: int, workdir: Path) -> tuple[dict, float]:
    exe = shutil.which("robustmsa") or sys.exit("robustmsa is not installed (pip install -e .)")
    out = workdir / f"{method}.json"
    argv = [exe, "eval", "--method", method, "--noise", "0.3", "--seeds", str(seeds), "--quiet",
            "--cache-dir", str(workdir / "cache"), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(out.read_text()), seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all registered)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--write", help="update the synth_methods section of this Markdown file")
    args = parser.parse_args(argv)
    names = args.methods.split(",") if args.methods else list_methods()
    baseline = training_mean_baseline()
    lines = [
        "## Every method on the embedded default (`robustmsa eval --method NAME --noise 0.3`)",
        "",
        f"- Command: `python bench/bench_synth_methods.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}; `OMP_NUM_THREADS=2`; empty checkpoint cache (each run trains)",
        f"- `synth` test split; {args.seeds} seed(s) from 1111; random_missing at 0.3 with corruption seed 1111; "
        f"predicting the training mean gives MAE {baseline['MAE']:.3f}, Non0 Acc-2 {baseline['Non0_acc_2']:.3f}",
        "",
        "| method | clean MAE | clean Corr | clean Non0 Acc-2 | noisy MAE | noisy Non0 Acc-2 | beats mean | wall s |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            record, seconds = run(name, args.seeds, Path(tmp))
            clean = {k: v["mean"] for k, v in record["results"]["clean"].items()}
            noisy = {k: v["mean"] for k, v in record["results"]["corrupted"].items()}
            beats = clean["MAE"] < baseline["MAE"] and clean["Non0_acc_2"] > baseline["Non0_acc_2"]
            lines.append(f"| {name} | {clean['MAE']:.3f} | {clean['Corr']:.3f} | {clean['Non0_acc_2']:.3f} | "
                         f"{noisy['MAE']:.3f} | {noisy['Non0_acc_2']:.3f} | {'yes' if beats else '**no**'} | "
                         f"{seconds:.1f} |")
            print(lines[-1], flush=True)
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(Path(args.write), section, name="synth_methods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
