"""Train a method with validation-set selection and early stopping, or load it from the checkpoint cache.

MMSA's protocol: one checkpoint, chosen by the validation loss (the method's criterion on the valid split),
is used for every metric; the test split is never looked at while training.

Train-time noise: the caller's ``train_noise``, else the method config's ``train_noise`` (a method's own default,
e.g. LNLN's ``random_missing``), else none; :func:`effective_train_noise` decides, and the noise used is in the
cache key, in ``TrainedModel.train_noise`` and (for methods with the key) in the resolved config. Methods with
``wants_paired_batches`` get training batches that carry their clean twins and per-sample rates
(:func:`engine.batches.iterate_paired_batches`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import __version__
from ..datasets.split import Dataset, DatasetSpec, Split
from ..methods.base import Method, get_method, resolve_config
from .batches import SplitTensors, iterate_batches, iterate_paired_batches
from .cache import cache_dir, cache_key, entry_path, load_entry, save_entry
from .device import autocast, resolve_device, seed_everything
from .noise import TrainNoise, normalise_train_noise
from .reuse import Encodings

__all__ = ["TrainedModel", "train", "predict", "resolved_config", "effective_train_noise", "model_key"]

EVAL_BATCH = 256


@dataclass
class TrainedModel:
    """A trained (or cached) model and how it came to be."""

    method: str
    model: Method
    config: dict[str, Any]
    spec: DatasetSpec
    seed: int
    train_noise: str | None
    key: str
    from_cache: bool
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    cache_path: str | None = None
    device: str = "cpu"


def resolved_config(method: str, spec: DatasetSpec, overrides: Mapping[str, Any] | None = None, *,
                    epochs: int | None = None, text_backbone: str | None = None) -> dict[str, Any]:
    """The method's configuration with ``--set`` overrides and the ``--epochs``/``--text-backbone`` shortcuts."""
    merged = dict(overrides or {})
    if epochs is not None:
        merged["epochs"] = int(epochs)
    if text_backbone is not None:
        merged["text_backbone"] = text_backbone
    return resolve_config(method, spec, merged)


def effective_train_noise(config: dict[str, Any], train_noise: str | None) -> str | None:
    """The train-time noise a run uses: ``train_noise`` if given (``"none"``: none), else ``config['train_noise']``.

    When the config has a ``train_noise`` key (a method's default), it is set to the noise used, so that the
    resolved config, its hash and the records say what was used. Returns None for no noise.
    """
    chosen = normalise_train_noise(train_noise if train_noise is not None else config.get("train_noise"))
    if "train_noise" in config:
        config["train_noise"] = chosen
    return chosen


def model_key(method: str, config: Mapping[str, Any], spec: DatasetSpec, seed: int, train_noise: str | None) -> str:
    """The checkpoint-cache key of a training run (what makes two runs the same model)."""
    return cache_key({"method": method, "config": dict(config), "dataset": spec.fingerprint, "seed": int(seed),
                      "train_noise": train_noise, "robustmsa": __version__})


@torch.no_grad()
def predict(model: Method, split: Split | SplitTensors, *, device: torch.device | str = "cpu",
            batch_size: int = EVAL_BATCH, reuse: Encodings | None = None,
            reuse_modalities: set[str] | frozenset[str] = frozenset(),
            keep_encodings: bool = False) -> np.ndarray | tuple[np.ndarray, Encodings]:
    """Regression predictions (N,) of ``model`` on ``split``, in split order.

    With ``keep_encodings`` (a method with unimodal encoders), also returns every modality's encodings of
    ``split``; with ``reuse``, the encodings of ``reuse_modalities`` come from there instead of the encoders
    (their inputs must equal those ``reuse`` was computed from: see :func:`engine.reuse.unchanged_modalities`).
    """
    device = torch.device(device)
    tensors = split if isinstance(split, SplitTensors) else SplitTensors.from_split(split)
    encoders = tuple(model.unimodal_encoders)
    reused = set(reuse_modalities) & set(encoders) if reuse is not None else set()
    staged = keep_encodings or bool(reused)
    if keep_encodings and not encoders:
        raise ValueError(f"{model.name}: keep_encodings needs a method with unimodal encoders")
    kept: dict[str, list[torch.Tensor]] = {m: [] for m in encoders}
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for batch in iterate_batches(tensors, batch_size):
            on_device = batch.to(device)
            with autocast(device):
                if staged:
                    encoded = reuse.gather(reused, batch.index, device) if reused else {}
                    for modality in encoders:
                        if modality not in encoded:
                            encoded[modality] = model.encode_modality(on_device, modality)
                    if keep_encodings:
                        for modality in encoders:
                            kept[modality].append(encoded[modality].cpu())
                    output = model.forward_encoded(on_device, encoded)
                else:
                    output = model(on_device)
            outputs.append(output.pred.float().reshape(-1).cpu())
    finally:
        model.train(was_training)
    preds = torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)
    return (preds, Encodings(kept)) if keep_encodings else preds


def _valid_loss(model: Method, tensors: SplitTensors, device: torch.device, batch_size: int) -> float:
    preds = torch.from_numpy(predict(model, tensors, device=device, batch_size=batch_size))
    return float(model.criterion(preds, tensors.labels))


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=quiet, transient=True)


