"""The default launcher: jobs on this machine, in this process (``--jobs 1``) or a process pool with GPU slots.

With ``jobs > 1`` (or GPU slots) every job runs in a fresh process (``spawn``, one task per child), and a
slot queue in the driver hands each job a device: ``CUDA_VISIBLE_DEVICES`` is set to the job's GPU before the job
touches CUDA, and to the empty string for CPU jobs (so a CPU job never grabs a GPU). A fresh process per job keeps
that assignment true (CUDA reads the variable once per process) and costs one torch import per job -- paid once
per model anyway, since one job is one model. CPU jobs share the cores: each sets torch's thread count to
``cores // jobs``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Mapping, Sequence

from ..stop import StopRequested, stop_requested
from .base import Launcher, LauncherError, Outcome, Phase, Task, call_task

__all__ = ["LocalLauncher", "detect_gpus"]


def detect_gpus() -> list[str]:
    """GPU ids visible to this process: ``$CUDA_VISIBLE_DEVICES`` if set, else torch's device count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA runtime: CPU only
        return []


def _run_in_slot(task: Task, slot: str, threads: int) -> Outcome:
    """Inside a worker: pin the job to its slot (GPU id or "" for CPU), then run it."""
    os.environ["CUDA_VISIBLE_DEVICES"] = slot
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    torch = sys.modules.get("torch")  # imported later, torch reads OMP_NUM_THREADS itself
    if torch is not None:
        torch.set_num_threads(threads)
    from ..stop import handle_sigterm

    with handle_sigterm():  # the driver forwards its SIGTERM: finish the current cell, then stop
        outcome = call_task(task)
    outcome.info.update({"slot": slot, "pid": os.getpid(), "threads": threads})
    return outcome


