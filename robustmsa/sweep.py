"""Noise sweeps: train each (method, seed) once, evaluate it under every corruption and level, one record per cell.

The driver plans jobs from the results store -- one job per (method, seed) model whose cells are not all
recorded -- hands them to a launcher (``robustmsa.launchers``: ``local`` by default, ``slurm``, ``ray``), and asks
the store again afterwards; it repeats until every cell is recorded or a job keeps failing. Resume, retry and
concurrent sweeps into one directory therefore work the same on every engine. Training goes through the engine's
checkpoint cache, so a model is trained at most once per (method, config, dataset, seed, train noise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .corruptions import create_corruption
from .corruptions.reencode import check_text_mode
from .datasets.split import Dataset
from .jobs import (DatasetRef, SweepSpec, evaluate_model, is_trained, missing_cells, plan_jobs,
                   train_model)
from .launchers.base import Launcher, Outcome, Phase, Task
from .locks import is_stale
from .provenance import environment, utc_now
from .results import ResultsStore
from .stop import handle_sigterm

if TYPE_CHECKING:
    from .text_encoding import LocalTextEncoder

__all__ = ["parse_levels", "SweepSummary", "SweepIncomplete", "run_sweep"]


def parse_levels(text: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma list, levels in [0, 1]: ``0:0.9:0.1`` -> 0.0 ... 0.9.

    Malformed input is a one-line ``ValueError`` that names the problem: an empty spec, a part that is not a
    (finite) number, a level, START or STOP outside [0, 1] (checked before a range is expanded), STEP <= 0,
    STOP < START, a repeated level, or more than 10000 levels.
    """
    max_levels = 10000
    spec = text.strip()
    usage = "expected START:STOP:STEP (stop included, e.g. 0:0.9:0.1) or a comma list (e.g. 0,0.3,0.6)"

    def number(part: str, what: str, unit_interval: bool = True) -> float:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"levels {text!r}: {what} {part.strip()!r} is not a number; {usage}") from None
        if unit_interval and not 0.0 <= value <= 1.0:  # also NaN
            raise ValueError(f"levels {text!r}: {what} must be in [0, 1], got {part.strip()}")
        if not math.isfinite(value):
            raise ValueError(f"levels {text!r}: {what} must be a finite number, got {part.strip()}")
        return value

    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError(f"levels {text!r}: {usage}")
        start, stop = number(parts[0], "START"), number(parts[1], "STOP")
        step = number(parts[2], "STEP", unit_interval=False)
        if step <= 0:
            raise ValueError(f"levels {text!r}: STEP must be > 0, got {parts[2].strip()}")
        if stop < start:
            raise ValueError(f"levels {text!r}: STOP {parts[1].strip()} is below START {parts[0].strip()}")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > max_levels:
            raise ValueError(f"levels {text!r}: {count} levels; at most {max_levels} (use a larger STEP)")
        levels = [min(round(start + i * step, 10), stop) for i in range(count)]
    else:
        levels = [number(p, "level") for p in spec.split(",") if p.strip()]
    if not levels:
        raise ValueError(f"levels {text!r}: no levels; {usage}")
    repeated = sorted({v for v in levels if levels.count(v) > 1})
    if repeated:
        raise ValueError(f"levels {text!r}: level {repeated[0]:g} is given more than once")
    return sorted(levels)


@dataclass
class SweepSummary:
    """Counts of a sweep run and where its results are."""

    total: int
    computed: int
    skipped: int
    trained: int
    out: Path
    seconds: float
    rounds: int = 1
    jobs_run: int = 0
    failures: list[str] = field(default_factory=list)   # "<job>: <first line of the error>" of failed attempts


class SweepIncomplete(RuntimeError):
    """Jobs kept failing: the cells listed are still missing (rerun to retry them)."""


#: Job errors that end a sweep at once instead of being retried: the output cannot be written (disk full,
#: read-only, quota) or the results directory holds records of a newer schema.
FATAL_ERRORS = frozenset({"OutputWriteError", "SchemaVersionError"})


