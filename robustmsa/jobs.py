"""The sweep's jobs: train one model; evaluate one trained model over all its missing cells.

Each job is a module-level function of one picklable :class:`ModelJob`, so any launcher (a local process pool,
a SLURM array through submitit, Ray tasks) can run it anywhere the package is installed and the output directory
is reachable. A job reloads the dataset from its :class:`DatasetRef` (or receives it in-process), pays the torch
import and the model load once, and writes one record per cell into the results store.

Records on disk are the source of truth: :func:`missing_cells` is what the driver (``robustmsa.sweep``) asks
before and after every round, and an evaluation job asks it again *under the model's claim*
(:class:`robustmsa.locks.FileClaim`), so overlapping sweeps into one directory write every cell exactly once.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import __version__
from .datasets.split import Dataset, Split
from .locks import FileClaim
from .results import CellKey, ResultsStore
from .stop import StopRequested, handle_sigterm, stop_requested, training_section

if TYPE_CHECKING:
    from .corruptions.reencode import TextReencoder
    from .text_encoding import LocalTextEncoder

__all__ = ["DatasetRef", "SweepSpec", "ModelJob", "plan_jobs", "model_identity", "missing_cells", "train_model",
           "evaluate_model", "is_trained"]


@dataclass(frozen=True)
class DatasetRef:
    """How a job finds the dataset again: a registered name or an MMSA pickle path (+ data root, label family)."""

    name_or_path: str
    data_root: str | None = None
    label_family: str | None = None
    seed: int = 0   # generation seed of the synthetic profiles

    def load(self) -> Dataset:
        return _load_dataset(self)


@functools.lru_cache(maxsize=2)
def _load_dataset(ref: DatasetRef) -> Dataset:
    """One load per process and dataset (a worker running several jobs reads the pickle once)."""
    from .datasets import load

    return load(ref.name_or_path, data_root=ref.data_root, label_family=ref.label_family,  # type: ignore[arg-type]
                seed=ref.seed, warn=False)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a job needs to know about the sweep; plain values only, so it pickles to any engine."""

    methods: tuple[str, ...]
    dataset: DatasetRef | Dataset          # a Dataset object works in-process and in local pools only
    corruptions: tuple[str, ...]
    levels: tuple[float, ...]
    seeds: tuple[int, ...]
    out: str
    corruption_seed: int = 1111
    epochs: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    text_backbone: str | None = None
    train_noise: str | None = None
    device: str | None = "auto"
    cache: str | None = None
    text_mode: str = "features"
    text_encoder: "str | LocalTextEncoder | None" = None
    allow_encoder_mismatch: bool = False
    audit_samples: int = 32
    force: bool = False
    stale_after: float = 120.0   # seconds without heartbeat before another job may break a model's claim

    def load_dataset(self) -> Dataset:
        return self.dataset if isinstance(self.dataset, Dataset) else self.dataset.load()

    @property
    def encoder_spec(self) -> str | None:
        """The re-encoding encoder's spec string (None in features mode)."""
        if self.text_mode == "features" or self.text_encoder is None:
            return None
        return self.text_encoder if isinstance(self.text_encoder, str) else self.text_encoder.spec


@dataclass(frozen=True)
class ModelJob:
    """One trained model of the sweep: (method, seed) under the sweep's dataset, config and train noise."""

    spec: SweepSpec
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method} seed {self.seed}"


def plan_jobs(spec: SweepSpec) -> list[ModelJob]:
    """Every (method, seed) model of the grid, in grid order."""
    return [ModelJob(spec, method, int(seed)) for method in spec.methods for seed in spec.seeds]


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model's cells: its resolved config, hash, train noise and cache key."""

    config: dict[str, Any]
    config_hash: str
    train_noise: str | None
    model_key: str


def model_identity(job: ModelJob, dataset: Dataset) -> ModelIdentity:
    """The resolved config, train noise and cache key of ``job``'s model (no training, no torch work)."""
    from .engine.cache import cache_key
    from .engine.train import effective_train_noise, model_key, resolved_config

    spec = job.spec
    config = resolved_config(job.method, dataset.spec, spec.overrides, epochs=spec.epochs,
                             text_backbone=spec.text_backbone)
    noise = effective_train_noise(config, spec.train_noise)  # a method's default noise (LNLN) names its cells
    return ModelIdentity(config, cache_key(config)[:16], noise, model_key(job.method, config, dataset.spec,
                                                                          job.seed, noise))


