"""Evaluate trained models clean and under corruption, over seeds, into an lm-eval-style results record.

The protocol: every seed's model is trained (or loaded from the cache) with validation selection; the test split
is corrupted once, deterministically from (corruption, severity, corruption seed), and clean and corrupted
metrics come from the same checkpoint. Aggregates are mean and sample std over seeds.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics as msa_metrics
from ..corruptions import create_corruption
from ..corruptions.reencode import prepare_reencoder, text_mode_config
from ..datasets.split import Dataset, Split
from ..provenance import environment, utc_now
from .cache import cache_key
from .reuse import Encodings, unchanged_modalities
from .train import TrainedModel, predict, train

if TYPE_CHECKING:
    from ..text_encoding import LocalTextEncoder

__all__ = ["evaluate_split", "SplitEvaluator", "run_eval", "aggregate", "DEFAULT_SEEDS"]

DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)  # MMSA's seeds


def _metrics(trained: TrainedModel, preds: np.ndarray, split: Split) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", msa_metrics.ConstantInputWarning)  # NaN Corr is reported as such
        return msa_metrics.compute(preds, split.regression_labels, trained.spec.label_family)


def evaluate_split(trained: TrainedModel, split: Split) -> dict[str, float]:
    """Metrics of ``trained`` on ``split`` for the dataset's label family."""
    return _metrics(trained, predict(trained.model, split, device=trained.device), split)


class SplitEvaluator:
    """Evaluates one trained model on a clean split and on corrupted copies of it.

    The clean pass is computed once. For a method with unimodal encoders it keeps their outputs, and each
    corrupted copy then recomputes only the modalities whose inputs differ from the clean split; the others
    are gathered from the clean pass. Predictions equal those of a plain forward pass (tested). A copy whose text
    was re-encoded (``text_mode="reencode"``) needs nothing special: its ``text`` differs from the clean array, so
    text is recomputed; when no sample's ids changed it is the clean array, so text is reused.
    """

    def __init__(self, trained: TrainedModel, clean: Split, *, reuse: bool = True) -> None:
        self.trained, self.clean_split = trained, clean
        self.reuse = reuse and bool(trained.model.unimodal_encoders)
        self._clean: dict[str, float] | None = None
        self._encodings: Encodings | None = None

    def clean(self) -> dict[str, float]:
        """Metrics on the clean split (computed on first use)."""
        if self._clean is None:
            model, device = self.trained.model, self.trained.device
            if self.reuse:
                preds, self._encodings = predict(model, self.clean_split, device=device, keep_encodings=True)
            else:
                preds = predict(model, self.clean_split, device=device)
            self._clean = _metrics(self.trained, preds, self.clean_split)
        return dict(self._clean)

    def evaluate(self, split: Split) -> tuple[dict[str, float], list[str]]:
        """Metrics on ``split`` (a corrupted copy of the clean split) and the modalities whose encodings were reused."""
        if not self.reuse:
            return evaluate_split(self.trained, split), []
        unchanged = unchanged_modalities(self.clean_split, split) & set(self.trained.model.unimodal_encoders)
        if unchanged == set(self.trained.model.unimodal_encoders):
            return self.clean(), sorted(unchanged)
        if unchanged:
            self.clean()  # computes the encodings to reuse
        preds = predict(self.trained.model, split, device=self.trained.device, reuse=self._encodings,
                        reuse_modalities=unchanged)
        return _metrics(self.trained, preds, split), sorted(unchanged)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size == 1 else math.nan)
    return {"mean": mean, "std": std, "n": int(finite.size)}