def run_sweep(methods: Sequence[str], dataset: Dataset, corruptions: Sequence[str], levels: Sequence[float],
              seeds: Sequence[int], out: str | Path, *, corruption_seed: int = 1111, epochs: int | None = None,
              overrides: Mapping[str, Any] | None = None, text_backbone: str | None = None,
              train_noise: str | None = None, device: str | None = "auto", cache: str | Path | None = None,
              force: bool = False, quiet: bool = True, log: Callable[[str], None] | None = None,
              command: str | None = None, text_mode: str = "features",
              text_encoder: "str | LocalTextEncoder | None" = None,
              allow_encoder_mismatch: bool = False, audit_samples: int = 32,
              launcher: Launcher | None = None, dataset_ref: DatasetRef | None = None, max_rounds: int = 3,
              train_gpus: float | None = None, eval_gpus: float | None = None,
              poll_seconds: float = 5.0, stale_after: float = 120.0) -> SweepSummary:
    """Run (or resume) the grid methods x seeds x corruptions x levels on ``dataset``; records go to ``out``.

    Each trained model is also audited for input coverage on ``audit_samples`` test items (``robustmsa.audit``,
    gradient probe; 0 turns it off), written to ``out/coverage/<method>/<model key>.json`` for the leaderboard.

    ``text_mode="reencode"`` loads ``text_encoder``, checks it against the clean test features, and re-encodes
    each corrupted test split once per (corruption, level) and process; its cells get keys of their own.

    ``launcher`` runs the jobs (default: ``LocalLauncher(jobs=1)``, in this process). Jobs in other processes or
    on other machines reload the dataset from ``dataset_ref`` (a registered name or pickle path); without one the
    ``dataset`` object itself is sent (fine for local pools, not for clusters). A job that fails is retried in
    the next round, up to ``max_rounds`` rounds with failures; then :class:`SweepIncomplete` is raised. Models
    claimed by another live sweep are waited for (polling every ``poll_seconds``), never computed twice.
    """
    from .jobs import _CORRUPTED, _reencoder
    from .launchers.local import LocalLauncher

    start = time.perf_counter()
    say = log or (lambda message: None)
    launcher = launcher or LocalLauncher(jobs=1)
    store = ResultsStore(out)
    for name in corruptions:  # fail on a bad corruption name before any training
        create_corruption(name, 0.0)
    check_text_mode(text_mode, text_encoder)
    in_process = isinstance(launcher, LocalLauncher) and launcher.jobs == 1 and not launcher.gpus
    if dataset_ref is None and not isinstance(launcher, LocalLauncher):
        raise ValueError(f"the {launcher.name} launcher runs jobs on other machines: they need a dataset_ref "
                         f"(a registered name or a pickle path), not an in-memory dataset")
    spec = SweepSpec(tuple(methods), dataset if in_process or dataset_ref is None else dataset_ref,
                     tuple(corruptions), tuple(float(v) for v in levels), tuple(int(s) for s in seeds), str(out),
                     corruption_seed=int(corruption_seed), epochs=epochs, overrides=dict(overrides or {}),
                     text_backbone=text_backbone, train_noise=train_noise, device=device,
                     cache=None if cache is None else str(cache), text_mode=text_mode, text_encoder=text_encoder,
                     allow_encoder_mismatch=allow_encoder_mismatch, audit_samples=int(audit_samples),
                     force=force, stale_after=float(stale_after))
    reencoder = _reencoder(spec, dataset, None)  # load and check the encoder here, before any job runs
    mode = {"text_mode": "features", "text_encoder": None} if reencoder is None else reencoder.describe()
    if not in_process and not isinstance(spec.text_encoder, (str, type(None))):
        raise ValueError("jobs in other processes need the text encoder as a spec string (hf:DIR or minilm)")
    grid = {"methods": list(methods), "corruptions": list(corruptions), "levels": list(spec.levels),
            "seeds": list(spec.seeds), "corruption_seed": corruption_seed, "train_noise": train_noise,
            "text_mode": text_mode, "text_encoder": spec.encoder_spec}
    if not isinstance(launcher, LocalLauncher):  # shared storage: jobs write records here and checkpoints there
        from .engine.cache import cache_dir

        launcher.check_storage(store.root, cache_dir(spec.cache))
    store.write_manifest({"kind": "robustmsa.sweep", "command": command, "created": utc_now(), "grid": grid,
                          "dataset": dataset.spec.to_dict(), "epochs": epochs, "overrides": dict(overrides or {}),
                          "text_backbone": text_backbone, **mode, "launcher": dict(launcher.describe()),
                          "environment": environment()})
    jobs = plan_jobs(spec)
    total = len(jobs) * len(spec.corruptions) * len(spec.levels)
    gpus = {phase: (given if given is not None else launcher.default_gpus(phase, device))
            for phase, given in (("train", train_gpus), ("eval", eval_gpus))}
    summary = SweepSummary(total, 0, 0, 0, store.root, 0.0, rounds=0)
    failed_rounds = 0
    first = True
    try:
        with handle_sigterm(), _progress(quiet, total) as progress:
            while True:
                todo = [(job, missing) for job in jobs if (missing := missing_cells(job, dataset, store))]
                done = total - sum(len(m) for _, m in todo)
                if first:  # cells recorded before this run started
                    summary.skipped = done
                    first = False
                progress.completed(done)
                if not todo:
                    break
                spec_jobs = [job for job, _ in todo]
                summary.rounds += 1
                phases = []
                if launcher.train_phase:
                    untrained = [job for job in spec_jobs if not is_trained(job, dataset)]
                    if untrained:
                        phases.append(Phase("train", tuple(Task(f"train {j.name}", train_model, (j,),
                                                                gpus=gpus["train"]) for j in untrained)))
                phases.append(Phase("eval", tuple(Task(f"eval {j.name}", evaluate_model, (j,), gpus=gpus["eval"])
                                                  for j in spec_jobs)))
                say(f"round {summary.rounds}: {len(spec_jobs)} model job(s) on {launcher.name}"
                    + (f", {len(phases[0].tasks)} to train first" if len(phases) == 2 else ""))
                results = launcher.run(phases)
                failures = _account(summary, results, progress, say)
                held = [o.value for o in results[-1] if o.ok and o.value.get("held")]
                fatal = [o for phase in results for o in phase if not o.ok and o.error_type in FATAL_ERRORS]
                if fatal:  # a full disk or a results schema from the future: retrying cannot help
                    raise SweepIncomplete(f"{fatal[0].task.name}: {(fatal[0].error or '').splitlines()[0]}")
                if failures:
                    failed_rounds += 1
                    if failed_rounds >= max_rounds:
                        missing = sum(len(missing_cells(job, dataset, store)) for job in plan_jobs(spec))
                        raise SweepIncomplete(f"{missing} cell(s) still missing after {failed_rounds} round(s) "
                                              f"with failures; last: {failures[-1]}. Finished cells are kept: "
                                              f"rerun the same command to retry.")
                elif held:
                    _wait_for_claims(held, poll_seconds, stale_after, say)
                elif not any(o.ok and (o.value.get("computed") or o.value.get("skipped")) for o in results[-1]):
                    raise SweepIncomplete("a round finished without errors but wrote nothing; cells are still "
                                          "missing (is the results directory writable and shared?)")
                if force:  # one pass over every cell
                    break
    finally:
        _CORRUPTED.clear()
    _write_tables(store)
    summary.seconds = time.perf_counter() - start
    return summary


