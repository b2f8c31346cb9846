"""MSA metrics exactly as MMSA defines them (``thuiar/MMSA:src/MMSA/utils/metricsTop.py``), F1 argument order fixed.

Two families, chosen by the dataset: ``mosi`` (MOSI/MOSEI-style labels in [-3, 3]) and ``sims`` (CH-SIMS-style
labels in [-1, 1]). Keys are MMSA's, so numbers can be compared with published tables. Values are kept at full
precision (MMSA rounds to 4 decimals for display only). Every metric declares its direction.

MOSI family (unclipped MAE and Corr; accuracies on clipped, round-half-to-even values):

- ``MAE`` mean |pred - truth|; ``Corr`` Pearson r (NaN with a warning when either side is constant);
- ``Mult_acc_7`` / ``Mult_acc_5``: round(clip(x, +-3)) / round(clip(x, +-2)) equal;
- ``Has0_acc_2`` / ``Has0_F1_score``: negative (< 0) vs non-negative (>= 0), all samples;
- ``Non0_acc_2`` / ``Non0_F1_score``: negative vs positive on samples with truth != 0 (a prediction of exactly 0
  counts as negative).

SIMS family: pred and truth clipped to [-1, 1] first (MAE and Corr included); ``Mult_acc_2/3/5`` with bins
(-1.01, 0, 1.01], (-1.01, -0.1, 0.1, 1.01], (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01] (right-closed: 0 is negative);
``F1_score`` on the Acc-2 bins.

F1 is always ``weighted`` over the classes present in the truth, called as ``(truth, pred)`` (the swap fixed by
MMSA cb5e0bd; published ALMT/LNLN SIMS F1 before 2025 used the swapped order).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

__all__ = ["MetricInfo", "METRICS", "compute", "metric_names", "higher_is_better", "weighted_f1", "pearson",
           "ConstantInputWarning", "LabelFamily"]

LabelFamily = Literal["mosi", "sims"]


class ConstantInputWarning(RuntimeWarning):
    """Correlation is undefined because predictions (or labels) are constant; reported as NaN."""


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, family, direction and one-line definition."""

    name: str
    family: LabelFamily
    higher_is_better: bool
    definition: str


_SPECS = [
    ("mosi", "Has0_acc_2", True, "accuracy, negative (<0) vs non-negative (>=0), all samples"),
    ("mosi", "Has0_F1_score", True, "weighted F1 of the Has0 classes"),
    ("mosi", "Non0_acc_2", True, "accuracy, negative vs positive, samples with truth != 0"),
    ("mosi", "Non0_F1_score", True, "weighted F1 of the Non0 classes"),
    ("mosi", "Mult_acc_5", True, "accuracy of round(clip(x, -2, 2))"),
    ("mosi", "Mult_acc_7", True, "accuracy of round(clip(x, -3, 3))"),
    ("mosi", "MAE", False, "mean absolute error (unclipped)"),
    ("mosi", "Corr", True, "Pearson correlation (unclipped)"),
    ("sims", "Mult_acc_2", True, "accuracy on bins [-1, 0], (0, 1] after clipping to [-1, 1]"),
    ("sims", "Mult_acc_3", True, "accuracy on bins [-1, -0.1], (-0.1, 0.1], (0.1, 1]"),
    ("sims", "Mult_acc_5", True, "accuracy on bins [-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]"),
    ("sims", "F1_score", True, "weighted F1 on the Acc-2 bins"),
    ("sims", "MAE", False, "mean absolute error after clipping to [-1, 1]"),
    ("sims", "Corr", True, "Pearson correlation after clipping to [-1, 1]"),
]
METRICS: dict[tuple[str, str], MetricInfo] = {(f, n): MetricInfo(n, f, hib, d) for f, n, hib, d in _SPECS}


def metric_names(family: LabelFamily) -> list[str]:
    """The metric keys of ``family`` in MMSA's order."""
    _check_family(family)
    return [info.name for (fam, _), info in METRICS.items() if fam == family]


def higher_is_better(name: str) -> bool:
    """Direction of metric ``name`` (same in both families)."""
    for (_, key), info in METRICS.items():
        if key == name:
            return info.higher_is_better
    raise KeyError(f"unknown metric {name!r}; known: {sorted({k for _, k in METRICS})}")


def _check_family(family: str) -> None:
    if family not in ("mosi", "sims"):
        raise ValueError(f"label family must be 'mosi' or 'sims', got {family!r}")


def pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson r as ``np.corrcoef``; NaN with a :class:`ConstantInputWarning` if either input is constant."""
    if pred.size < 2 or np.all(pred == pred[0]) or np.all(truth == truth[0]):
        warnings.warn("Corr is undefined for constant predictions or labels; reported as NaN",
                      ConstantInputWarning, stacklevel=3)
        return float("nan")
    return float(np.corrcoef(pred, truth)[0, 1])


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Weighted F1 (scikit-learn's ``f1_score(truth, pred, average='weighted')``): per-class F1 weighted by true support.

    Classes are those present in truth or pred; a class with no true samples has weight 0; an undefined
    per-class F1 (no true and no predicted samples of it cannot happen; TP = FP = FN = 0) counts as 0.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.size == 0:
        return float("nan")
    score = 0.0
    for label in np.union1d(truth, pred):
        tp = np.sum((pred == label) & (truth == label))
        fp = np.sum((pred == label) & (truth != label))
        fn = np.sum((pred != label) & (truth == label))
        support = tp + fn
        denominator = 2 * tp + fp + fn
        score += (support / truth.size) * (2 * tp / denominator if denominator else 0.0)
    return float(score)


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if a.size else float("nan")


def _bins(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Index i such that edges[i] < x <= edges[i + 1] (MMSA's SIMS binning).

    Edges are compared in ``x``'s own dtype, as MMSA's ``x > edge`` with a Python float does under numpy's
    promotion rules: a float32 prediction of 0.1 is in the (-0.1, 0.1] bin, as in MMSA.
    """
    return np.searchsorted(np.asarray(edges, dtype=x.dtype), x, side="left") - 1


def _mosi(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred, truth = pred.astype(np.float64), truth.astype(np.float64)  # exact for float32; only 0 and ints compared
    non_zero = truth != 0
    return {
        "Has0_acc_2": _accuracy(truth >= 0, pred >= 0),
        "Has0_F1_score": weighted_f1(truth >= 0, pred >= 0),
        "Non0_acc_2": _accuracy(truth[non_zero] > 0, pred[non_zero] > 0),
        "Non0_F1_score": weighted_f1(truth[non_zero] > 0, pred[non_zero] > 0),
        "Mult_acc_5": _accuracy(np.round(np.clip(pred, -2, 2)), np.round(np.clip(truth, -2, 2))),
        "Mult_acc_7": _accuracy(np.round(np.clip(pred, -3, 3)), np.round(np.clip(truth, -3, 3))),
        "MAE": float(np.mean(np.abs(pred - truth))),
        "Corr": pearson(pred, truth),
    }


def _sims(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred, truth = np.clip(pred, -1.0, 1.0), np.clip(truth, -1.0, 1.0)  # each keeps its dtype for binning
    a2, a3 = (-1.01, 0.0, 1.01), (-1.01, -0.1, 0.1, 1.01)
    a5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)
    return {
        "Mult_acc_2": _accuracy(_bins(pred, a2), _bins(truth, a2)),
        "Mult_acc_3": _accuracy(_bins(pred, a3), _bins(truth, a3)),
        "Mult_acc_5": _accuracy(_bins(pred, a5), _bins(truth, a5)),
        "F1_score": weighted_f1(_bins(truth, a2), _bins(pred, a2)),
        "MAE": float(np.mean(np.abs(pred.astype(np.float64) - truth.astype(np.float64)))),
        "Corr": pearson(pred.astype(np.float64), truth.astype(np.float64)),
    }


def _as_float(values: np.ndarray) -> np.ndarray:
    """1-D float array; float32 stays float32 (SIMS bin edges are compared in the input's precision)."""
    array = np.asarray(values).reshape(-1)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


_FAMILIES: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, float]]] = {"mosi": _mosi, "sims": _sims}


def compute(preds: np.ndarray, labels: np.ndarray, family: LabelFamily) -> dict[str, float]:
    """All metrics of ``family`` for regression predictions ``preds`` against ``labels`` (argument order: preds, labels).

    Raises:
        ValueError: on a shape mismatch, an empty input or non-finite values.
    """
    _check_family(family)
    pred, truth = _as_float(preds), _as_float(labels)
    if pred.shape != truth.shape:
        raise ValueError(f"preds and labels must have the same number of values, got {pred.size} and {truth.size}")
    if pred.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    for name, values in (("preds", pred), ("labels", truth)):
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{name} must be finite; found {values[bad]} at index {bad}")
    return _FAMILIES[family](pred, truth)
