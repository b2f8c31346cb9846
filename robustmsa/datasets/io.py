"""Read and write MMSA feature pickles: by registered name under a data root, or by any path.

Reading always goes through the restricted unpickler and validation; the file's SHA-256 is computed
while it is read (no second pass) and checked against MMSA's published checksum when there is one.
Writing is atomic and refuses to replace an existing file unless asked.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open
from .errors import DataValidationError
from .registry import DATASETS, LABEL_RANGES, resolve_data_root
from .safe_pickle import SafeUnpickler
from .split import SPLIT_NAMES, Dataset, DatasetSpec, LabelFamily, Split
from .validate import splits_from_mmsa_dict

__all__ = [
    "PICKLE_PROTOCOL",
    "ChecksumMismatchWarning",
    "infer_label_family",
    "load",
    "read_mmsa_pickle",
    "read_raw_pickle",
    "write_mmsa_pickle",
]

PICKLE_PROTOCOL = 4  # readable by every Python 3 MMSA loader


class ChecksumMismatchWarning(UserWarning):
    """A registered dataset file's SHA-256 differs from the one MMSA publishes."""


class _HashingReader:
    """File wrapper that feeds every byte the unpickler reads into a SHA-256."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._handle.readline(size)
        self.digest.update(data)
        return data

    def readinto(self, buffer) -> int:
        count = self._handle.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count

    def finish(self) -> str:
        # one reused 64 KiB buffer: read(8 MiB) would allocate 8 MiB even for the few bytes after STOP
        buffer = bytearray(1 << 16)
        view = memoryview(buffer)
        while count := self._handle.readinto(buffer):
            self.digest.update(view[:count])
        return self.digest.hexdigest()


class _HashingWriter:
    def __init__(self, handle) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self._handle.write(data)


def read_raw_pickle(path: str | os.PathLike) -> tuple[Any, str]:
    """Unpickle ``path`` with the restricted, bounded unpickler; returns the object and the file's SHA-256.

    Raises:
        UnreadablePickleError: not a well-formed pickle (truncated, bad opcode, ...); subclasses
            ``PickleLimitError`` (it asks for more memory or nesting than its size justifies) and
            ``UnsafePickleError`` (a global outside the allow-list; nothing from the file ran).
    """
    source = os.fspath(path)
    with open(source, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        reader = _HashingReader(handle)
        raw = SafeUnpickler(reader, source=source, size=size).load()
        return raw, reader.finish()


def infer_label_family(name: str, splits: Mapping[str, Split]) -> LabelFamily:
    """SIMS family if the name contains ``sims`` or every label lies in [-1, 1]; MOSI otherwise."""
    if "sims" in name.lower():
        return "sims"
    labels = np.concatenate([np.asarray(s.regression_labels) for s in splits.values()])
    finite = labels[np.isfinite(labels)]
    return "sims" if finite.size and np.all(np.abs(finite) <= 1.0) else "mosi"


def _spec(name: str, family: LabelFamily, splits: Mapping[str, Split], fingerprint: str, source: str) -> DatasetSpec:
    train = splits["train"]
    return DatasetSpec(
        name=name, label_family=family, label_range=LABEL_RANGES[family],
        dims={m: int(getattr(train, m).shape[2]) for m in ("text", "audio", "vision")},
        seq_lens={m: int(getattr(train, m).shape[1]) for m in ("text", "audio", "vision")},
        aligned=not train.has_length_keys, fingerprint=fingerprint, source=source,
    )


def read_mmsa_pickle(path: str | os.PathLike, *, name: str | None = None, label_family: LabelFamily | None = None,
                     expected_sha256: str | None = None, warn: bool = True) -> Dataset:
    """Read, validate and wrap an MMSA feature pickle.

    Args:
        path: the ``.pkl`` file.
        name: dataset name for the spec (default: the file name without suffix).
        label_family: ``"mosi"`` or ``"sims"``; inferred from name and labels when not given.
        expected_sha256: a published checksum; a mismatch warns (the file is still used, and its own
            checksum is recorded as the fingerprint).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if label_family is not None and label_family not in LABEL_RANGES:
        raise ValueError(f"label_family must be one of {sorted(LABEL_RANGES)}, got {label_family!r}")
    raw, sha256 = read_raw_pickle(path)
    from .mag import convert_hint, looks_like_mag  # local import: mag builds on this module

    if looks_like_mag(raw):
        raise DataValidationError(source, None, None, "an MMSA feature pickle ({train, valid, test} dicts of arrays)",
                                  f"train/dev/test lists of ((words, visual, acoustic), label, segment): "
                                  f"{convert_hint(source)}")
    name = name or path.stem
    # Validate structure first without a label range, then with the family's range.
    range_ = LABEL_RANGES[label_family] if label_family else (-3.0, 3.0)
    splits, report = splits_from_mmsa_dict(raw, source=source, label_range=range_, warn=warn)
    del raw
    if label_family is None:
        label_family = infer_label_family(name, splits)
        report.notes.append(f"label family inferred as {label_family!r} (override with label_family / --label-family)")
        if label_family == "sims":
            splits_from_range_check(splits, source, LABEL_RANGES["sims"])
    if expected_sha256 and sha256 != expected_sha256:
        message = (f"{source}: SHA-256 {sha256} differs from the published {expected_sha256}; "
                   f"the file is used as it is and its own checksum is recorded")
        report.notes.append(message)
        warnings.warn(message, ChecksumMismatchWarning, stacklevel=2)
    return Dataset(_spec(name, label_family, splits, f"sha256:{sha256}", source), splits, report)


