"""Turn a raw MMSA pickle dict into validated :class:`Split` objects, or say precisely what is wrong.

Every error is a :class:`DataValidationError` naming the file, split and key, what was expected and what
was found, whatever the file holds (wrong types, ranks, dtypes, inconsistent lengths, huge ints, nested
containers); nothing else escapes. Non-finite feature values (MOSI/MOSEI audio holds ``-inf``) are set to 0
as every MMSA loader does, and counted: the counts go into the :class:`ValidationReport` and a
:class:`NonFiniteFeaturesWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataValidationError, short_repr
from .split import OPTIONAL_KEYS, SPLIT_NAMES, Split

__all__ = [
    "REQUIRED_KEYS",
    "DataValidationError",
    "NonFiniteFeaturesWarning",
    "ValidationReport",
    "splits_from_mmsa_dict",
]

REQUIRED_KEYS: tuple[str, ...] = ("raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels")
_FEATURE_KEYS = ("text", "audio", "vision")
_CHUNK_ELEMENTS = 1 << 25  # non-finite scan works on ~128 MiB float32 blocks


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


_NUMBERS = (int, float, np.number, np.bool_)


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (which a pickle may hold, and UTF-8 cannot encode) replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean_objects(array: np.ndarray) -> np.ndarray:
    """An object array whose str items are :func:`clean_text`-ed (a copy only when one changes)."""
    if array.dtype != object:
        return array
    out = array
    for index, item in enumerate(array.flat):
        if isinstance(item, str) and clean_text(item) is not item:
            if out is array:
                out = array.copy()
            out.flat[index] = clean_text(item)
    return out


def keys_summary(mapping: Mapping) -> str:
    """``keys [...]`` of a mapping from a file: at most 20, each described in bounded length."""
    keys = sorted(short_repr(k, 40) for k in list(mapping)[:21])
    more = f" and {len(mapping) - 20} more" if len(mapping) > 20 else ""
    return f"keys [{', '.join(keys[:20])}]{more}"


def as_array(value: Any) -> np.ndarray:
    """``value`` as an array without ever widening strings: lists of text become object arrays.

    ``np.asarray`` turns a list of n strings into a fixed-width array n x (longest string) wide, so one long
    string shared by a million references would need gigabytes; numbers and numeric arrays convert as usual.
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, _NUMBERS) or (type(v) is np.ndarray and v.dtype.kind in "biuf") for v in value):
            return np.asarray(value)
        array = np.array(value, dtype=object)
        if array.size and all(isinstance(v, _NUMBERS) for v in array.flat):
            array = np.asarray(array.tolist())
        return array
    return np.asarray(value)


def _as_array(value: Any, source: str, split: str, key: str) -> np.ndarray:
    try:
        return as_array(value)
    except Exception as exc:  # ragged lists, huge ints and the like: whatever the file holds
        raise DataValidationError(source, split, key, "an array",
                                  f"{short_repr(value)} ({type(exc).__name__})") from exc


def _numeric(array: np.ndarray, source: str, split: str, key: str, expected: str) -> np.ndarray:
    """``array`` if its dtype is numeric (an object array of numbers is converted), else the error."""
    if array.dtype.kind in "biuf":
        return array
    if array.dtype.kind == "O":
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                return array.astype(np.float64)
        except Exception:  # noqa: BLE001 - strings, containers, huge ints in an object array
            found = next((short_repr(v) for v in array.flat if not isinstance(v, _NUMBERS)), "huge numbers")
            raise DataValidationError(source, split, key, expected, f"an object array holding {found}") from None
    raise DataValidationError(source, split, key, expected, f"dtype {array.dtype}")


def _strings(value: np.ndarray, source: str, split: str, key: str) -> np.ndarray:
    """An object array of str from an array of text (str, bytes as UTF-8, or numbers as in some id columns)."""
    out = np.empty(value.shape[0], dtype=object)
    for i, item in enumerate(value.tolist()):
        if isinstance(item, str):
            out[i] = clean_text(str(item))
        elif isinstance(item, bytes):
            out[i] = item.decode("utf-8", errors="replace")
        elif isinstance(item, (float, np.floating)) or (
                isinstance(item, (int, np.integer)) and not isinstance(item, bool) and int(item).bit_length() <= 64):
            out[i] = str(item)
        else:
            raise DataValidationError(source, split, key, "strings", f"{short_repr(item)} at sample {i}")
    return out