def cell_keys(job: ModelJob, dataset: Dataset, identity: ModelIdentity | None = None) -> list[CellKey]:
    """The cells of ``job``'s model: one per (corruption, level)."""
    ident = identity or model_identity(job, dataset)
    spec = job.spec
    return [CellKey(job.method, dataset.spec.fingerprint, job.seed, ident.train_noise, ident.config_hash, c,
                    float(v), int(spec.corruption_seed), spec.text_mode, spec.encoder_spec)
            for c in spec.corruptions for v in spec.levels]


def missing_cells(job: ModelJob, dataset: Dataset, store: ResultsStore | None = None) -> list[CellKey]:
    """The cells of ``job`` without a record (all of them with ``force``)."""
    store = store or ResultsStore(job.spec.out)
    keys = cell_keys(job, dataset)
    return keys if job.spec.force else [k for k in keys if not store.has(k)]


def is_trained(job: ModelJob, dataset: Dataset) -> bool:
    """True if the checkpoint cache holds an intact entry for ``job``'s model."""
    from .engine.cache import cache_dir, entry_path, load_entry

    ident = model_identity(job, dataset)
    path = entry_path(cache_dir(job.spec.cache), job.method, ident.model_key)
    return path.exists() and load_entry(path, ident.model_key) is not None


def _train(job: ModelJob, dataset: Dataset):
    from .engine.train import train

    spec = job.spec
    with training_section():  # SIGTERM aborts training at once: nothing half-done is written
        return train(job.method, dataset, seed=job.seed, overrides=spec.overrides, epochs=spec.epochs,
                     text_backbone=spec.text_backbone, train_noise=spec.train_noise, device=spec.device,
                     cache=spec.cache, quiet=True)


def train_model(job: ModelJob) -> dict[str, Any]:
    """Job: train ``job``'s model into the checkpoint cache (a cached model is only loaded)."""
    dataset = job.spec.load_dataset()
    with handle_sigterm():  # a scheduler's SIGTERM (time limit, preemption) abandons training cleanly
        model = _train(job, dataset)
    return {"job": job.name, "model_key": model.key, "trained": not model.from_cache,
            "train_seconds": model.train_seconds, "host": _host()}


def evaluate_model(job: ModelJob, **memos: Any) -> dict[str, Any]:
    """Job: evaluate ``job``'s model on every missing cell (training it first if the cache lacks it).

    Claims the model in the results directory first and re-reads the store under the claim, so a concurrent
    sweep never computes the same cell. Returns counts: ``computed``, ``skipped`` (done by someone else),
    ``held`` (True if another live job holds the claim; nothing was done), ``trained``. A SIGTERM (a scheduler's
    time limit or preemption) lets the current cell finish, releases the claim and raises :class:`StopRequested`.
    """
    with handle_sigterm():
        return _evaluate_model(job, **memos)


def _evaluate_model(job: ModelJob, *, reencoders: dict | None = None,
                    corrupted: "CorruptionMemo | None" = None) -> dict[str, Any]:
    spec = job.spec
    dataset = spec.load_dataset()
    store = ResultsStore(spec.out)
    identity = model_identity(job, dataset)
    keys = cell_keys(job, dataset, identity)
    result = {"job": job.name, "model_key": identity.model_key, "computed": 0, "skipped": 0, "held": False,
              "trained": False, "host": _host()}
    claim = FileClaim(store.root / "claims" / job.method / f"{identity.model_key[:32]}.claim",
                      stale_after=spec.stale_after, label=job.name)
    if not claim.try_acquire():
        result.update(held=True, claim=str(claim.path))
        return result
    try:
        todo = keys if spec.force else [k for k in keys if not store.has(k)]
        result["skipped"] = len(keys) - len(todo)
        if not todo:
            return result
        model = _train(job, dataset)
        result["trained"] = not model.from_cache
        _audit(job, model, dataset, store)
        _evaluate_cells(job, model, dataset, store, todo, result, reencoders, corrupted)
    finally:
        claim.release()
    return result


def _audit(job: ModelJob, model, dataset: Dataset, store: ResultsStore) -> None:
    spec = job.spec
    if not spec.audit_samples or (not spec.force and store.load_coverage(job.method, model.key) is not None):
        return
    from .audit import input_coverage

    report = input_coverage(model.model, dataset.test, samples=spec.audit_samples, seed=0, device=model.device)
    store.write_coverage(job.method, model.key, {**report.to_dict(), "seed": int(job.seed),
                                                 "train_noise": model.train_noise,
                                                 "dataset": dataset.spec.fingerprint})