def splits_from_range_check(splits: Mapping[str, Split], source: str, label_range: tuple[float, float]) -> None:
    """Re-check every split's labels against ``label_range`` (after a family was inferred)."""
    low, high = label_range
    for split in splits.values():
        labels = split.regression_labels
        bad = np.flatnonzero((labels < low - 1e-6) | (labels > high + 1e-6))
        if bad.size:
            raise DataValidationError(source, split.name, "regression_labels", f"labels in [{low:g}, {high:g}]",
                                      f"{float(labels[bad[0]]):g} at sample {int(bad[0])}")


def load(name_or_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
         label_family: LabelFamily | None = None, seed: int = 0, warn: bool = True) -> Dataset:
    """Load a dataset by registered name (under the data root) or by file path.

    Registered names: ``robustmsa list datasets``. Synthetic profiles (``synth``, ``synth-mosi``) are
    generated from ``seed``. Any other argument is read as a path to an MMSA pickle.
    """
    text = os.fspath(name_or_path)
    if text in DATASETS:
        entry = DATASETS.get(text)
        if entry.generated:
            from .synth import generate

            return generate(entry.synth_profile, seed=seed)
        root = resolve_data_root(data_root)
        path = root / entry.relpath
        if not path.is_file():
            raise FileNotFoundError(
                f"dataset {text!r} expected at {path} (data root {root}: set --data-root or $ROBUSTMSA_DATA). "
                f"Download the MMSA feature files (see thuiar/MMSA's README) and place "
                f"{entry.relpath} under the data root, or pass the file's path instead of the name."
            )
        return read_mmsa_pickle(path, name=text, label_family=label_family or entry.label_family,
                                expected_sha256=entry.sha256, warn=warn)
    path = Path(text)
    if path.is_file():
        return read_mmsa_pickle(path, label_family=label_family, warn=warn)
    raise FileNotFoundError(f"{text!r} is neither a registered dataset nor an existing file. "
                            f"{DATASETS.unknown_message(text)}")


def write_mmsa_pickle(data: Dataset | Mapping[str, Split], path: str | os.PathLike, *, force: bool = False) -> str:
    """Write ``data`` as an MMSA pickle ``{train, valid, test}`` atomically; returns the file's SHA-256.

    The keys are those the splits were read with, features float32, shapes unchanged. An existing
    ``path`` is only replaced with ``force=True``.
    """
    splits = data.splits if isinstance(data, Dataset) else data
    payload: dict[str, Any] = {name: splits[name].to_mmsa_dict() for name in SPLIT_NAMES if name in splits}
    with atomic_open(path, force=force) as handle:
        writer = _HashingWriter(handle)
        pickle.dump(payload, writer, protocol=PICKLE_PROTOCOL)
    return writer.digest.hexdigest()