def _sanitize_features(array: np.ndarray, counts: dict[str, int]) -> np.ndarray:
    """float32 copy-on-need of ``array`` with NaN/+-inf set to 0; counts go into ``counts``."""
    with np.errstate(over="ignore"):  # beyond float32: inf, then zeroed and counted like the file's own inf
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
    array = _numeric(array, source, split, key, "numeric labels")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, refused by the range check
        return array.astype(np.float32)


def _lengths(value: Any, source: str, split: str, key: str, n: int, padded: int) -> np.ndarray:
    array = _as_array(value, source, split, key)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (n,):
        raise DataValidationError(source, split, key, f"shape ({n},)", _shape(array))
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
        raise DataValidationError(source, split, key, "finite integer lengths", f"dtype {array.dtype}")
    if array.dtype.kind == "f" and np.any(array != np.floor(array)):
        raise DataValidationError(source, split, key, "integer lengths", "fractional values")
    outside = (array < 0) | (array > padded)
    if np.any(outside):  # checked before the cast, which would wrap huge values
        bad = int(np.flatnonzero(outside)[0])
        raise DataValidationError(
            source, split, key, f"lengths in [0, {padded}] (the padded length)",
            f"{short_repr(array[bad].item())} at sample {bad}",
        )
    return array.astype(np.int64)


def _split_from_dict(raw: Any, source: str, split: str, label_range: tuple[float, float] | None,
                     report: ValidationReport) -> Split:
    if not isinstance(raw, Mapping):
        raise DataValidationError(source, split, None, "a dict of arrays", short_repr(raw))
    odd = next((k for k in raw if not isinstance(k, str) or clean_text(k) != k), None)
    if odd is not None:
        raise DataValidationError(source, split, None, "a dict with text keys", f"key {short_repr(odd)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataValidationError(source, split, missing[0], f"required keys {list(REQUIRED_KEYS)}",
                                  keys_summary(raw))
    features = {key: _as_array(raw[key], source, split, key) for key in _FEATURE_KEYS}
    text = features["text"]
    if text.ndim != 3:
        raise DataValidationError(source, split, "text", "rank 3 (N, L_t, D_t)", _shape(text))
    n, text_len = text.shape[0], text.shape[1]

    for key in ("audio", "vision"):
        value = features[key]
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
        arrays[key] = _strings(value, source, split, key)
    arrays["regression_labels"] = _labels(raw["regression_labels"], source, split, "regression_labels", n)

    counts_by_key: dict[str, dict[str, int]] = {}
    for key in _FEATURE_KEYS:
        counts: dict[str, int] = {}
        arrays[key] = _sanitize_features(_numeric(features[key], source, split, key, "numeric features"), counts)
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
            extras[key] = _clean_objects(value)
        else:
            raise DataValidationError(source, split, key, f"a per-sample array with leading dimension {n}",
                                      _shape(value))
        if key not in OPTIONAL_KEYS:
            report.notes.append(f"split {split!r}: kept non-standard key {short_repr(key, 40)} ({_shape(value)})")

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
        raise DataValidationError(source, None, None, f"a dict with keys {list(SPLIT_NAMES)}", short_repr(raw))
    missing = [name for name in SPLIT_NAMES if name not in raw]
    if missing:
        hint = " ('dev' is the MAG/MIB layout, not MMSA's)" if "dev" in raw else ""
        raise DataValidationError(source, missing[0], None, f"top-level keys {list(SPLIT_NAMES)}{hint}",
                                  keys_summary(raw))
    for other in raw:
        if other not in SPLIT_NAMES:
            report.notes.append(f"ignored top-level key {short_repr(other, 40)} (not a split)")
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