def aggregate(per_seed: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean/std over seeds of the clean and corrupted metrics and of their difference."""
    out: dict[str, dict[str, dict[str, float]]] = {"clean": {}, "corrupted": {}, "delta": {}}
    for name in names:
        clean = [r["clean"][name] for r in per_seed]
        corrupted = [r["corrupted"][name] for r in per_seed]
        out["clean"][name] = _mean_std(clean)
        out["corrupted"][name] = _mean_std(corrupted)
        out["delta"][name] = _mean_std([b - a for a, b in zip(clean, corrupted)])
    return out


def run_eval(method: str, dataset: Dataset, *, corruption: str = "random_missing", severity: float = 0.3,
             corruption_seed: int = 1111, modalities: Sequence[str] | None = None, seeds: Sequence[int] = (1111,),
             overrides: Mapping[str, Any] | None = None, epochs: int | None = None,
             text_backbone: str | None = None, train_noise: str | None = None, device: str | None = "auto",
             use_cache: bool = True, cache: str | None = None, quiet: bool = True,
             log: Callable[[str], None] | None = None, command: str | None = None, text_mode: str = "features",
             text_encoder: "str | LocalTextEncoder | None" = None,
             allow_encoder_mismatch: bool = False) -> dict[str, Any]:
    """Train (or load) ``method`` for each seed, evaluate clean and corrupted test metrics; return the record.

    ``text_mode="reencode"`` recomputes the corrupted test split's ``text`` features with ``text_encoder`` (the
    encoder that made the pickle's features, checked first); ``"features"`` edits them directly (the default).
    """
    started, start_time = utc_now(), time.perf_counter()
    built = create_corruption(corruption, severity, modalities=modalities)
    reencoder = prepare_reencoder(text_mode, text_encoder, dataset.test, source=dataset.spec.source,
                                  allow_mismatch=allow_encoder_mismatch, device=device)
    corrupted_test = built(dataset.test, corruption_seed)
    if reencoder is not None:
        corrupted_test = reencoder(corrupted_test, dataset.test)
    names = msa_metrics.metric_names(dataset.spec.label_family)
    per_seed = []
    trained: TrainedModel | None = None
    for seed in seeds:
        trained = train(method, dataset, seed=seed, overrides=overrides, epochs=epochs, text_backbone=text_backbone,
                        train_noise=train_noise, device=device, use_cache=use_cache, cache=cache, quiet=quiet,
                        log=log)
        eval_start = time.perf_counter()
        evaluator = SplitEvaluator(trained, dataset.test)
        clean = evaluator.clean()
        noisy, reused = evaluator.evaluate(corrupted_test)
        per_seed.append({
            "seed": seed, "cache_key": trained.key, "from_cache": trained.from_cache, "checkpoint": trained.cache_path,
            "best_epoch": trained.best_epoch, "epochs_run": len(trained.history),
            "train_seconds": trained.train_seconds, "eval_seconds": time.perf_counter() - eval_start,
            "clean": clean, "corrupted": noisy, "reused_clean_encodings": reused,
        })
    assert trained is not None, "at least one seed is required"
    config = trained.config
    record = {
        "kind": "robustmsa.eval",
        "command": command,
        "config": {
            "method": method, "dataset": dataset.spec.to_dict(), "seeds": list(seeds),
            "corruption": {"spec": corruption, "severity": severity, "seed": corruption_seed,
                           "modalities": None if modalities is None else list(modalities), "repr": repr(built)},
            "train_noise": trained.train_noise, "device": trained.device, "overrides": dict(overrides or {}),
            "epochs": epochs, "text_backbone": text_backbone, **text_mode_config(reencoder), "method_config": config,
            "selection": "validation loss (one checkpoint for all metrics)",
        },
        "hashes": {"dataset_fingerprint": dataset.spec.fingerprint, "config_hash": cache_key(config),
                   "cache_keys": [r["cache_key"] for r in per_seed]},
        "corruption_record": list(corrupted_test.corruptions),
        "per_seed": per_seed,
        "results": aggregate(per_seed, names),
        "higher_is_better": {name: msa_metrics.higher_is_better(name) for name in names},
        "environment": {**environment(), "torch": _torch_version()},
        "timings": {"start": started, "end": utc_now(), "total_seconds": time.perf_counter() - start_time},
    }
    return record


def _torch_version() -> str:
    import torch

    return torch.__version__
