"""Small file utilities shared by every writer: atomic writes, hashing, refusal to overwrite, clear write errors.

Every output goes through :func:`atomic_open`: the bytes go to a temporary file beside the target (named
``.<target name>.<host>.<pid>.<random>.tmp``) that is moved into place in one ``os.replace`` only when the block
succeeds. Readers therefore see a complete file or none, and never read temporary files (no reader globs for
them). A temporary file is removed on any error; only a hard kill (SIGKILL, power loss) can leave one behind,
and :func:`remove_stale_temps` removes those of dead writers later (the results store and the checkpoint cache
call it; see their docs).

A write that fails for lack of space or permission (disk full, quota, read-only file system or directory) raises
:class:`OutputWriteError`, an ``OSError`` whose message names the file and the cause in one line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["TEMP_SUFFIX", "OutputExistsError", "OutputWriteError", "atomic_open", "remove_stale_temps",
           "sha256_file"]

_CHUNK = 8 << 20
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 6 * 3600.0  # a temporary file this old belongs to a dead writer, whoever it was

#: errors that mean "the data does not fit": raised by a write anywhere in the block, they are reported as ours
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_REASONS = {
    errno.ENOSPC: "no space left on device (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EFBIG: "file too large for the file system (EFBIG)",
    errno.EROFS: "read-only file system (EROFS)",
    errno.EACCES: "permission denied (EACCES): the directory is read-only or not yours",
    errno.EPERM: "operation not permitted (EPERM)",
}


class OutputExistsError(FileExistsError):
    """Raised when an output file exists and the caller did not ask to overwrite it."""


class OutputWriteError(OSError):
    """An output could not be written (disk full, quota, read-only or forbidden directory, ...).

    ``errno`` is the underlying error's, ``filename`` the output that was being written, ``strerror`` (and
    ``str()``) one line: ``cannot write PATH: REASON; HINT``. The target was left as it was (an existing file
    is kept whole) and no temporary file remains.
    """

    def __str__(self) -> str:
        return str(self.strerror)

    @classmethod
    def from_error(cls, path: str | os.PathLike, exc: OSError, hint: str | None = None) -> OutputWriteError:
        code = exc.errno
        reason = _REASONS.get(code) if code is not None else None
        if reason is None:
            name = errno.errorcode.get(code, "") if code is not None else ""
            reason = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
        hint = hint or "the file was left as it was and no temporary file remains"
        return cls(code, f"cannot write {path}: {reason}; {hint}", str(path))

    def with_hint(self, hint: str) -> OutputWriteError:
        """The same error with ``hint`` (what the caller's reader should know) after the reason."""
        head = str(self).split("; ", 1)[0]
        new = type(self)(self.errno, f"{head}; {hint}", self.filename)
        new.__cause__ = self.__cause__
        return new


def _space_error(exc: BaseException | None) -> OSError | None:
    """The out-of-space OSError in ``exc``'s chain, if any (torch.save, for one, wraps it in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _discard(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError:  # nothing more can be done; the original error is the one to report
        pass


@contextmanager
def atomic_open(path: str | os.PathLike, *, force: bool = False, mode: str = "wb",
                hint: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it into place only if the block succeeds.

    Readers never see a half-written file, and an existing ``path`` is kept unless ``force`` is true
    (then it is replaced in one ``os.replace``). On any error the temporary file is removed.

    Failures to write -- creating the directory or the temporary file, writing, flushing, ``fsync``, the final
    rename, or an out-of-space error (ENOSPC, EDQUOT, EFBIG) raised while the block writes -- become
    :class:`OutputWriteError` naming ``path`` and the cause; ``hint`` replaces its default closing advice.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; pass --force (force=True) to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a directory should be
        raise OutputWriteError(exc.errno, f"cannot write {target}: {target.parent} or a directory above it is "
                               f"a file, not a directory", str(target)) from exc
    except OSError as exc:
        raise OutputWriteError.from_error(target, exc, hint) from exc
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_host_tag()}.{os.getpid()}.",
                                        suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise OutputWriteError.from_error(target, exc, hint) from exc
    in_block = False
    try:
        try:
            os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            handle = os.fdopen(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        with handle:
            in_block = True
            yield handle
            in_block = False
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(f"{target} appeared while writing; pass --force to overwrite it")
        os.replace(tmp_name, target)
    except BaseException as exc:
        _discard(tmp_name)
        if isinstance(exc, (OutputWriteError, FileExistsError)):
            raise
        cause = _space_error(exc) if in_block else (exc if isinstance(exc, OSError) else None)
        if cause is not None:
            raise OutputWriteError.from_error(target, cause, hint) from exc
        raise


def _temp_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of a temporary file named by :func:`atomic_open`; None for other names."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[1:-len(TEMP_SUFFIX)].rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, *, recursive: bool = False,
                       max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove temporary files of :func:`atomic_open` whose writer is gone; returns the removed paths.

    A temporary file is stale when its writer ran on this host and that process no longer exists, or when it
    is older than ``max_age`` seconds (writers on other hosts, files named before writers were recorded in the
    name). Temporary files of live writers -- another sweep writing into the same directory -- are kept. Files
    that cannot be removed (a read-only directory) are left alone, silently: they are never read anyway.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    pattern = f"**/.*{TEMP_SUFFIX}" if recursive else f".*{TEMP_SUFFIX}"
    host, now, removed = _host_tag(), time.time(), []
    for path in root.glob(pattern):
        owner = _temp_owner(path.name)
        try:
            if owner is not None and owner[0] == host and owner[1] != os.getpid() and not _alive(owner[1]):
                stale = True
            else:
                stale = now - path.stat().st_mtime > max_age
            if stale and path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def sidecar_path(out: str | os.PathLike) -> Path:
    """Where the provenance JSON of ``out`` goes: ``<out>.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def claim_outputs(out: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuse, before any work, an existing ``out`` or ``<out>.json`` unless ``force``; returns the sidecar path."""
    sidecar = sidecar_path(out)
    for path in (Path(out), sidecar):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists; pass --force (force=True) to overwrite it")
    return sidecar


def write_sidecar(out: str | os.PathLike, record: Any) -> Path:
    """Write ``record`` as ``<out>.json`` atomically; if that fails, remove ``out`` (no output without provenance)."""
    import json

    sidecar = sidecar_path(out)
    try:
        with atomic_open(sidecar, force=True, mode="w") as handle:
            json.dump(record, handle, indent=2, default=str)
            handle.write("\n")
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise
    return sidecar
