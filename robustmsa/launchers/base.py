"""What every launcher does: run phases of independent tasks on some engine and report each task's outcome.

A *task* is one call of an importable, module-level function with picklable arguments (``robustmsa.jobs``
defines the sweep's two: train one model, evaluate one model over all its cells). A *phase* is a list of tasks
that may run in any order; each phase starts only after the previous one has finished (SLURM expresses this as a
job dependency). Launchers never decide what to run: the sweep driver asks the results store what is missing,
hands the launcher those tasks, and asks the store again afterwards, so resume and retry are the same everywhere.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Task", "Phase", "Outcome", "Launcher", "LauncherError", "call_task", "write_probe", "probe_storage"]


class LauncherError(RuntimeError):
    """A launcher could not be configured or could not submit its jobs (the message says why and what to do)."""


@dataclass(frozen=True)
class Task:
    """One job: ``fn(*args)`` where ``fn`` is importable by its module path (so any engine can pickle it)."""

    name: str                   # human-readable, e.g. "eval almt seed 1111"
    fn: Callable[..., Any]
    args: tuple = ()
    gpus: float = 0.0           # GPUs the job needs (fractional: share one; local/SLURM round up to whole slots)


@dataclass(frozen=True)
class Phase:
    """Tasks that may run in any order and in parallel; the next phase waits for all of them."""

    name: str                   # "train" or "eval" for sweeps
    tasks: tuple[Task, ...]


@dataclass
class Outcome:
    """What became of one task: its return value, or the error (type, message and traceback text)."""

    task: Task
    ok: bool
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)   # engine details: SLURM job id, Ray attempt, slot ...
    error_type: str | None = None   # the exception's class name (retrying some, e.g. a full disk, is pointless)


def call_task(task: Task) -> Outcome:
    """Run ``task`` in this process, catching its exception into the outcome (engines call this inside a job)."""
    start = time.perf_counter()
    try:
        value = task.fn(*task.args)
    except Exception as exc:  # reported to the driver, which retries by re-planning from the records
        return Outcome(task, False, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                       seconds=time.perf_counter() - start, error_type=type(exc).__name__)
    return Outcome(task, True, value=value, seconds=time.perf_counter() - start)


class Launcher(ABC):
    """Runs phases of tasks on one engine (local process pool, SLURM through submitit, Ray)."""

    name: str = "launcher"
    #: True: the sweep runs a training phase (one job per untrained model) before the evaluation phase, so each
    #: phase can ask for its own resources (SLURM, Ray). False: evaluation jobs train what the cache lacks.
    train_phase: bool = True

    @abstractmethod
    def run(self, phases: Sequence[Phase]) -> list[list[Outcome]]:
        """Run ``phases`` in order (phase k+1 after all of phase k); one outcome per task, in task order."""

    def default_gpus(self, phase: str, device: str | None) -> float:
        """GPUs a task of ``phase`` ("train" or "eval") asks for unless the sweep says otherwise."""
        return 0.0

    def check_storage(self, out: Path, *more: Path) -> None:
        """Fail before submitting anything if a job cannot write to ``out`` and ``more`` (shared storage, e.g. the
        results directory and the checkpoint cache); local: nothing."""

    def describe(self) -> Mapping[str, Any]:
        """The launcher's settings, for the sweep manifest."""
        return {"launcher": self.name}


def write_probe(paths: str | Sequence[str], token: str) -> str:
    """A job's half of the shared-storage check: write ``token`` to each path; returns the job's host name."""
    import socket

    for path in [paths] if isinstance(paths, str) else paths:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(token)
    return socket.gethostname()


def probe_storage(launcher: Launcher, out: Path, *more: Path) -> None:
    """Run one tiny job through ``launcher`` that writes a token under ``out`` (and each of ``more``, e.g. the
    checkpoint cache); fail clearly unless every token arrives here."""
    import uuid

    token = uuid.uuid4().hex
    dirs = [Path(d).expanduser().resolve() for d in (out, *more)]
    probes = [d / f".robustmsa-storage-probe-{token[:12]}" for d in dirs]
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LauncherError(f"directory {directory} cannot be created here: {exc}") from exc
    task = Task("storage check", write_probe, ([str(p) for p in probes], token))
    [[outcome]] = launcher.run([Phase("storage-check", (task,))])
    try:
        if not outcome.ok:
            detail = (outcome.error or "no detail").splitlines()[0]
            raise LauncherError(f"{launcher.name}: a job could not write to {', '.join(map(str, dirs))} (shared "
                                f"storage is required): {detail}")
        for directory, probe in zip(dirs, probes):
            try:
                seen = probe.read_text()
            except OSError:
                seen = None
            if seen != token:
                raise LauncherError(f"{launcher.name}: a job on {outcome.value} wrote to {directory}, but this "
                                    f"machine does not see the file: results and checkpoint cache must be on "
                                    f"storage shared by the submitting machine and every node")
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)
