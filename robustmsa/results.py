"""The results store: one JSON record per sweep cell, written atomically, keyed by a hash of the cell.

A cell is (method, dataset fingerprint, training seed, train-time noise, resolved method config, corruption,
level, corruption seed, and, outside the default ``features`` text mode, the text mode and encoder). Records on
disk are the source of truth: a sweep skips every cell whose record exists and is valid, so an interrupted run
resumes without losing or duplicating anything. ``to_frame`` turns the store into one tidy table (one row per cell
and metric).

**Schema versions.** Every record the store writes -- cell records, coverage records, the manifest -- carries
``"schema_version": SCHEMA_VERSION`` and a ``kind``. Every reader here (``load``/``has``, ``records``,
``to_frame``, ``load_coverage``, ``coverage_frame``, ``read_manifest``; the robustness summaries, plots and
leaderboards read through them) passes each record through :func:`migrate`, which upgrades older layouts one
version at a time (``MIGRATIONS``; a record without the field is version 1, the layout before versions were
recorded). A record of a version newer than this robustmsa knows is never guessed at, skipped or replaced: the
readers and writers raise :class:`SchemaVersionError`, naming the file, its version and the newest supported
one (upgrade robustmsa to read it). A file that does not parse, is not a record, has a malformed version or
fails validation (:func:`check_cell`) counts as missing: a sweep recomputes and replaces it.

**Interrupted and failed writes.** Records are written with :func:`robustmsa._io.atomic_open`, so a record is
whole or absent even after SIGKILL. A kill can leave a temporary file (``.<name>.<host>.<pid>.<random>.tmp``) in
a record directory; no reader looks at those, and :meth:`ResultsStore.remove_stale_temps` (called by
``write_manifest``, the first thing a sweep writes) removes the ones whose writer is gone. A record that cannot be
written (disk full, read-only directory) raises :class:`robustmsa._io.OutputWriteError`; every record written
before is kept, and rerunning the same command after freeing space resumes the sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._io import atomic_open, remove_stale_temps

__all__ = ["CELL_KIND", "COVERAGE_KIND", "MANIFEST_KIND", "MIGRATIONS", "SCHEMA_VERSION", "CellKey",
           "ResultsStore", "SchemaVersionError", "check_cell", "migrate", "record_version"]

#: the layout version this robustmsa writes; readers accept 1 ... SCHEMA_VERSION
SCHEMA_VERSION = 2
CELL_KIND = "robustmsa.cell"
COVERAGE_KIND = "robustmsa.coverage"
MANIFEST_KIND = "robustmsa.sweep"
_WRITE_HINT = ("records written before are kept; free space (or make the directory writable) and rerun the "
               "same command to resume")


class SchemaVersionError(RuntimeError):
    """A record was written by a newer robustmsa (its schema version is above :data:`SCHEMA_VERSION`)."""

    def __init__(self, path: str | os.PathLike | None, found: int, action: str = "read") -> None:
        where = str(path) if path is not None else "record"
        super().__init__(
            f"{where}: results schema version {found} is newer than this robustmsa supports (newest: "
            f"{SCHEMA_VERSION}); it was written by a newer robustmsa -- upgrade robustmsa (pip install -U "
            f"robustmsa) to {action} it; the file was left untouched")
        self.path, self.found, self.supported = path, found, SCHEMA_VERSION


# ------------------------------------------------------------------ migrations: one step per version
#: ``MIGRATIONS[v]`` turns a version-``v`` record into a version ``v + 1`` one (``kind`` is what the reader
#: expects: CELL_KIND, COVERAGE_KIND or MANIFEST_KIND). To change the layout: bump SCHEMA_VERSION, register the
#: step from the old version, and commit an example record of the old version under tests/data/records/.
MIGRATIONS: dict[int, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {}


def _step(version: int):
    def register(fn):
        if version in MIGRATIONS:
            raise ValueError(f"two migrations from schema version {version}")
        MIGRATIONS[version] = fn
        return fn
    return register


@_step(1)
def _v1_to_v2(record: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """Version 1 (no ``schema_version``; cell records of the store's own tests could lack ``kind``) -> 2:
    every record names its schema version and kind; nothing else changed."""
    out = {"schema_version": 2, **{k: v for k, v in record.items() if k != "schema_version"}}
    if kind is not None:
        out.setdefault("kind", kind)
    return out


def record_version(record: Mapping[str, Any], source: str | os.PathLike | None = None) -> int:
    """The schema version of ``record`` (1 when absent); ``ValueError`` when it is not a positive integer."""
    version = record.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{source or 'record'}: schema_version must be a positive integer, got {version!r}")
    return version


def migrate(record: Mapping[str, Any], kind: str | None = None, *,
            source: str | os.PathLike | None = None) -> dict[str, Any]:
    """``record`` in the current layout (:data:`SCHEMA_VERSION`), upgraded one version at a time.

    Raises :class:`SchemaVersionError` for a version newer than this robustmsa knows and ``ValueError`` for a
    malformed version. The input is not modified.
    """
    version = record_version(record, source)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(source, version)
    out = dict(record)
    while version < SCHEMA_VERSION:
        out = MIGRATIONS[version](out, kind)
        version += 1
        if out.get("schema_version") != version:
            raise AssertionError(f"migration to schema version {version} did not stamp it")
    return out


def check_cell(record: Mapping[str, Any], path: str | os.PathLike | None = None) -> None:
    """Raise ``ValueError`` unless ``record`` is a complete cell record (of the current layout).

    It needs a key (dict), a digest (the file's name, when ``path`` is given), metrics (a dict of numbers or
    None) and a direction (``higher_is_better``) for every metric.
    """
    where = f"{path}: " if path is not None else ""
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{where}not a current cell record (migrate it first)")
    if record.get("kind", CELL_KIND) != CELL_KIND:
        raise ValueError(f"{where}kind {record.get('kind')!r} is not {CELL_KIND!r}")
    key, digest = record.get("key"), record.get("digest")
    if not (isinstance(key, dict) and isinstance(digest, str) and digest):
        raise ValueError(f"{where}no key or digest")
    if path is not None and Path(path).stem != digest:
        raise ValueError(f"{where}digest {digest} does not match the file name")
    metrics, higher = record.get("metrics"), record.get("higher_is_better")
    if not isinstance(metrics, dict) or not isinstance(higher, dict) or set(metrics) - set(higher):
        raise ValueError(f"{where}metrics or their directions (higher_is_better) are missing")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in metrics.values()):
        raise ValueError(f"{where}a metric is not a number")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if absent, unreadable, not JSON or not an object (damaged)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_record(path: Path, kind: str) -> dict[str, Any] | None:
    """The migrated record in ``path`` (None when absent or damaged); raises for a future schema version."""
    raw = _read_json(path)
    if raw is None:
        return None
    try:
        return migrate(raw, kind, source=path)
    except ValueError:  # malformed version: damaged
        return None


def _refuse_future(path: Path) -> None:
    """Refuse to replace a record written by a newer robustmsa (damaged or older files may be replaced)."""
    raw = _read_json(path) if path.exists() else None
    if raw is None:
        return
    try:
        version = record_version(raw)
    except ValueError:
        return
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(path, version, action="replace")


def _stamp(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``record`` as written: the schema version first, the kind (unless given) second."""
    body = {k: v for k, v in record.items() if k != "schema_version"}
    return {"schema_version": SCHEMA_VERSION, "kind": body.pop("kind", kind), **body}


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
    """Cell records under ``root/cells/<method>/<digest>.json``, plus ``root/manifest.json``.

    Every reader migrates old layouts and raises :class:`SchemaVersionError` for records of a future one (see
    the module docstring); ``has(key)`` therefore raises rather than let a sweep overwrite such a record.
    Writers raise :class:`robustmsa._io.OutputWriteError` when the disk is full or the directory read-only.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"

    def path(self, key: CellKey) -> Path:
        return self.cells / key.method / f"{key.digest()}.json"

    @staticmethod
    def read_cell(path: str | os.PathLike) -> dict[str, Any] | None:
        """The migrated, validated cell record in ``path``; None if absent or damaged (it will be recomputed)."""
        path = Path(path)
        record = _read_record(path, CELL_KIND)
        if record is None:
            return None
        try:
            check_cell(record, path)
        except ValueError:
            return None
        return record

    def load(self, key: CellKey) -> dict[str, Any] | None:
        """The record of ``key`` if present and valid (a damaged file counts as missing).

        Raises :class:`SchemaVersionError` if the file was written by a newer robustmsa.
        """
        record = self.read_cell(self.path(key))
        return record if record is not None and record.get("key") == key.to_dict() else None

    def has(self, key: CellKey) -> bool:
        return self.load(key) is not None

    def _write(self, path: Path, payload: dict[str, Any], indent: int) -> Path:
        _refuse_future(path)
        with atomic_open(path, force=True, mode="w", hint=_WRITE_HINT) as handle:
            json.dump(payload, handle, indent=indent, default=str)
            handle.write("\n")
        return path

    def write(self, key: CellKey, record: Mapping[str, Any]) -> Path:
        """Write ``record`` for ``key`` atomically (replacing a damaged, older or forced one, never a newer one)."""
        return self._write(self.path(key), _stamp({**record, "key": key.to_dict(), "digest": key.digest()},
                                                  CELL_KIND), indent=1)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every valid cell record, migrated to the current layout (damaged files are skipped; temporary files
        are never looked at). Raises :class:`SchemaVersionError` at a record of a newer robustmsa."""
        if not self.cells.exists():
            return
        for path in sorted(self.cells.glob("*/*.json")):
            record = self.read_cell(path)
            if record is not None:
                yield record

    # ------------------------------------------------------------------ input-coverage audits, one per model
    def coverage_path(self, method: str, model_key: str) -> Path:
        return self.root / "coverage" / method / f"{model_key[:32]}.json"

    def load_coverage(self, method: str, model_key: str) -> dict[str, Any] | None:
        """The coverage record of one trained model, if present and readable (migrated; future: raises)."""
        record = _read_record(self.coverage_path(method, model_key), COVERAGE_KIND)
        return record if record is not None and record.get("model_key") == model_key else None

    def write_coverage(self, method: str, model_key: str, record: Mapping[str, Any]) -> Path:
        """Write one model's coverage record atomically."""
        return self._write(self.coverage_path(method, model_key),
                           _stamp({**record, "model_key": model_key}, COVERAGE_KIND), indent=1)

    def coverage_frame(self):
        """One row per (audited model, modality): method, seed, variant keys, coverage fraction and probe."""
        import pandas as pd

        rows = []
        for path in sorted((self.root / "coverage").glob("*/*.json")):
            record = _read_record(path, COVERAGE_KIND)
            if record is None or not isinstance(record.get("modalities"), dict):
                continue
            for modality, cov in record["modalities"].items():
                if not isinstance(cov, dict):
                    continue
                rows.append({"method": record.get("method"), "seed": record.get("seed"),
                             "train_noise": record.get("train_noise"), "dataset": record.get("dataset"),
                             "model_key": record.get("model_key"), "modality": modality,
                             "fraction": cov.get("fraction"), "probe": cov.get("probe")})
        return pd.DataFrame(rows, columns=["method", "seed", "train_noise", "dataset", "model_key", "modality",
                                           "fraction", "probe"])

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict[str, Any] | None:
        """The run's manifest, migrated; None if absent or damaged; raises for a newer robustmsa's."""
        return _read_record(self.manifest_path, MANIFEST_KIND)

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """Write the manifest atomically. A sweep writes it first, so this also removes the temporary files
        that killed writers left in the store (:meth:`remove_stale_temps`) and refuses (``SchemaVersionError``)
        a directory whose manifest a newer robustmsa wrote."""
        path = self._write(self.manifest_path, _stamp(manifest, MANIFEST_KIND), indent=2)
        self.remove_stale_temps()
        return path

    def remove_stale_temps(self) -> list[Path]:
        """Remove temporary files of dead writers anywhere in the store (see ``_io.remove_stale_temps``)."""
        return remove_stale_temps(self.root, recursive=True)

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
