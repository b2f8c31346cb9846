"""Leaderboards from one or more sweep directories: rank methods by robustness (RobustBench / ImageNet-C style).

Columns: rank, method, clean score, mean corrupted score per corruption (levels > 0), overall robust score (mean over
corruptions of the mean over levels, clean included, LNLN's number), AUILC, mRA, mCE and relative mCE against LF-DNN,
change from clean, change in rank (clean rank - robust rank), seeds, train-time noise, text mode (``features`` or
``reencode:<encoder>``; each mode is its own row), config hash. Rendered as a rich
table, Markdown, CSV or one self-contained HTML page (sortable table, plots embedded).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .results import ResultsStore
from .audit import COVERAGE_THRESHOLD
from .robustness import VARIANT, overall, summarize, text_mode_label, with_variants

__all__ = ["METRIC_ALIASES", "resolve_metric", "build", "load_coverage", "to_markdown", "to_html", "load_runs"]

METRIC_ALIASES = {
    "acc2": {"mosi": "Non0_acc_2", "sims": "Mult_acc_2"}, "f1": {"mosi": "Non0_F1_score", "sims": "F1_score"},
    "has0_acc2": {"mosi": "Has0_acc_2"}, "acc3": {"sims": "Mult_acc_3"}, "acc5": {"mosi": "Mult_acc_5", "sims": "Mult_acc_5"},
    "acc7": {"mosi": "Mult_acc_7"}, "mae": {"mosi": "MAE", "sims": "MAE"}, "corr": {"mosi": "Corr", "sims": "Corr"},
}


def load_runs(runs: Sequence[str | Path]):
    """The tidy tables of several sweep directories, concatenated (duplicate cells counted once)."""
    import pandas as pd

    frames = []
    for run in runs:
        frame = ResultsStore(run).to_frame()
        if frame.empty:
            raise FileNotFoundError(f"{run}: no cell records under {Path(run) / 'cells'} (is it a sweep's --out?)")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=["digest", "metric"])


def load_coverage(runs: Sequence[str | Path]):
    """The input-coverage audits of several sweep directories (one row per audited model and modality)."""
    import pandas as pd

    frames = [ResultsStore(run).coverage_frame() for run in runs]
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=["model_key", "modality"])


def _coverage_columns(coverage, model_keys: set[str]) -> dict[str, str]:
    """``coverage`` (mean over the audited models ``model_keys``, per modality) and ``flag`` (modalities below 90%)."""
    mine = None if coverage is None or coverage.empty else coverage[coverage["model_key"].isin(model_keys)]
    if mine is None or mine.empty:
        return {"coverage": "", "flag": ""}
    means = mine.groupby("modality", sort=False)["fraction"].mean()
    order = [m for m in ("text", "audio", "vision") if m in means.index and np.isfinite(means[m])]
    low = [f"{m} {means[m]:.0%}" for m in order if means[m] < COVERAGE_THRESHOLD]
    return {"coverage": " ".join(f"{m[0].upper()} {means[m]:.0%}" for m in order),
            "flag": f"robustness may reflect ignored input ({', '.join(low)})" if low else ""}


def resolve_metric(name: str, available: set[str]) -> str:
    """An MMSA metric key from an alias (``acc2``, ``f1``, ``mae`` ...) or the key itself."""
    if name in available:
        return name
    for candidate in METRIC_ALIASES.get(name.lower(), {}).values():
        if candidate in available:
            return candidate
    raise ValueError(f"unknown metric {name!r}; use one of {sorted(available)} or an alias {sorted(METRIC_ALIASES)}")


def build(frame, metric: str = "acc2", baseline: str = "lf_dnn", coverage=None):
    """The leaderboard DataFrame for ``metric``, best robust score first.

    ``coverage`` (from :func:`load_coverage`) adds each method's input coverage per modality and a flag where a
    modality is covered below 90% (``robustmsa.audit``): its robustness to corrupting that modality may only
    reflect input the method never reads.
    """
    import pandas as pd

    key = resolve_metric(metric, set(frame["metric"]))
    summary = summarize(frame, baseline=baseline)
    summary = summary[summary["metric"] == key]
    totals = overall(summary)
    higher = bool(summary["higher_is_better"].iloc[0])
    rows = []
    frame = with_variants(frame)
    for _, row in totals.iterrows():
        same = ["method", "dataset_name", *VARIANT]  # one board row per method and variant, never averaged across
        mine = summary[np.logical_and.reduce([summary[c] == row[c] for c in same])]
        entry = {"method": row["method"], "dataset": row["dataset_name"], "clean": row["clean"]}
        for _, per in mine.iterrows():
            corrupted = [v for k, v in per.items() if k.startswith("at_") and k != "at_0" and np.isfinite(v)]
            entry[f"{per['corruption']}"] = float(np.mean(corrupted)) if corrupted else float("nan")
        same_frame = [frame[c] == row[c] for c in same if c != "dataset_name"]
        cells = frame[np.logical_and.reduce([*same_frame, frame["metric"] == key])]
        entry.update({"robust": row["mean_over_levels"], "AUILC": row["auilc"], "mRA": row["mRA"], "mCE": row["mCE"],
                      "rel_mCE": row["relative_mCE"], "change": row["mean_over_levels"] - row["clean"],
                      "seeds": int(row["seeds"]), "train_noise": row["train_noise"],
                      "_baseline_noise": row.get("baseline_train_noise"),
                      "text_mode": text_mode_label(row["text_mode"], row["text_encoder"]),
                      "config": ",".join(sorted(set(cells["config_hash"].astype(str)))),
                      **_coverage_columns(coverage, set(cells["model_key"].dropna()) if "model_key" in cells else set())})
        rows.append(entry)
    board = pd.DataFrame(rows)
    sign = -1 if higher else 1
    # competition ranking ("1, 2, 2, 4") for both ranks, so tied methods share a rank and the rank change of a
    # tie is 0 rather than an artefact of the row order; NaN scores rank last
    board["clean_rank"] = (sign * board["clean"]).rank(method="min", na_option="bottom").astype(int)
    board = board.assign(_key=sign * board["robust"], _tie=sign * board["clean"])
    board = board.sort_values(["_key", "_tie"], kind="stable", na_position="last").reset_index(drop=True)
    board.insert(0, "rank", board["_key"].rank(method="min", na_option="bottom").astype(int))
    board = board.drop(columns=["_key", "_tie"])
    board["rank_change"] = board["clean_rank"] - board["rank"]
    crossed = board[board["_baseline_noise"].notna() & (board["_baseline_noise"] != board["train_noise"])]
    board = board.drop(columns=["_baseline_noise"])
    board.attrs.update({"metric": key, "higher_is_better": higher, "baseline": baseline,
                        "grid": sorted(summary["grid"].unique()),
                        "baseline_fallback": sorted(set(crossed["method"]))})
    return board.drop(columns=["clean_rank"])


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.4f}"
    return str(value)


def baseline_note(board) -> str:
    """What mCE compares with: the baseline trained with each row's train noise, or (named) without noise."""
    note = f"mCE vs {board.attrs['baseline']} with the same train noise"
    fallback = board.attrs.get("baseline_fallback") or []
    if fallback:
        note += (f" ({', '.join(fallback)}: vs {board.attrs['baseline']} trained without noise, since it was not "
                 f"trained with theirs)")
    return note


