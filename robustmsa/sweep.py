"""Noise sweeps: train each (method, seed) once, evaluate it under every corruption and level, one record per cell.

Cells already in the results store are skipped, so re-running an interrupted sweep finishes it; ``force``
recomputes. Training goes through the engine's checkpoint cache, so a model is trained at most once per
(method, config, dataset, seed, train noise) across sweeps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__
from . import metrics as msa_metrics
from .corruptions import create_corruption
from .corruptions.reencode import (REENCODE_RECORD, TextReencoder, corruption_records, prepare_reencoder,
                                   text_mode_config)
from .datasets.split import Dataset, Split
from .engine.cache import cache_key
from .audit import input_coverage
from .engine.evaluate import SplitEvaluator
from .engine.train import effective_train_noise, resolved_config, train
from .provenance import environment, utc_now
from .results import CellKey, ResultsStore

if TYPE_CHECKING:
    from .text_encoding import LocalTextEncoder

__all__ = ["parse_levels", "SweepSummary", "run_sweep"]


def parse_levels(text: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma list, each level in [0, 1]: ``0:0.9:0.1`` -> 0.0 ... 0.9."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"levels {text!r}: expected START:STOP:STEP, e.g. 0:0.9:0.1")
        start, stop, step = (float(p) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"levels {text!r}: need STEP > 0 and STOP >= START")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        levels = [round(start + i * step, 10) for i in range(count)]
    else:
        levels = [float(p) for p in text.split(",") if p.strip()]
    if not levels or any(not 0.0 <= v <= 1.0 for v in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"levels {text!r}: expected distinct values in [0, 1], got {levels}")
    return sorted(levels)


@dataclass
class SweepSummary:
    """Counts of a sweep run and where its results are."""

    total: int
    computed: int
    skipped: int
    trained: int
    out: Path
    seconds: float


def run_sweep(methods: Sequence[str], dataset: Dataset, corruptions: Sequence[str], levels: Sequence[float],
              seeds: Sequence[int], out: str | Path, *, corruption_seed: int = 1111, epochs: int | None = None,
              overrides: Mapping[str, Any] | None = None, text_backbone: str | None = None,
              train_noise: str | None = None, device: str | None = "auto", cache: str | Path | None = None,
              force: bool = False, quiet: bool = True, log: Callable[[str], None] | None = None,
              command: str | None = None, text_mode: str = "features",
              text_encoder: "str | LocalTextEncoder | None" = None,
              allow_encoder_mismatch: bool = False, audit_samples: int = 32) -> SweepSummary:
    """Run (or resume) the grid methods x seeds x corruptions x levels on ``dataset``; records go to ``out``.

    Each trained model is also audited for input coverage on ``audit_samples`` test items (``robustmsa.audit``,
    gradient probe; 0 turns it off), written to ``out/coverage/<method>/<model key>.json`` for the leaderboard.

    ``text_mode="reencode"`` loads ``text_encoder`` once, checks it against the clean test features, and re-encodes
    each corrupted test split once per (corruption, level); its cells get keys of their own.
    """
    start = time.perf_counter()
    store = ResultsStore(out)
    for name in corruptions:  # fail on a bad corruption name before any training
        create_corruption(name, 0.0)
    reencoder = prepare_reencoder(text_mode, text_encoder, dataset.test, source=dataset.spec.source,
                                  allow_mismatch=allow_encoder_mismatch, device=device)
    encoder_spec = None if reencoder is None else reencoder.spec
    mode = text_mode_config(reencoder)
    grid = {"methods": list(methods), "corruptions": list(corruptions), "levels": list(levels),
            "seeds": list(seeds), "corruption_seed": corruption_seed, "train_noise": train_noise,
            "text_mode": text_mode, "text_encoder": encoder_spec}
    store.write_manifest({"kind": "robustmsa.sweep", "command": command, "created": utc_now(), "grid": grid,
                          "dataset": dataset.spec.to_dict(), "epochs": epochs, "overrides": dict(overrides or {}),
                          "text_backbone": text_backbone, **mode, "environment": environment()})
    total = len(methods) * len(seeds) * len(corruptions) * len(levels)
    corrupted: dict[tuple[str, float], Split] = {}
    computed = skipped = trained_count = 0
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), disable=quiet) as progress:
        task = progress.add_task("sweep", total=total)
        for method in methods:
            config = resolved_config(method, dataset.spec, overrides, epochs=epochs, text_backbone=text_backbone)
            noise = effective_train_noise(config, train_noise)  # a method's default noise (LNLN) names its cells
            config_hash = cache_key(config)[:16]
            for seed in seeds:
                keys = [CellKey(method, dataset.spec.fingerprint, int(seed), noise, config_hash, c, float(v),
                                int(corruption_seed), text_mode, encoder_spec) for c in corruptions for v in levels]
                missing = [k for k in keys if force or not store.has(k)]
                skipped += len(keys) - len(missing)
                progress.advance(task, len(keys) - len(missing))
                if not missing:
                    continue
                progress.update(task, description=f"train {method} seed {seed}")
                model = train(method, dataset, seed=seed, overrides=overrides, epochs=epochs,
                              text_backbone=text_backbone, train_noise=train_noise, device=device, cache=cache,
                              quiet=True, log=log)
                trained_count += int(not model.from_cache)
                if audit_samples and (force or store.load_coverage(method, model.key) is None):
                    progress.update(task, description=f"audit {method} seed {seed}")
                    report = input_coverage(model.model, dataset.test, samples=audit_samples, seed=0,
                                            device=model.device)
                    store.write_coverage(method, model.key, {**report.to_dict(), "seed": int(seed),
                                                             "train_noise": model.train_noise,
                                                             "dataset": dataset.spec.fingerprint})
                evaluator = SplitEvaluator(model, dataset.test)  # clean pass once; untouched modalities reused
                for key in missing:
                    progress.update(task, description=f"{method} seed {seed} {key.corruption}@{key.level:g}")
                    split = corrupted.get((key.corruption, key.level))
                    if split is None:
                        split = create_corruption(key.corruption, key.level)(dataset.test, corruption_seed)
                        if reencoder is not None:  # once per (corruption, level); only changed samples
                            split = reencoder(split, dataset.test)
                        corrupted[(key.corruption, key.level)] = split
                    eval_start = time.perf_counter()
                    if key.level == 0.0:  # severity 0 is the identity
                        metrics, reused = evaluator.clean(), []
                    else:
                        metrics, reused = evaluator.evaluate(split)
                    store.write(key, {
                        "kind": "robustmsa.cell", "created": utc_now(), "dataset_name": dataset.spec.name,
                        "metrics": metrics,
                        "higher_is_better": {m: msa_metrics.higher_is_better(m) for m in metrics},
                        "realised": corruption_records(split)[-1]["realised"], "reused_clean_encodings": reused,
                        **_text_mode_entry(split, reencoder),
                        "checkpoint": model.cache_path,
                        "model_key": model.key, "train_from_cache": model.from_cache,
                        "train_seconds": model.train_seconds, "eval_seconds": time.perf_counter() - eval_start,
                        "method_config": config, "versions": {"robustmsa": __version__,
                                                              "numpy": np.__version__},
                    })
                    computed += 1
                    progress.advance(task)
    frame = store.to_frame()
    frame.to_csv(store.root / "results.csv", index=False)
    try:
        frame.to_parquet(store.root / "results.parquet", index=False)
    except ImportError:  # pyarrow / fastparquet not installed: the CSV holds the same table
        pass
    return SweepSummary(total, computed, skipped, trained_count, store.root, time.perf_counter() - start)


def _text_mode_entry(split: Split, reencoder: TextReencoder | None) -> dict[str, Any]:
    """The text-mode fields of a cell record: the mode, and in reencode mode the encoder and samples re-encoded."""
    if reencoder is None:
        return {"text_mode": "features"}
    done = [r for r in split.corruptions if r.get("name") == REENCODE_RECORD]
    return {"text_mode": "reencode", "text_encoder": reencoder.encoder.describe(),
            "samples_reencoded": int(done[-1]["samples_reencoded"]) if done else 0}
