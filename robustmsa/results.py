"""The results store: one JSON record per sweep cell, written atomically, keyed by a hash of the cell.

A cell is (method, dataset fingerprint, training seed, train-time noise, resolved method config, corruption,
level, corruption seed, and, outside the default ``features`` text mode, the text mode and encoder). Records on
disk are the source of truth: a sweep skips every cell whose record exists and parses, so an interrupted run
resumes without losing or duplicating anything. ``to_frame`` turns the store into one tidy table (one row per cell
and metric).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ._io import atomic_open

__all__ = ["CellKey", "ResultsStore"]


@dataclass(frozen=True)
class CellKey:
    """Identity of one cell of a sweep grid."""

    method: str
    dataset: str            # dataset fingerprint
    seed: int
    train_noise: str | None
    config_hash: str        # hash of the resolved method config
    corruption: str
    level: float
    corruption_seed: int
    text_mode: str = "features"     # "features" or "reencode" (see robustmsa.corruptions.reencode)
    text_encoder: str | None = None  # the re-encoding encoder's spec (hf:PATH, minilm); None in features mode

    def to_dict(self) -> dict[str, Any]:
        """The key as stored in records; the text-mode fields only outside the default features mode.

        Leaving them out for ``features`` keeps the digests (file names) of every cell written before text modes
        existed, so old and new runs of the default mode share their cells.
        """
        data = asdict(self)
        if self.text_mode == "features" and self.text_encoder is None:
            del data["text_mode"], data["text_encoder"]
        return data

    def digest(self) -> str:
        """SHA-256 (hex, 20 chars) of the canonical JSON of the key."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


class ResultsStore:
    """Cell records under ``root/cells/<method>/<digest>.json``, plus ``root/manifest.json``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"

    def path(self, key: CellKey) -> Path:
        return self.cells / key.method / f"{key.digest()}.json"

    def load(self, key: CellKey) -> dict[str, Any] | None:
        """The record of ``key`` if present and readable (a damaged file counts as missing)."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("key") == key.to_dict() else None

    def has(self, key: CellKey) -> bool:
        return self.load(key) is not None

    def write(self, key: CellKey, record: Mapping[str, Any]) -> Path:
        """Write ``record`` for ``key`` atomically (replacing a damaged or forced one)."""
        path = self.path(key)
        with atomic_open(path, force=True, mode="w") as handle:
            json.dump({**record, "key": key.to_dict(), "digest": key.digest()}, handle, indent=1, default=str)
            handle.write("\n")
        return path

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable cell record (unreadable files are skipped)."""
        if not self.cells.exists():
            return
        for path in sorted(self.cells.glob("*/*.json")):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue

    # ------------------------------------------------------------------ input-coverage audits, one per model
    def coverage_path(self, method: str, model_key: str) -> Path:
        return self.root / "coverage" / method / f"{model_key[:32]}.json"

    def load_coverage(self, method: str, model_key: str) -> dict[str, Any] | None:
        """The coverage record of one trained model, if present and readable."""
        try:
            record = json.loads(self.coverage_path(method, model_key).read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("model_key") == model_key else None

    def write_coverage(self, method: str, model_key: str, record: Mapping[str, Any]) -> Path:
        """Write one model's coverage record atomically."""
        path = self.coverage_path(method, model_key)
        with atomic_open(path, force=True, mode="w") as handle:
            json.dump({**record, "model_key": model_key}, handle, indent=1, default=str)
            handle.write("\n")
        return path

    def coverage_frame(self):
        """One row per (audited model, modality): method, seed, variant keys, coverage fraction and probe."""
        import pandas as pd

        rows = []
        for path in sorted((self.root / "coverage").glob("*/*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for modality, cov in record.get("modalities", {}).items():
                rows.append({"method": record.get("method"), "seed": record.get("seed"),
                             "train_noise": record.get("train_noise"), "dataset": record.get("dataset"),
                             "model_key": record.get("model_key"), "modality": modality,
                             "fraction": cov.get("fraction"), "probe": cov.get("probe")})
        return pd.DataFrame(rows, columns=["method", "seed", "train_noise", "dataset", "model_key", "modality",
                                           "fraction", "probe"])

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        path = self.root / "manifest.json"
        with atomic_open(path, force=True, mode="w") as handle:
            json.dump(manifest, handle, indent=2, default=str)
            handle.write("\n")
        return path

    def to_frame(self):
        """A tidy pandas DataFrame: one row per cell and metric (``text_mode`` "features" for keys without one)."""
        import pandas as pd

        rows = []
        for record in self.records():
            key = {"text_mode": "features", "text_encoder": None, **record["key"]}
            for metric, value in record["metrics"].items():
                rows.append({**key, "dataset_name": record.get("dataset_name"), "metric": metric, "value": value,
                             "higher_is_better": record["higher_is_better"][metric], "digest": record["digest"],
                             "model_key": record.get("model_key")})
        columns = ["method", "dataset_name", "dataset", "seed", "train_noise", "text_mode", "text_encoder",
                   "config_hash", "corruption", "level", "corruption_seed", "metric", "value", "higher_is_better",
                   "digest", "model_key"]
        return pd.DataFrame(rows, columns=columns)
