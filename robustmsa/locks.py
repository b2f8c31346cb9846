"""Exclusive claims on shared work: a lock file created atomically, kept fresh by a heartbeat, broken when stale.

Several sweeps may write into one results directory at once (overlapping grids, job arrays, a rerun started while
the first is still going). Before evaluating a model's cells, a job claims the model with :class:`FileClaim`; it
re-reads the store under the claim, so every cell is computed and written exactly once.

Protocol (documented in docs/reliability.md):

* claim: ``os.open(path, O_CREAT | O_EXCL | O_WRONLY)`` -- atomic on local file systems and on NFSv3+ (also
  Lustre, GPFS, BeeGFS); the file holds the owner's host, pid and start time;
* heartbeat: while held, a daemon thread touches the file every ``heartbeat`` seconds;
* stale: a claim whose owner is on this host and no longer alive, or whose file has not been touched for
  ``stale_after`` seconds (clocks of the nodes must agree to well within that), may be broken. A breaker first
  creates ``<path>.break`` with ``O_EXCL`` (one breaker at a time), re-checks, renames the stale file aside and
  deletes it, then claims afresh like everyone else;
* release: the owner removes the file when done (also on exceptions and SIGTERM); a SIGKILLed owner's claim goes
  stale and is broken by the next job.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["FileClaim", "ClaimHeld", "read_owner", "is_stale"]

DEFAULT_STALE_AFTER = 120.0
DEFAULT_HEARTBEAT = 20.0
EMPTY_STALE_AFTER = 30.0   # a claim file without an owner record (its creator was killed right after creating it)
GUARD_STALE_AFTER = 10.0   # a break guard left by a breaker killed inside its (microseconds long) critical section


class ClaimHeld(Exception):
    """The claim is held by another live process (``owner`` says which)."""

    def __init__(self, path: Path, owner: dict[str, Any] | None) -> None:
        who = f"{owner.get('host')}:{owner.get('pid')}" if owner else "another process"
        super().__init__(f"{path} is held by {who}")
        self.path, self.owner = path, owner


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record of a claim file; None if absent or unreadable (e.g. still being written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(path: Path, *, stale_after: float = DEFAULT_STALE_AFTER, now: float | None = None) -> bool:
    """True if the claim at ``path`` may be broken: owner dead on this host, or no heartbeat for ``stale_after``."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = read_owner(path)
    age = (now if now is not None else time.time()) - mtime
    if owner is None:  # the owner writes its record right after creating the file: killed in between
        return age > EMPTY_STALE_AFTER
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
        return True
    return age > stale_after


class FileClaim:
    """An exclusive, heartbeat-refreshed claim on ``path`` (use as a context manager or acquire/release)."""

    def __init__(self, path: str | os.PathLike, *, stale_after: float = DEFAULT_STALE_AFTER,
                 heartbeat: float = DEFAULT_HEARTBEAT, label: str = "") -> None:
        self.path = Path(path)
        self.stale_after, self.heartbeat, self.label = float(stale_after), float(heartbeat), label
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Claim now if free or stale; False if another live owner holds it."""
        from ._io import OutputWriteError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputWriteError.from_error(self.path.parent, exc) from exc
        for _ in range(3):
            if self._create():
                return True
            if not is_stale(self.path, stale_after=self.stale_after):
                return False
            self._break()
        return False

    def acquire(self, *, timeout: float | None = None, poll: float = 1.0) -> None:
        """Claim, waiting up to ``timeout`` seconds (None: forever) for another owner to finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                raise ClaimHeld(self.path, read_owner(self.path))
            time.sleep(poll)

    def release(self) -> None:
        """Stop the heartbeat and remove the file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held:
            owner = read_owner(self.path)
            if owner is not None and owner.get("token") == self._token:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FileClaim":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _create(self) -> bool:
        from ._io import OutputWriteError

        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:  # read-only or full file system: say so in one line
            raise OutputWriteError.from_error(self.path, exc) from exc
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token, "label": self.label,
                 "created": time.time()}
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
        except BaseException as exc:
            self.path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise OutputWriteError.from_error(self.path, exc) from exc
            raise
        self.held = True
        self._stop.clear()
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {self.path.name}",
                                            daemon=True)
            self._thread.start()
        return True

    def _break(self) -> None:
        """Move a stale claim aside and delete it, under a short-lived break lock so that two breakers cannot
        both break (the second would otherwise remove the first one's fresh claim)."""
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker killed inside this tiny window leaves its guard behind
                if time.time() - guard.stat().st_mtime > GUARD_STALE_AFTER:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            if is_stale(self.path, stale_after=self.stale_after):
                aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:12]}")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    return
                aside.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return
