"""Wall-clock of the README's main command, cold (empty checkpoint cache) and warm (cache hit), and of ``--help``.

Each run is a fresh ``robustmsa`` process with ``OMP_NUM_THREADS=2`` (2 CPU threads), as a newcomer's laptop
would run it. Targets (issue 3): cold <= 60 s, warm <= 10 s, ``robustmsa --help`` <= 1 s.

    python bench/bench_cli.py [--rounds 3] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import write_section  # noqa: E402

MAIN = ["eval", "--method", "almt", "--noise", "0.3", "--quiet"]
TARGETS = {"cold": 60.0, "warm": 10.0, "help": 1.0}


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds one ``robustmsa`` process takes (it must succeed)."""
    exe = shutil.which("robustmsa") or sys.exit("robustmsa is not installed (pip install -e .)")
    start = time.perf_counter()
    result = subprocess.run([exe, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"robustmsa {' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm pairs (default 3)")
    parser.add_argument("--write", type=Path, help="update the cli section of this Markdown file")
    args = parser.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    times: dict[str, list[float]] = {"help": [], "cold": [], "warm": []}
    for _ in range(args.rounds):
        times["help"].append(timed(["--help"], env))
        with tempfile.TemporaryDirectory() as cache:
            run = [*MAIN, "--cache-dir", cache]
            times["cold"].append(timed(run, env))
            times["warm"].append(timed(run, env))
    median = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "## README main command and `--help` (wall clock, fresh processes)",
        "",
        f"- Command: `python bench/bench_cli.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}; `OMP_NUM_THREADS=2`",
        f"- Main command: `robustmsa {' '.join(MAIN)}` (embedded `synth` default); cold = empty "
        "`--cache-dir` (trains), warm = the same command again (cache hit)",
        "",
        "| run | median s | all runs s | target s | result |",
        "|---|---:|---|---:|---|",
    ]
    for name in ("cold", "warm", "help"):
        ok = median[name] <= TARGETS[name]
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"| {name} | {median[name]:.2f} | {runs} | {TARGETS[name]:g} | {'pass' if ok else '**FAIL**'} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(args.write, section, name="cli")
    return 0


if __name__ == "__main__":
    sys.exit(main())
