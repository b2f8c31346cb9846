"""Module-level job functions for the local-launcher tests (spawned job processes import them by name)."""

from __future__ import annotations

import os
import signal
import time


def record_slot(seconds: float) -> dict:
    """Sleep, and report the GPU slot this job saw and when it ran."""
    start = time.time()
    time.sleep(seconds)
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(), "pid": os.getpid()}


def rendezvous(folder: str, name: str, parties: int, timeout: float = 60.0) -> dict:
    """Announce this job in ``folder`` and wait until ``parties`` jobs have: True only if they ran at once."""
    from pathlib import Path

    (Path(folder) / name).touch()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(Path(folder).iterdir())) >= parties:
            return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "met": True}
        time.sleep(0.01)
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "met": False}


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    """Kill this job's own process, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def big_result(size: int) -> bytes:
    return b"x" * size
