"""Fuzzing the loaders at scale: the mutation families of tests/test_fuzz_loaders.py on MMSA and MAG pickles.

Every case is a valid base pickle with MOSI-like feature dimensions (MMSA: 12 samples per split, audio 5-d,
vision 20-d, about 220 kB; MAG/MIB: 31 examples of 1-12 words, 47/74-d rows, about 200 kB) mutated by one of
twelve families (truncation, bit flips, splicing,
wrong types, wrong ranks, inconsistent lengths, NaN/inf, huge declared shapes, deep nesting, globals, memo
tricks, numpy dtype/state misuse), written to a file and loaded as ``robustmsa data check`` and ``robustmsa
data convert --format mag`` would (a stub text encoder for MAG), through validation, ``describe`` and
``content_hash``. Each case runs twice in this process: timed (SIGALRM bound per case, no tracemalloc), then
measured (tracemalloc peak); both runs must end the same way. A case passes when it ends in a valid load or a
``DataFormatError`` naming the file, within the time bound, with peak memory <= MEMORY_FACTOR x file size +
MEMORY_FLOOR, and without running a payload (marker file, sentinel call, ``import this``).

    python bench/bench_fuzz.py [--cases 1000] [--seed 0] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_fuzz_loaders
from _markdown import write_section
from test_fuzz_loaders import FAMILIES, FORMATS, SOFT_SECONDS, Outcome, base_of, dumps, run_case

from robustmsa.datasets.safe_pickle import MEMORY_FACTOR, MEMORY_FLOOR

NAME = "fuzz_loaders"
TITLE = "### Fuzzing the loaders"
SECTION = "## RELIABILITY"
RATIO_MIN_SIZE = 64 << 10
CLASSES = ("ok", "DataValidationError", "UnreadablePickleError", "PickleLimitError", "UnsafePickleError")


def run(fmt: str, cases: int, seed: int, path: Path) -> list[tuple[str, Outcome]]:
    """``cases`` cases of ``fmt``, families in turn; each case timed, then measured; the endings must agree."""
    rnd = random.Random(seed)
    for _ in range(3):  # warm imports and caches so that the first cases are not slower
        run_case(dumps(base_of(fmt, rnd), rnd), fmt, path, measure=False)
    families = list(FAMILIES)
    results = []
    for index in range(cases):
        family = families[index % len(families)]
        case_seed = seed * 1_000_003 + index
        data = FAMILIES[family](random.Random(case_seed), fmt)
        timed = run_case(data, fmt, path, measure=False)
        measured = run_case(data, fmt, path, measure=True)
        outcome = Outcome(timed.kind, timed.seconds, measured.peak, measured.size, timed.message)
        if measured.kind != timed.kind:
            outcome.kind = f"NONDETERMINISTIC {timed.kind} / {measured.kind}"
        elif measured.failed:
            outcome.kind = measured.kind
        results.append((family, outcome))
        if outcome.failed:
            print(f"  FAILED {fmt} {family} case {index} (seed {case_seed}): {outcome.kind}: {outcome.message}",
                  flush=True)
    return results


def summarise(results: dict[str, list[tuple[str, Outcome]]]) -> tuple[list[str], list[str], int]:
    """The overall table, the per-family table and the number of failed cases."""
    overall = [("| format | cases | " + " | ".join(c if c != "ok" else "valid load" for c in CLASSES)
                + " | failures | median ms | p99 ms | max ms | median kB | max peak / size | max peak MiB |"),
               "|---|---:|" + "---:|" * (len(CLASSES) + 7)]
    failures = 0
    for fmt, rows in results.items():
        outcomes = [o for _, o in rows]
        counts = collections.Counter(o.kind for o in outcomes)
        failed = sum(o.failed for o in outcomes)
        failures += failed
        ms = sorted(o.seconds * 1000 for o in outcomes)
        overall.append(
            f"| {fmt} | {len(outcomes)} | " + " | ".join(str(counts.get(c, 0)) for c in CLASSES)
            + f" | {failed} | {statistics.median(ms):.1f} | {ms[int(0.99 * (len(ms) - 1))]:.1f} | {ms[-1]:.1f} | "
            f"{statistics.median(o.size for o in outcomes) / 1000:.0f} | "
            f"{max((o.peak / o.size for o in outcomes if o.size >= RATIO_MIN_SIZE), default=0):.1f} | "
            f"{max(o.peak for o in outcomes) / 2 ** 20:.1f} |")
    families = [("| family | " + " | ".join(f"{fmt}: {short}" for fmt in results for short in ("ok", "err", "max ms"))
                 + " |"), "|---|" + "---:|" * (3 * len(results))]
    for family in FAMILIES:
        cells = []
        for rows in results.values():
            mine = [o for f, o in rows if f == family]
            cells += [str(sum(o.kind == "ok" for o in mine)), str(sum(o.kind != "ok" for o in mine)),
                      f"{max(o.seconds for o in mine) * 1000:.0f}" if mine else "-"]
        families.append(f"| {family} | " + " | ".join(cells) + " |")
    return overall, families, failures


def write_reliability(path: Path, section: str) -> None:
    """Replace this bench's block, or add it at the end of the RELIABILITY section (created when missing)."""
    begin = f"<!-- bench:{NAME} -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text:
        placeholder = f"{begin}\n<!-- /bench:{NAME} -->\n"
        heading = re.search(rf"^{re.escape(SECTION)}\s*$", text, re.MULTILINE)
        if heading is None:
            text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{placeholder}"
        else:
            following = re.search(r"^## ", text[heading.end():], re.MULTILINE)
            at = len(text) if following is None else heading.end() + following.start()
            marker = text.rfind("<!-- bench:", heading.end(), at)  # a block whose own heading follows
            if marker != -1 and following is not None and "<!-- /bench:" not in text[marker:at]:
                at = marker
            text = text[:at].rstrip("\n") + "\n\n" + placeholder + ("\n" + text[at:] if text[at:] else "")
        path.write_text(text)
    write_section(path, section, NAME)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per format (families in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", help="update the fuzzing subsection of RELIABILITY in this Markdown file")
    args = parser.parse_args(argv)
    test_fuzz_loaders.BIG_BASES = True
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for fmt in FORMATS:
            results[fmt] = run(fmt, args.cases, args.seed, Path(work) / f"case-{fmt}.pkl")
            print(f"{fmt}: {len(results[fmt])} cases, {time.perf_counter() - start:.0f} s", flush=True)
    overall, families, failures = summarise(results)
    lines = [
        TITLE, "",
        f"- Command: `python bench/bench_fuzz.py {' '.join(argv)}`".rstrip(),
        (f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
         f"Python {platform.python_version()}; {time.perf_counter() - start:.0f} s in all"),
        (f"- {args.cases} cases per format, the {len(FAMILIES)} families of `tests/test_fuzz_loaders.py` in turn "
         f"(seed {args.seed}); MMSA files go through `read_mmsa_pickle` + `describe` + `content_hash`, MAG files "
         f"through `read_mag_pickle` (stub encoder, max_seq_length 12) + the same"),
        (f"- A failure is any other exception, a time past {SOFT_SECONDS:.0f} s (SIGALRM; faulthandler ends a "
         f"C-level hang), peak memory past {MEMORY_FACTOR} x file size + {MEMORY_FLOOR >> 20} MiB (tracemalloc, in "
         f"a second run of the case), an error message without the file name, a second run ending differently, "
         f"or a payload that ran (marker file, sentinel call, `import this`)"),
        (f"- Times are from the run without tracemalloc (`describe` rendering included); peak/size is the "
         f"largest ratio of a case's peak traced memory to its file size among files of at least "
         f"{RATIO_MIN_SIZE >> 10} kB (smaller ones, down to a few bytes, are dominated by constant overheads: "
         f"their peaks are in the last column)"),
        "", *overall, "",
        (f"**{failures} failures** (unexpected exceptions, timeouts, memory, code execution) in "
         f"{sum(len(r) for r in results.values())} cases."),
        "", "Outcomes per family (`ok` valid loads, `err` clear `DataFormatError`s):", "", *families,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_reliability(Path(args.write), section)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
