"""Robustness summaries of degradation curves: one small pure function per formula, each citing its source.

A curve is a metric measured at increasing corruption levels ``r_0 < ... < r_t`` (``r_0 = 0`` is the clean
score when present). Score metrics (accuracy, F1, Corr) are higher-is-better; error metrics (MAE) are
lower-is-better, and every function takes ``higher_is_better`` so that a summary always reads the same way:
retention <= 1 and effective robustness < 0 mean "worse than clean / than the baseline" for both kinds.
Definitions follow ``metrics-and-protocol.md`` section 5 of the project's reference notes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["mean_over_levels", "auilc", "retention", "mean_retention", "to_error", "corruption_error",
           "relative_corruption_error", "effective_robustness", "check_curve", "summarize", "overall", "VARIANT",
           "with_variants", "text_mode_label"]


def check_curve(levels: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a curve: same length >= 1, strictly increasing finite levels; returns float arrays."""
    r, f = np.asarray(levels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if r.ndim != 1 or r.shape != f.shape or r.size == 0:
        raise ValueError(f"levels and scores must be 1-D of equal, non-zero length; got {r.shape} and {f.shape}")
    if not np.all(np.isfinite(r)) or np.any(np.diff(r) <= 0):
        raise ValueError(f"levels must be finite and strictly increasing, got {r.tolist()}")
    return r, f


def mean_over_levels(scores: Sequence[float]) -> float:
    """LNLN's "overall" robustness: the plain mean of the scores at every level, clean included.

    Source: Zhang et al., LNLN (NeurIPS 2024), Tables 1-2 = mean over r in {0.0, ..., 0.9} of seed-averaged metrics.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_over_levels needs at least one score")
    return float(values.mean())


def auilc(levels: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """Area under the indicator line chart: ``(area, area / (r_t - r_0))``.

    Source: Yuan et al., TFR-Net (ACM MM 2021): sum_i (f_i + f_{i+1}) / 2 * (r_{i+1} - r_i). Released code does
    not say whether the area is divided by the span; both are returned, and the normalised value equals the mean
    for a flat curve. AUILC values are only comparable on the same grid: report the grid beside them.
    """
    r, f = check_curve(levels, scores)
    if r.size < 2:
        raise ValueError("auilc needs at least two levels")
    area = float(np.sum((f[1:] + f[:-1]) / 2.0 * np.diff(r)))
    return area, area / float(r[-1] - r[0])


def retention(clean: float, scores: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Retention per level: ``f_r / f_clean`` for scores, ``f_clean / f_r`` for errors (1 = nothing lost).

    Source: MultiCorrupt (Beemelmanns et al.), RA_{c,s} = MET_{c,s} / MET_clean; the inverse ratio keeps the same
    reading for lower-is-better metrics.
    """
    values = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return values / clean if higher_is_better else clean / values


def mean_retention(clean: float, scores: Sequence[float], higher_is_better: bool = True) -> float:
    """RA_c: the mean retention over the corrupted levels of one corruption (mRA is its mean over corruptions)."""
    return float(np.mean(retention(clean, scores, higher_is_better)))


def to_error(scores: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Error of each score: ``1 - score`` for higher-is-better metrics in [0, 1] (accuracy, F1, Corr), the value itself
    for errors (MAE)."""
    values = np.asarray(scores, dtype=np.float64)
    return 1.0 - values if higher_is_better else values


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """CE_c = sum_s E_s / sum_s E^baseline_s over the same levels (mCE = mean of CE_c over corruptions).

    Source: Hendrycks & Dietterich, ImageNet-C (ICLR 2019), with AlexNet replaced by a fixed baseline method
    (LF-DNN in robustmsa). Inputs are errors (see :func:`to_error`).
    """
    e, b = np.asarray(errors, dtype=np.float64), np.asarray(baseline_errors, dtype=np.float64)
    if e.shape != b.shape or e.size == 0:
        raise ValueError(f"errors and baseline errors must have the same non-zero length, got {e.shape}, {b.shape}")
    return float(e.sum() / b.sum())


def relative_corruption_error(clean_error: float, errors: Sequence[float], baseline_clean_error: float,
                              baseline_errors: Sequence[float]) -> float:
    """Relative CE_c = sum_s (E_s - E_clean) / sum_s (E^b_s - E^b_clean) (relative mCE = mean over corruptions).

    Source: Hendrycks & Dietterich, ImageNet-C (ICLR 2019). NaN when the baseline does not degrade at all.
    """
    e, b = np.asarray(errors, dtype=np.float64), np.asarray(baseline_errors, dtype=np.float64)
    if e.shape != b.shape or e.size == 0:
        raise ValueError(f"errors and baseline errors must have the same non-zero length, got {e.shape}, {b.shape}")
    denominator = float(np.sum(b - baseline_clean_error))
    return float(np.sum(e - clean_error) / denominator) if denominator != 0 else float("nan")


def effective_robustness(scores: Sequence[float], baseline_scores: Sequence[float],
                         higher_is_better: bool = True) -> float:
    """Mean over levels of ``(f_i - f_0) - (b_i - b_0)``, sign-flipped for errors: > 0 degrades less than the baseline.

    Source: MultiBench (Liang et al., NeurIPS 2021 datasets track) effective robustness against late fusion,
    ER = sum_i [(f_i - f_0) - (b_i - b_0)], unnormalised (no min-max against a moving reference set) and divided by
    the number of levels so that grids of different sizes compare. Index 0 of both curves is the clean score.
    """
    f, b = np.asarray(scores, dtype=np.float64), np.asarray(baseline_scores, dtype=np.float64)
    if f.shape != b.shape or f.size < 2:
        raise ValueError(f"curves must have the same length >= 2 (clean first), got {f.shape} and {b.shape}")
    gap = (f[1:] - f[0]) - (b[1:] - b[0])
    return float(gap.mean() if higher_is_better else -gap.mean())


# --------------------------------------------------------------------------------------------- tables
#: What a curve belongs to besides method, corruption and metric: never averaged across (seeds are).
VARIANT = ["train_noise", "text_mode", "text_encoder"]
_GROUP = ["method", "dataset_name", *VARIANT, "corruption", "metric"]


def with_variants(frame):
    """``frame`` with the variant columns present and filled (no noise: "none"; text mode "features")."""
    defaults = {"train_noise": "none", "text_mode": "features", "text_encoder": "none"}
    for column, default in defaults.items():
        values = frame[column] if column in frame else None
        frame = frame.assign(**{column: default if values is None else values.fillna(default)})
    return frame


def _stats(values: list[float]) -> tuple[float, float]:
    array = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def summarize(frame, baseline: str | None = "lf_dnn"):
    """Per (method, dataset, train noise, text mode, corruption, metric): every summary, mean and std over seeds.

    ``frame`` is the tidy table of a results store (``ResultsStore.to_frame()``). Columns of the result:
    ``clean`` (level 0), ``at_<level>`` (mean score per level), ``mean_over_levels``, ``auilc`` (normalised;
    ``grid`` gives its levels), ``retention`` (RA over the corrupted levels), and, against ``baseline`` (its
    seed-mean curve on the same corruption, levels, metric, train noise and text mode -- or, for a method trained
    with a noise the baseline was not trained with, the baseline trained without noise; ``baseline_train_noise``
    says which; NaN where neither exists), ``ce``, ``relative_ce`` and ``effective_robustness``; each with ``_std`` over seeds, and ``seeds``. Cells of
    different text modes (``features`` / ``reencode`` with an encoder) are never averaged together.
    """
    import pandas as pd

    frame = with_variants(frame)
    base_curves: dict[tuple, pd.Series] = {}
    if baseline is not None:
        base = frame[frame["method"] == baseline]
        for key, group in base.groupby(["dataset_name", *VARIANT, "corruption", "metric"]):
            base_curves[key] = group.groupby("level")["value"].mean().sort_index()
    rows = []
    for key, group in frame.groupby(_GROUP, sort=True):
        method, dataset, *variant, corruption, metric = key
        higher = bool(group["higher_is_better"].iloc[0])
        per_seed: dict[str, list[float]] = {k: [] for k in
                                            ("clean", "mean_over_levels", "auilc", "retention", "ce", "relative_ce",
                                             "effective_robustness")}
        levels = sorted(group["level"].unique())
        b = base_curves.get((dataset, *variant, corruption, metric))
        base_noise = variant[0] if b is not None else None
        if b is None and variant[0] != "none":  # e.g. LNLN always trains with noise: compare with the clean-trained
            b = base_curves.get((dataset, "none", *variant[1:], corruption, metric))  # baseline, and say so
            base_noise = "none" if b is not None else None
        for _, seed_group in group.groupby("seed"):
            curve = seed_group.groupby("level")["value"].mean().reindex(levels)
            r, f = np.asarray(curve.index, dtype=float), curve.to_numpy(dtype=float)
            clean = f[0] if r[0] == 0.0 else float("nan")
            per_seed["clean"].append(clean)
            per_seed["mean_over_levels"].append(mean_over_levels(f))
            per_seed["auilc"].append(auilc(r, f)[1] if r.size > 1 else float("nan"))
            corrupted = f[r > 0]
            per_seed["retention"].append(mean_retention(clean, corrupted, higher) if corrupted.size else float("nan"))
            if b is not None and list(b.index) == levels and corrupted.size and r[0] == 0.0:
                bf = b.to_numpy(dtype=float)
                err, base_err = to_error(f, higher), to_error(bf, higher)
                per_seed["ce"].append(corruption_error(err[1:], base_err[1:]))
                per_seed["relative_ce"].append(relative_corruption_error(err[0], err[1:], base_err[0], base_err[1:]))
                per_seed["effective_robustness"].append(effective_robustness(f, bf, higher))
        row: dict[str, Any] = dict(zip(_GROUP, key))
        row.update({"higher_is_better": higher, "seeds": int(group["seed"].nunique()), "baseline_train_noise": base_noise,
                    "grid": ",".join(f"{v:g}" for v in levels)})
        for name, values in per_seed.items():
            row[name], row[f"{name}_std"] = _stats(values)
        for level, value in group.groupby("level")["value"].mean().items():
            row[f"at_{level:g}"] = float(value)
        rows.append(row)
    return pd.DataFrame(rows)


def text_mode_label(text_mode: str, text_encoder: str | None) -> str:
    """``features``, or ``reencode:<encoder spec>`` (how tables and plots name a text mode)."""
    if text_mode == "features" or not text_encoder or text_encoder == "none":
        return str(text_mode)
    return f"{text_mode}:{text_encoder}"


def overall(summary):
    """Per (method, dataset, train noise, text mode, metric): means over corruptions — mRA, mCE, relative mCE,
    effective robustness, mean over levels and AUILC — and the clean score."""
    columns = {"clean": "clean", "mean_over_levels": "mean_over_levels", "auilc": "auilc", "retention": "mRA",
               "ce": "mCE", "relative_ce": "relative_mCE", "effective_robustness": "effective_robustness"}
    summary = with_variants(summary)
    grouped = summary.groupby(["method", "dataset_name", *VARIANT, "metric"], sort=True)
    table = grouped[list(columns)].mean().rename(columns=columns)
    table["corruptions"] = grouped["corruption"].nunique()
    table["seeds"] = grouped["seeds"].max()
    table["higher_is_better"] = grouped["higher_is_better"].first()
    if "baseline_train_noise" in summary:
        table["baseline_train_noise"] = grouped["baseline_train_noise"].first()
    return table.reset_index()