def _account(summary: SweepSummary, results: list[list[Outcome]], progress, say) -> list[str]:
    """Add a round's outcomes to ``summary``; returns the failures of this round as one-liners."""
    failures = []
    for phase in results:
        for outcome in phase:
            summary.jobs_run += 1
            if not outcome.ok:
                line = (outcome.error or "failed").strip().splitlines()[0]
                failures.append(f"{outcome.task.name}: {line}")
                say(f"job failed: {outcome.task.name}: {line}")
                continue
            value = outcome.value or {}
            summary.trained += int(bool(value.get("trained")))
            if "computed" in value:
                summary.computed += int(value["computed"])
                progress.advance(int(value["computed"]))
    summary.failures.extend(failures)
    return failures


def _wait_for_claims(held: list[dict], poll: float, stale_after: float, say) -> None:
    """Wait until the models other sweeps hold are released (or their claims go stale)."""
    paths = [Path(value["claim"]) for value in held]
    say(f"waiting for {len(paths)} model(s) claimed by another sweep")
    while any(p.exists() and not is_stale(p, stale_after=stale_after) for p in paths):
        time.sleep(poll)


class _progress:
    """A cell-count progress bar (rich), or nothing when quiet."""

    def __init__(self, quiet: bool, total: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TimeRemainingColumn(), disable=quiet)
        self._task = self._progress.add_task("sweep", total=total)

    def __enter__(self) -> "_progress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def completed(self, count: int) -> None:
        self._progress.update(self._task, completed=count)


def _write_tables(store: ResultsStore) -> None:
    """results.csv (and results.parquet when pyarrow is present), each written atomically."""
    from ._io import atomic_open

    frame = store.to_frame()
    with atomic_open(store.root / "results.csv", force=True, mode="w") as handle:
        frame.to_csv(handle, index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # the CSV holds the same table
        return
    with atomic_open(store.root / "results.parquet", force=True) as handle:
        frame.to_parquet(handle, index=False)
