"""Checkpoint cache: one file per (method, config, dataset fingerprint, seed, train noise, version).

Entries are written atomically with ``torch.save`` and read with ``torch.load(weights_only=True)``; an entry that
cannot be read, or whose metadata does not match its key, is reported as damaged and the caller retrains (and
replaces it). A writer killed mid-save (SIGKILL) leaves at most a temporary file beside the entries, never a
partial entry; temporary files are never loaded, and :func:`load_entry` removes those of dead writers from the
method's directory. A checkpoint that cannot be written (disk full, read-only cache directory) raises
:class:`robustmsa._io.OutputWriteError` naming the file and the cause; nothing partial is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_open, remove_stale_temps

__all__ = ["CacheEntry", "DamagedCacheWarning", "cache_dir", "cache_key", "load_entry", "save_entry"]

CACHE_ENV = "ROBUSTMSA_CACHE"


class DamagedCacheWarning(UserWarning):
    """A cache entry could not be used; the model is retrained and the entry replaced."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint cache: the argument, else ``$ROBUSTMSA_CACHE``, else ``~/.cache/robustmsa/checkpoints``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "robustmsa" / "checkpoints"


def cache_key(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class CacheEntry(dict):
    """What a cache file holds: ``state_dict``, ``meta`` (key payload, history, timings)."""


def entry_path(directory: Path, method: str, key: str) -> Path:
    return directory / method / f"{key[:24]}.pt"


def load_entry(path: Path, key: str) -> CacheEntry | None:
    """The entry at ``path`` if it is intact and belongs to ``key``; None if absent; None + warning if damaged."""
    remove_stale_temps(path.parent)  # leftovers of killed writers (never read; live writers' files are kept)
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("meta", {}).get("key") != key or "state_dict" not in entry:
            raise ValueError("unexpected content or key")
        return CacheEntry(entry)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file: retrain rather than crash
        warnings.warn(f"damaged checkpoint cache entry {path} ({type(exc).__name__}: {exc}); retraining",
                      DamagedCacheWarning, stacklevel=2)
        return None


def save_entry(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write an entry atomically (replacing a damaged one); ``OutputWriteError`` when it cannot be written."""
    hint = ("no checkpoint was cached and nothing partial was left; free space or pass another --cache-dir "
            "(ROBUSTMSA_CACHE), then rerun")
    with atomic_open(path, force=True, hint=hint) as handle:
        torch.save({"state_dict": state_dict, "meta": meta}, handle)
