"""Module-level job functions for the slurm and ray launcher tests (jobs elsewhere import them by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def environment(tag: str) -> dict:
    """What the job saw: its GPUs, threads, the setup lines' variable, SLURM's ids, its process."""
    names = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "ROBUSTMSA_FAKE_SETUP", "SLURM_ARRAY_JOB_ID",
             "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID")
    return {"tag": tag, "pid": os.getpid(), **{name: os.environ.get(name) for name in names}}


def die() -> None:
    """Kill this job's own process, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def _attempt(log: str) -> int:
    path = Path(log)
    with path.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def die_on_first_attempt(log: str, value: int) -> dict:
    """First attempt: work a little, then SIGKILL the own process mid-way; later attempts finish."""
    attempt = _attempt(log)
    if attempt == 1:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"value": value, "attempt": attempt, "pid": os.getpid()}


def fail_counting(log: str) -> None:
    """Raise after logging the attempt (an exception must not be retried)."""
    _attempt(log)
    raise ValueError("deliberate failure")


def die_always(log: str) -> None:
    _attempt(log)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