def to_markdown(board) -> str:
    """A GitHub-flavoured Markdown table with a caption line."""
    caption = (f"Metric {board.attrs['metric']} ({'higher' if board.attrs['higher_is_better'] else 'lower'} is better); "
               f"{baseline_note(board)}; level grid(s) {', '.join(board.attrs['grid'])}")
    header = "| " + " | ".join(board.columns) + " |"
    rule = "|" + "|".join("---:" if board[c].dtype.kind in "if" else "---" for c in board.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in board.itertuples(index=False)]
    return "\n".join([caption, "", header, rule, *body]) + "\n"


_SORT_JS = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.order !== 'asc'; th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const t = r.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
}));
"""


def to_html(board, plots: Sequence[Path] = (), title: str = "robustmsa leaderboard") -> str:
    """One self-contained page: a sortable table (click a header) and the PNG plots embedded as data URIs."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in board.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in board.itertuples(index=False))
    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in plots)
    caption = html.escape(to_markdown(board).splitlines()[0])
    meta = html.escape(json.dumps({k: v for k, v in board.attrs.items()}, default=str))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}th{cursor:pointer;background:#f3f3f3}td:nth-child(2),th:nth-child(2)"
            "{text-align:left}img{max-width:900px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{caption}</p><table id='board' data-meta='{meta}'><thead><tr>{head}"
            f"</tr></thead><tbody>{rows}</tbody></table>{images}<script>{_SORT_JS}</script></body></html>")