def train(method: str, dataset: Dataset, *, seed: int = 1111, overrides: Mapping[str, Any] | None = None,
          epochs: int | None = None, text_backbone: str | None = None, train_noise: str | None = None,
          device: str | None = "auto", use_cache: bool = True, cache: str | Path | None = None, quiet: bool = True,
          log: Callable[[str], None] | None = None) -> TrainedModel:
    """Train ``method`` on ``dataset`` (or load the identical run from the cache).

    Args:
        seed: seeds parameter initialisation, batch order and train-time noise.
        overrides: config overrides (``--set``); ``epochs`` and ``text_backbone`` are shortcuts for two of them.
        train_noise: a Bernoulli-missing corruption name for LNLN-style train-time noise; None: the method's
            default (its config's ``train_noise``, if any), ``"none"``: no noise (see :func:`effective_train_noise`).
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1`` ...
        use_cache / cache: reuse and store checkpoints (directory: ``cache``, else ``$ROBUSTMSA_CACHE``).
        quiet: no progress bars. ``log`` receives one line per epoch and cache events.
    """
    say = log or (lambda message: None)
    config = resolved_config(method, dataset.spec, overrides, epochs=epochs, text_backbone=text_backbone)
    train_noise = effective_train_noise(config, train_noise)
    key = model_key(method, config, dataset.spec, seed, train_noise)
    path = entry_path(cache_dir(cache), method, key)
    chosen = resolve_device(device)
    cls = get_method(method)
    if use_cache:
        entry = load_entry(path, key)
        if entry is not None:
            seed_everything(seed)
            model = cls(dataset.spec, config)
            model.load_state_dict(entry["state_dict"])
            meta = entry["meta"]
            say(f"{method} seed {seed}: loaded from cache {path}")
            return TrainedModel(method, model.to(chosen), config, dataset.spec, seed, train_noise, key, True,
                                int(meta["best_epoch"]), list(meta["history"]), float(meta["train_seconds"]),
                                str(path), str(chosen))

    start = time.perf_counter()
    seed_everything(seed)
    model = cls(dataset.spec, config).to(chosen)
    n_epochs, batch_size = int(config["epochs"]), int(config["batch_size"])
    patience = int(config.get("early_stop", n_epochs))
    noise = TrainNoise(train_noise, seed) if train_noise else None
    paired = bool(cls.wants_paired_batches)
    clean_train = SplitTensors.from_split(dataset.train)
    valid = SplitTensors.from_split(dataset.valid)
    steps = math.ceil(len(clean_train) / batch_size)
    optimizers, schedulers = model.configure_optimizers(n_epochs, steps)
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    with _progress(quiet) as progress:
        epoch_task = progress.add_task(f"{method} seed {seed}", total=n_epochs)
        for epoch in range(1, n_epochs + 1):
            train_tensors, rates = clean_train, None
            if noise:
                noisy, rates = noise.draw(dataset.train, epoch)
                train_tensors = SplitTensors.from_split(noisy)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            if paired:  # the corrupted twin, its clean twin and the per-sample rates (engine.batches)
                batches = iterate_paired_batches(train_tensors, clean_train, batch_size, drawn_rates=rates,
                                                 shuffle=True, generator=generator)
            else:
                batches = iterate_batches(train_tensors, batch_size, shuffle=True, generator=generator)
            model.train()
            losses = []
            batch_task = progress.add_task(f"  epoch {epoch}", total=steps)
            for batch in batches:
                with autocast(chosen):
                    parts = model.training_step(batch.to(chosen), optimizers)
                losses.append(parts["loss"])
                progress.advance(batch_task)
            progress.remove_task(batch_task)
            valid_loss = _valid_loss(model, valid, chosen, EVAL_BATCH)
            for scheduler in schedulers:  # per epoch; plateau schedulers (MMIM family) follow the valid loss
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(valid_loss)
                else:
                    scheduler.step()
            train_loss = float(np.mean(losses)) if losses else math.nan
            history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss})
            improved = valid_loss < best_loss - 1e-6
            if improved:
                best_loss, best_epoch = valid_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
            say(f"{method} seed {seed} epoch {epoch}/{n_epochs}: train loss {train_loss:.4f}, "
                f"valid loss {valid_loss:.4f}{' *' if improved else ''}")
            progress.update(epoch_task, advance=1,
                            description=f"{method} seed {seed} (valid {valid_loss:.3f}, best @{best_epoch})")
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"{method}: training loss became {train_loss} at epoch {epoch}")
            if epoch - best_epoch >= patience:
                say(f"{method} seed {seed}: early stop at epoch {epoch} (best {best_epoch})")
                break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if use_cache:
        save_entry(path, cpu_state, {"key": key, "method": method, "seed": seed, "best_epoch": best_epoch,
                                     "history": history, "train_seconds": seconds, "train_noise": train_noise,
                                     "dataset": dataset.spec.fingerprint, "robustmsa": __version__})
    return TrainedModel(method, model, config, dataset.spec, seed, train_noise, key, False, best_epoch, history,
                        seconds, str(path) if use_cache else None, str(chosen))
