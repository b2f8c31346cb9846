"""Figures of a sweep: degradation curves per corruption, a grid of all corruptions, a method x corruption heatmap.

Functions take the tidy results table (``ResultsStore.to_frame()``), draw on a given ``ax`` where one makes sense,
and :func:`plot_run` writes PNG and SVG files. matplotlib runs with the non-interactive Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["degradation_curve", "plot_run", "with_series"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def with_series(frame):
    """``frame`` with a ``series`` column: the method, plus the train noise and text mode where those vary.

    Curves of one method under different train-time noise or text modes (``features`` / ``reencode``) are drawn as
    separate lines and heatmap rows, never averaged together.
    """
    import pandas as pd

    from .robustness import text_mode_label, with_variants

    if "series" in frame:
        return frame
    frame = with_variants(frame)
    noise = frame["train_noise"].astype(str)
    text = pd.Series([text_mode_label(m, e) for m, e in zip(frame["text_mode"], frame["text_encoder"])],
                     index=frame.index, dtype=str)
    series = frame["method"].astype(str)
    if noise.nunique() > 1:
        series = series + " noise=" + noise
    if text.nunique() > 1:
        series = series + " text=" + text
    return frame.assign(series=series)


def _curve_stats(frame, method: str, corruption: str, metric: str):
    """Levels, mean and std over seeds of one series' curve (``method`` is a value of the ``series`` column)."""
    rows = frame[(frame["series"] == method) & (frame["corruption"] == corruption) & (frame["metric"] == metric)]
    per_seed = rows.groupby(["level", "seed"])["value"].mean().unstack("seed").sort_index()
    std = per_seed.std(axis=1, ddof=1) if per_seed.shape[1] > 1 else per_seed.iloc[:, 0] * 0.0
    return per_seed.index.to_numpy(dtype=float), per_seed.mean(axis=1).to_numpy(), std.fillna(0.0).to_numpy()


def degradation_curve(frame, corruption: str, metric: str, ax=None):
    """Metric vs level for every method (and variant) on ``corruption``, +-1 std band over seeds. Returns (fig, ax)."""
    plt = _pyplot()
    frame = with_series(frame)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 4))
    for method in sorted(frame["series"].unique()):
        levels, mean, std = _curve_stats(frame, method, corruption, metric)
        if levels.size == 0:
            continue
        (line,) = ax.plot(levels, mean, marker="o", markersize=3, label=method)
        ax.fill_between(levels, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    higher = bool(frame.loc[frame["metric"] == metric, "higher_is_better"].iloc[0])
    ax.set_title(corruption)
    ax.set_xlabel("corruption level (severity)")
    ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.grid(alpha=0.3)
    return fig, ax


def plot_run(frame, out_dir: str | Path, metric: str = "Non0_acc_2") -> list[Path]:
    """Write ``curve_<corruption>``, ``curves_grid`` and ``heatmap`` as PNG and SVG under ``out_dir``."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if metric not in set(frame["metric"]):
        raise ValueError(f"metric {metric!r} not in the results; available: {sorted(set(frame['metric']))}")
    written: list[Path] = []
    frame = with_series(frame)

    def save(fig, stem: str) -> None:
        for suffix in ("png", "svg"):
            path = out_dir / f"{stem}.{suffix}"
            fig.savefig(path, dpi=150, bbox_inches="tight")
            written.append(path)
        plt.close(fig)

    corruptions = sorted(frame["corruption"].unique())
    for corruption in corruptions:
        fig, ax = degradation_curve(frame, corruption, metric)
        ax.legend(loc="best", fontsize="small", framealpha=0.7)
        save(fig, f"curve_{corruption}")
    cols = min(3, len(corruptions))
    rows = math.ceil(len(corruptions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, corruption in zip(axes.flat, corruptions):
        degradation_curve(frame, corruption, metric, ax=ax)
    for ax in list(axes.flat)[len(corruptions):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save(fig, "curves_grid")
    methods = sorted(frame["series"].unique())
    chosen = frame[frame["metric"] == metric]
    table = chosen.groupby(["series", "corruption"])["value"].mean().unstack("corruption").reindex(
        index=methods, columns=corruptions)
    fig, ax = plt.subplots(figsize=(1.4 * len(corruptions) + 2.5, 0.5 * len(methods) + 1.8))
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(corruptions)), corruptions, rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for (i, j), value in np.ndenumerate(table.to_numpy(dtype=float)):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize="small")
    fig.colorbar(image, ax=ax, label=f"{metric}, mean over levels")
    ax.set_title(f"{metric}: mean over levels")
    save(fig, "heatmap")
    return written