class LocalLauncher(Launcher):
    """Run jobs on this machine.

    Args:
        jobs: parallel workers (1: in this process, no pool).
        gpus: GPU ids for the slot queue (None: detected; [] : CPU only). Tasks needing GPUs take a slot.
        jobs_per_gpu: slots per GPU (several small evaluations can share one GPU).
    """

    name = "local"
    train_phase = False  # each job trains its model if the cache lacks it and evaluates it in the same process

    def __init__(self, jobs: int = 1, gpus: Sequence[str] | None = None, jobs_per_gpu: int = 1) -> None:
        if int(jobs) < 1:
            raise LauncherError(f"local launcher: jobs must be >= 1, got {jobs}")
        if int(jobs_per_gpu) < 1:
            raise LauncherError(f"local launcher: jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
        self.jobs = int(jobs)
        self.gpus = [str(g) for g in gpus] if gpus is not None else None
        self.jobs_per_gpu = int(jobs_per_gpu)

    def describe(self) -> Mapping[str, Any]:
        return {"launcher": self.name, "jobs": self.jobs, "gpus": self._gpus(), "jobs_per_gpu": self.jobs_per_gpu}

    def _gpus(self) -> list[str]:
        return self.gpus if self.gpus is not None else (detect_gpus() if self.jobs > 1 else [])

    def run(self, phases: Sequence[Phase]) -> list[list[Outcome]]:
        gpus = self._gpus()
        if self.jobs == 1 and not gpus:
            return [self._run_here(phase) for phase in phases]
        return [self._run_pool(phase, gpus) for phase in phases]

    def default_gpus(self, phase: str, device: str | None) -> float:
        return 1.0 if device != "cpu" and self._gpus() else 0.0

    @staticmethod
    def _run_here(phase: Phase) -> list[Outcome]:
        """In this process, one task after another; a SIGTERM stops after the task it interrupted."""
        outcomes = []
        for task in phase.tasks:
            outcome = call_task(task)
            outcomes.append(outcome)
            if stop_requested():
                why = outcome.error.splitlines()[0].removeprefix("StopRequested: ") if outcome.error else "SIGTERM"
                raise StopRequested(f"{why} (in {task.name}); finished cells are kept, rerun to resume")
        return outcomes

    def _run_pool(self, phase: Phase, gpus: list[str]) -> list[Outcome]:
        """Each task in its own spawned process; at most ``jobs`` at once; GPU tasks wait for a free slot."""
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        free_slots = [gpu for _ in range(self.jobs_per_gpu) for gpu in gpus]
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        outcomes: list[Outcome | None] = [None] * len(phase.tasks)
        waiting = list(range(len(phase.tasks)))
        running: dict[Any, tuple[int, Any, Any, str | None, float]] = {}  # sentinel -> index, process, pipe, ...
        results: dict[int, Outcome] = {}
        forwarded = False
        try:
            while waiting or running:
                if stop_requested() and not forwarded:  # SIGTERM: no new jobs; running ones stop cleanly
                    waiting.clear()
                    forwarded = True
                    for _, process, _, _, _ in running.values():
                        if process.pid is not None:
                            os.kill(process.pid, signal.SIGTERM)
                while waiting and len(running) < self.jobs:
                    index = waiting[0]
                    task = phase.tasks[index]
                    slot: str | None = None
                    if task.gpus > 0:
                        if not gpus:
                            raise LauncherError(f"{task.name} needs a GPU but no GPU slots are available "
                                                f"(pass gpus / --gpus, or run on CPU)")
                        if not free_slots:
                            break  # wait for a GPU job to finish
                        slot = free_slots.pop(0)
                    waiting.pop(0)
                    reader, writer = context.Pipe(duplex=False)  # one pipe per job: reports never interleave
                    process = context.Process(target=_child, args=(task, slot or "", threads, writer),
                                              name=f"robustmsa {task.name}", daemon=False)
                    process.start()
                    writer.close()  # the child holds the only writing end: EOF once it exits
                    running[process.sentinel] = (index, process, reader, slot, time.perf_counter())
                pipes = {entry[2]: sentinel for sentinel, entry in running.items()}
                for ready in wait([*pipes, *running], timeout=0.5):
                    if ready in pipes:  # read reports as they come, so a large one never blocks its sender
                        try:
                            results[running[pipes[ready]][0]] = ready.recv()
                        except (EOFError, OSError):
                            pass
                for sentinel in [s for s in running if not running[s][1].is_alive()]:
                    index, process, reader, slot, started = running.pop(sentinel)
                    process.join()
                    if index not in results and reader.poll():
                        try:
                            results[index] = reader.recv()
                        except (EOFError, OSError):
                            pass
                    reader.close()
                    if slot is not None:
                        free_slots.append(slot)
                    outcome = results.pop(index, None)
                    if outcome is None:  # killed, out of memory, crashed interpreter: report, never crash
                        code = process.exitcode
                        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                               else f"exit code {code}")
                        outcome = Outcome(phase.tasks[index], False, error=f"job process died ({how})",
                                          seconds=time.perf_counter() - started, info={"slot": slot})
                    outcomes[index] = outcome
        finally:
            for _, process, reader, _, _ in running.values():  # only on an error in the driver itself
                process.kill()
                reader.close()
        if forwarded:
            finished = sum(o is not None and o.ok for o in outcomes)
            raise StopRequested(f"SIGTERM: {finished} job(s) of phase {phase.name!r} finished before the stop")
        return [o if o is not None else Outcome(t, False, error="not run") for o, t in zip(outcomes, phase.tasks)]


def _child(task: Task, slot: str, threads: int, writer) -> None:
    """Entry point of a job process: run the task in its slot and send the outcome back."""
    outcome = _run_in_slot(task, slot, threads)
    try:
        writer.send(outcome)
    except Exception as exc:  # an unpicklable return value: report that instead
        writer.send(Outcome(task, False, error=f"job result could not be sent back: {exc}",
                            seconds=outcome.seconds, info=outcome.info))
    finally:
        writer.close()