def _evaluate_cells(job: ModelJob, model, dataset: Dataset, store: ResultsStore, todo: list[CellKey],
                    result: dict[str, Any], reencoders: dict | None, corrupted: "CorruptionMemo | None") -> None:
    import numpy as np

    from . import metrics as msa_metrics
    from .corruptions.reencode import corruption_records
    from .engine.evaluate import SplitEvaluator
    from .provenance import utc_now

    spec = job.spec
    reencoder = _reencoder(spec, dataset, reencoders)
    memo = corrupted if corrupted is not None else _CORRUPTED
    evaluator = SplitEvaluator(model, dataset.test)  # clean pass once; untouched modalities reused
    for key in todo:
        if stop_requested():  # SIGTERM between cells: stop cleanly, the finished cells are kept
            raise StopRequested(f"stopped after {result['computed']} cell(s) of {job.name}")
        split = memo.get(dataset, key, reencoder)
        eval_start = time.perf_counter()
        if key.level == 0.0:  # severity 0 is the identity
            metrics, reused = evaluator.clean(), []
        else:
            metrics, reused = evaluator.evaluate(split)
        store.write(key, {
            "kind": "robustmsa.cell", "created": utc_now(), "dataset_name": dataset.spec.name,
            "metrics": metrics, "higher_is_better": {m: msa_metrics.higher_is_better(m) for m in metrics},
            "realised": corruption_records(split)[-1]["realised"], "reused_clean_encodings": reused,
            **_text_mode_entry(split, reencoder),
            "checkpoint": model.cache_path, "model_key": model.key, "train_from_cache": model.from_cache,
            "train_seconds": model.train_seconds, "eval_seconds": time.perf_counter() - eval_start,
            "method_config": model.config, "host": _host(),
            "versions": {"robustmsa": __version__, "numpy": np.__version__},
        })
        result["computed"] += 1


def _reencoder(spec: SweepSpec, dataset: Dataset, reencoders: dict | None) -> "TextReencoder | None":
    """The sweep's text re-encoder (None in features mode), loaded once per process and dataset."""
    if spec.text_mode == "features":
        return None
    from .corruptions.reencode import prepare_reencoder

    cache = reencoders if reencoders is not None else _REENCODERS
    key = (spec.encoder_spec, dataset.spec.fingerprint, spec.allow_encoder_mismatch)
    if key not in cache:
        cache.clear()  # one encoder per process at a time
        cache[key] = prepare_reencoder(spec.text_mode, spec.text_encoder, dataset.test, source=dataset.spec.source,
                                       allow_mismatch=spec.allow_encoder_mismatch, device=spec.device)
    return cache[key]


_REENCODERS: dict = {}  # per-process memo of the (expensive to load) text encoder; keyed, never mutated in place


class CorruptionMemo:
    """Corrupted test splits of this process, keyed by (dataset, corruption, level, seed, text mode).

    Bounded by the bytes of the arrays a corrupted split does not share with the clean one (``max_bytes``), so
    a long sweep on a large dataset does not keep every corrupted copy alive; the oldest entry goes first.
    """

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self._items: dict[tuple, tuple[Split, int]] = {}

    def get(self, dataset: Dataset, key: CellKey, reencoder: "TextReencoder | None") -> Split:
        from .corruptions import create_corruption

        memo_key = (dataset.spec.fingerprint, key.corruption, key.level, key.corruption_seed, key.text_mode,
                    key.text_encoder)
        if memo_key in self._items:
            return self._items[memo_key][0]
        split = create_corruption(key.corruption, key.level)(dataset.test, key.corruption_seed)
        if reencoder is not None:  # once per (corruption, level); only changed samples
            split = reencoder(split, dataset.test)
        size = sum(getattr(split, name).nbytes for name in Split.array_keys()
                   if getattr(split, name) is not getattr(dataset.test, name))
        while self._items and sum(n for _, n in self._items.values()) + size > self.max_bytes:
            self._items.pop(next(iter(self._items)))
        if size <= self.max_bytes:
            self._items[memo_key] = (split, size)
        return split

    def clear(self) -> None:
        self._items.clear()


_CORRUPTED = CorruptionMemo()  # per-process memo shared by the jobs a process runs (in-process sweeps, workers)


def _text_mode_entry(split: Split, reencoder: "TextReencoder | None") -> dict[str, Any]:
    """The text-mode fields of a cell record: the mode, and in reencode mode the encoder and samples re-encoded."""
    from .corruptions.reencode import REENCODE_RECORD

    if reencoder is None:
        return {"text_mode": "features"}
    done = [r for r in split.corruptions if r.get("name") == REENCODE_RECORD]
    return {"text_mode": "reencode", "text_encoder": reencoder.encoder.describe(),
            "samples_reencoded": int(done[-1]["samples_reencoded"]) if done else 0}


def _host() -> str:
    import socket

    return socket.gethostname()


def with_out(spec: SweepSpec, out: str | os.PathLike) -> SweepSpec:
    """``spec`` writing to another directory."""
    return replace(spec, out=str(Path(out)))
