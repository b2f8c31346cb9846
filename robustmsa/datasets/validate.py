"""Turn a raw MMSA pickle dict into validated :class:`Split` objects, or say precisely what is wrong.

Every error names the file, split and key, what was expected and what was found. Non-finite feature
values (MOSI/MOSEI audio holds ``-inf``) are set to 0 as every MMSA loader does, and counted: the
counts go into the :class:`ValidationReport` and a :class:`NonFiniteFeaturesWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .split import OPTIONAL_KEYS, SPLIT_NAMES, Split

__all__ = [
    "DataValidationError", "NonFiniteFeaturesWarning", "ValidationReport", "REQUIRED_KEYS",
    "splits_from_mmsa_dict",
]

REQUIRED_KEYS: tuple[str, ...] = ("raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels")
_FEATURE_KEYS = ("text", "audio", "vision")
_CHUNK_ELEMENTS = 1 << 25  # non-finite scan works on ~128 MiB float32 blocks


class DataValidationError(ValueError):
    """A dataset file does not have the MMSA structure; the message says where and how."""

    def __init__(self, source: str, split: str | None, key: str | None, expected: str, found: str) -> None:
        where = source
        if split is not None:
            where += f", split {split!r}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: expected {expected}, found {found}")
        self.source, self.split, self.key, self.expected, self.found = source, split, key, expected, found


class NonFiniteFeaturesWarning(UserWarning):
    """Features held NaN or +-inf; they were set to 0 (MMSA behaviour) and counted."""


@dataclass
class ValidationReport:
    """What validation found and changed: non-finite counts per split/key, and notes."""

    source: str
    nonfinite: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_nonfinite(self) -> int:
        return sum(sum(c.values()) for per_key in self.nonfinite.values() for c in per_key.values())

    def nonfinite_summary(self) -> str:
        parts = []
        for split, per_key in self.nonfinite.items():
            for key, counts in per_key.items():
                detail = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
                parts.append(f"{split}/{key}: {detail}")
        return "; ".join(parts)


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}"
    try:
        return f"{type(value).__name__} of length {len(value)}"
    except TypeError:
        return type(value).__name__


def _as_array(value: Any, source: str, split: str, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DataValidationError(source, split, key, "an array", f"{type(value).__name__} ({exc})") from exc


def _sanitize_features(array: np.ndarray, counts: dict[str, int]) -> np.ndarray:
    """float32 copy-on-need of ``array`` with NaN/+-inf set to 0; counts go into ``counts``."""
    out = np.asarray(array, dtype=np.float32)
    flat = out.reshape(-1)
    step = _CHUNK_ELEMENTS
    bad_blocks = []
    for start in range(0, flat.size, step):
        block = flat[start:start + step]
        finite = np.isfinite(block)
        if not finite.all():
            bad = ~finite
            counts["nan"] = counts.get("nan", 0) + int(np.isnan(block).sum())
            counts["+inf"] = counts.get("+inf", 0) + int(np.isposinf(block).sum())
            counts["-inf"] = counts.get("-inf", 0) + int(np.isneginf(block).sum())
            bad_blocks.append((start, bad))
    if bad_blocks:
        if np.may_share_memory(out, array):
            out = out.copy()
            flat = out.reshape(-1)
        for start, bad in bad_blocks:
            flat[start:start + bad.size][bad] = 0.0
    return out


def _labels(value: Any, source: str, split: str, key: str, n: int) -> np.ndarray:
    array = _as_array(value, source, split, key)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (n,):
        raise DataValidationError(source, split, key, f"shape ({n},) (or ({n}, 1))", _shape(array))
    try:
        return array.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataValidationError(source, split, key, "numeric labels", f"dtype {array.dtype}") from exc


def _lengths(value: Any, source: str, split: str, key: str, n: int, padded: int) -> np.ndarray:
    array = _as_array(value, source, split, key)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (n,):
        raise DataValidationError(source, split, key, f"shape ({n},)", _shape(array))
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
        raise DataValidationError(source, split, key, "finite integer lengths", f"dtype {array.dtype}")
    lengths = array.astype(np.int64)
    if np.any(lengths != array):
        raise DataValidationError(source, split, key, "integer lengths", "fractional values")
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > padded:
        bad = int(np.flatnonzero((lengths < 0) | (lengths > padded))[0])
        raise DataValidationError(
            source, split, key, f"lengths in [0, {padded}] (the padded length)",
            f"{int(lengths[bad])} at sample {bad}",
        )
    return lengths


def _split_from_dict(raw: Any, source: str, split: str, label_range: tuple[float, float] | None,
                     report: ValidationReport) -> Split:
    if not isinstance(raw, Mapping):
        raise DataValidationError(source, split, None, "a dict of arrays", type(raw).__name__)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataValidationError(source, split, missing[0], f"required keys {list(REQUIRED_KEYS)}",
                                  f"keys {sorted(map(str, raw))}")
    text = _as_array(raw["text"], source, split, "text")
    if text.ndim != 3:
        raise DataValidationError(source, split, "text", "rank 3 (N, L_t, D_t)", _shape(text))
    n, text_len = text.shape[0], text.shape[1]

    for key in ("audio", "vision"):
        value = _as_array(raw[key], source, split, key)
        if value.ndim != 3 or value.shape[0] != n:
            raise DataValidationError(source, split, key, f"rank 3 ({n}, L, D)", _shape(value))
    text_bert = _as_array(raw["text_bert"], source, split, "text_bert")
    if text_bert.shape != (n, 3, text_len):
        raise DataValidationError(source, split, "text_bert", f"shape ({n}, 3, {text_len}) (ids, mask, segments)",
                                  _shape(text_bert))
    if text_bert.dtype.kind not in "iufb" or not np.all(np.isfinite(text_bert)):
        raise DataValidationError(source, split, "text_bert", "finite numeric ids", f"dtype {text_bert.dtype}")
    mask = text_bert[:, 1, :]
    if not np.all((mask == 0) | (mask == 1)):
        raise DataValidationError(source, split, "text_bert", "attention mask [:, 1, :] of 0/1", "other values")
    if np.any(mask[:, 1:] > mask[:, :-1]):
        bad = int(np.flatnonzero(np.any(mask[:, 1:] > mask[:, :-1], axis=1))[0])
        raise DataValidationError(source, split, "text_bert", "attention mask of 1s followed by 0s (end padding)",
                                  f"a gap in sample {bad}")

    arrays: dict[str, np.ndarray] = {}
    for key in ("raw_text", "id"):
        value = _as_array(raw[key], source, split, key)
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.shape != (n,):
            raise DataValidationError(source, split, key, f"shape ({n},) of strings", _shape(value))
        arrays[key] = np.array([str(v) for v in value.tolist()], dtype=object)
    arrays["regression_labels"] = _labels(raw["regression_labels"], source, split, "regression_labels", n)

    counts_by_key: dict[str, dict[str, int]] = {}
    for key in _FEATURE_KEYS:
        counts: dict[str, int] = {}
        arrays[key] = _sanitize_features(_as_array(raw[key], source, split, key), counts)
        if counts:
            counts_by_key[key] = counts
    if counts_by_key:
        report.nonfinite[split] = counts_by_key
    arrays["text_bert"] = np.asarray(text_bert, dtype=np.float32)

    has_a, has_v = "audio_lengths" in raw, "vision_lengths" in raw
    if has_a != has_v:
        present, absent = ("audio_lengths", "vision_lengths") if has_a else ("vision_lengths", "audio_lengths")
        raise DataValidationError(source, split, absent, f"{absent} alongside {present}", "it is missing")
    if has_a:
        for key, modality in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
            arrays[key] = _lengths(raw[key], source, split, key, n, arrays[modality].shape[1])
    else:  # aligned file: MMSA derives A/V lengths from the text attention mask
        derived = mask.sum(axis=1).astype(np.int64)
        for key, modality in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
            if derived.max(initial=0) > arrays[modality].shape[1]:
                raise DataValidationError(
                    source, split, key, f"this key, or text lengths <= the {modality} padded length "
                    f"{arrays[modality].shape[1]} (aligned files take A/V lengths from the text mask)",
                    f"no {key} and a text length of {int(derived.max())}")
            arrays[key] = derived

    extras: dict[str, np.ndarray] = {}
    for key in raw:
        if key in REQUIRED_KEYS or key in ("audio_lengths", "vision_lengths"):
            continue
        value = _as_array(raw[key], source, split, key)
        if key.startswith("regression_labels_"):
            extras[key] = _labels(value, source, split, key, n)
        elif value.ndim >= 1 and value.shape[0] == n:
            extras[key] = value
        else:
            raise DataValidationError(source, split, key, f"a per-sample array with leading dimension {n}",
                                      _shape(value))
        if key not in OPTIONAL_KEYS:
            report.notes.append(f"split {split!r}: kept non-standard key {key!r} ({_shape(value)})")

    if label_range is not None:
        low, high = label_range
        for key in ["regression_labels", *[k for k in extras if k.startswith("regression_labels_")]]:
            labels = arrays.get(key, extras.get(key))
            finite = labels[np.isfinite(labels)]
            if finite.size != labels.size:
                bad = int(np.flatnonzero(~np.isfinite(labels))[0])
                if key == "regression_labels":
                    raise DataValidationError(source, split, key, "finite labels", f"{labels[bad]} at sample {bad}")
                report.notes.append(f"split {split!r}: {labels.size - finite.size} non-finite {key}")
            if finite.size and (finite.min() < low - 1e-6 or finite.max() > high + 1e-6):
                bad = int(np.flatnonzero((labels < low - 1e-6) | (labels > high + 1e-6))[0])
                raise DataValidationError(source, split, key, f"labels in [{low:g}, {high:g}]",
                                          f"{float(labels[bad]):g} at sample {bad}")

    return Split(name=split, extras=extras, has_length_keys=has_a, **arrays)


def splits_from_mmsa_dict(raw: Any, *, source: str, label_range: tuple[float, float] | None = None,
                          warn: bool = True) -> tuple[dict[str, Split], ValidationReport]:
    """Validate an MMSA pickle structure ``{train, valid, test}`` and build its splits.

    Args:
        raw: the unpickled object.
        source: file name (or other description) used in every message.
        label_range: inclusive range all labels must lie in; ``None`` skips the check.
        warn: emit a :class:`NonFiniteFeaturesWarning` when features were sanitised.

    Raises:
        DataValidationError: on any structural problem, naming file, split, key, expected and found.
    """
    report = ValidationReport(source=source)
    if not isinstance(raw, Mapping):
        raise DataValidationError(source, None, None, f"a dict with keys {list(SPLIT_NAMES)}", type(raw).__name__)
    missing = [name for name in SPLIT_NAMES if name not in raw]
    if missing:
        hint = " ('dev' is the MAG/MIB layout, not MMSA's)" if "dev" in raw else ""
        raise DataValidationError(source, missing[0], None, f"top-level keys {list(SPLIT_NAMES)}{hint}",
                                  f"keys {sorted(map(str, raw))}")
    for other in raw:
        if other not in SPLIT_NAMES:
            report.notes.append(f"ignored top-level key {other!r} (not a split)")
    splits = {name: _split_from_dict(raw[name], source, name, label_range, report) for name in SPLIT_NAMES}
    dims = {m: splits["train"].__getattribute__(m).shape[2] for m in _FEATURE_KEYS}
    for name in ("valid", "test"):
        for modality in _FEATURE_KEYS:
            found = getattr(splits[name], modality).shape[2]
            if found != dims[modality]:
                raise DataValidationError(source, name, modality, f"feature dimension {dims[modality]} as in train",
                                          f"{found}")
    if warn and report.total_nonfinite:
        warnings.warn(f"{source}: set {report.total_nonfinite} non-finite feature values to 0 "
                      f"({report.nonfinite_summary()})", NonFiniteFeaturesWarning, stacklevel=3)
    return splits, report
