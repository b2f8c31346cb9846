"""Graceful stops: SIGTERM (what SLURM, Kubernetes and ``kill`` send) ends a sweep cleanly.

Inside :func:`handle_sigterm`, the first SIGTERM asks the running job to stop: a cell being evaluated is finished
and written, then :class:`StopRequested` is raised before the next one; training in progress (inside
:func:`training_section`) is abandoned at once, since nothing of it has been written (checkpoints are written
atomically at the end). A second SIGTERM stops immediately. Either way every record already written is complete,
and rerunning the same command resumes.

The flag is process state by necessity (signal handlers have nowhere else to write); it is set only while a
:func:`handle_sigterm` block is active and cleared when it ends.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["StopRequested", "handle_sigterm", "stop_requested", "training_section", "request_stop"]


class StopRequested(Exception):
    """A SIGTERM asked the sweep to stop; finished cells are kept, rerun the command to resume."""


class _State:
    def __init__(self) -> None:
        self.requested = False
        self.signals = 0
        self.training = 0


_STATE = _State()


def stop_requested() -> bool:
    """True once a stop was requested in the active :func:`handle_sigterm` block."""
    return _STATE.requested


def request_stop() -> None:
    """Ask for a stop as a SIGTERM would (for launchers forwarding a stop, and tests)."""
    _STATE.requested = True


@contextmanager
def training_section() -> Iterator[None]:
    """Mark training in progress: a SIGTERM now abandons it immediately instead of waiting for the next cell."""
    if _STATE.requested:
        raise StopRequested("stop requested before training started")
    _STATE.training += 1
    try:
        yield
    finally:
        _STATE.training -= 1


def _on_sigterm(signum: int, frame: object) -> None:
    _STATE.signals += 1
    _STATE.requested = True
    if _STATE.training or _STATE.signals > 1:
        raise StopRequested("SIGTERM received during training; nothing of the interrupted model was written"
                            if _STATE.training else "second SIGTERM received; stopped at once")


@contextmanager
def handle_sigterm() -> Iterator[None]:
    """Install the graceful SIGTERM handler for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _on_sigterm:
        yield  # not ours to install here, or already installed by an enclosing block (a job inside a sweep)
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _STATE.requested, _STATE.signals = False, 0
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STATE.requested, _STATE.signals = False, 0
