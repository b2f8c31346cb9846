"""Small file utilities shared by every writer: atomic writes, hashing, refusal to overwrite."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "sha256_file", "OutputExistsError"]

_CHUNK = 8 << 20


class OutputExistsError(FileExistsError):
    """Raised when an output file exists and the caller did not ask to overwrite it."""


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


@contextmanager
def atomic_open(path: str | os.PathLike, *, force: bool = False, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it into place only if the block succeeds.

    Readers never see a half-written file, and an existing ``path`` is kept unless ``force`` is true
    (then it is replaced in one ``os.replace``). On any error the temporary file is removed.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; pass --force (force=True) to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(f"{target} appeared while writing; pass --force to overwrite it")
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


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
