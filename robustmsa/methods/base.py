"""The method contract: batches in, ``Output(pred, aux_losses)`` out; the registry; per-dataset configs.

Every method is an ``nn.Module`` subclass of :class:`Method`, registered with ``@register_method``, with
its default hyper-parameters per dataset in a YAML file beside its module (``almt.py`` -> ``almt.yaml``).
Configuration precedence, written once here: explicit overrides (CLI ``--set``) > the YAML's dataset
section > the YAML's ``defaults``. The engine knows nothing of a method's internals beyond this file.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn

from ..datasets.split import DatasetSpec
from ..registry import Registry

__all__ = ["Batch", "Output", "Method", "METHODS", "register_method", "create_method", "list_methods",
           "get_method", "resolve_config", "config_key", "ConfigError"]


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key and the valid choices."""


@dataclass
class Batch:
    """One mini-batch as tensors (B = batch size). Methods read what they need and ignore the rest.

    ``text`` holds the precomputed token features; ``text_ids``, ``text_mask`` and ``text_segments`` the
    ``text_bert`` channels. ``index`` is each sample's position in its split.
    """

    text: torch.Tensor            # (B, L_t, D_t) float
    text_ids: torch.Tensor        # (B, L_t) long
    text_mask: torch.Tensor       # (B, L_t) long (1 = token)
    text_segments: torch.Tensor   # (B, L_t) long
    audio: torch.Tensor           # (B, L_a, D_a) float
    vision: torch.Tensor          # (B, L_v, D_v) float
    audio_lengths: torch.Tensor   # (B,) long
    vision_lengths: torch.Tensor  # (B,) long
    labels: torch.Tensor          # (B,) float
    index: torch.Tensor           # (B,) long
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. unimodal labels, paired clean twins

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def text_lengths(self) -> torch.Tensor:
        return self.text_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        moved = {k: v.to(device, non_blocking=True) for k, v in moved.items()}
        return Batch(**moved, extra={k: v.to(device, non_blocking=True) for k, v in self.extra.items()})


@dataclass
class Output:
    """What a method returns: regression predictions (B,) and named auxiliary losses (scalars)."""

    pred: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of every method.

    Subclasses set ``name``, ``paper`` and ``reference`` (repository@commit), implement :meth:`forward`,
    and may override :meth:`loss` (default: the config's ``criterion`` on the labels plus the aux losses
    weighted by ``aux_weights``), :meth:`configure_optimizers` (default: one AdamW group) and
    :meth:`training_step` (default: forward, loss, backward, step) for their own schedules.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: Modalities with a unimodal encoder: :meth:`encode_modality` of such a modality reads only that
    #: modality's batch fields (``text``/``text_ids``/``text_mask``/``text_segments``; ``audio`` and
    #: ``audio_lengths``; ``vision`` and ``vision_lengths``) and is per-sample in eval mode. Evaluation then
    #: reuses the clean encodings of the modalities a corruption left untouched (see ``engine.reuse``).
    unimodal_encoders: ClassVar[tuple[str, ...]] = ()
    #: Training batches carry their clean twins and per-sample missing rates in ``Batch.extra``
    #: (``clean_<field>``, ``missing_rate_<m>``, ``drawn_rate_<m>``; built by ``engine.batches``
    #: from the train-time noise). Validation and test batches are never paired.
    wants_paired_batches: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.config = dict(config)

    # ------------------------------------------------------------------ hooks
    def forward(self, batch: Batch) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The unimodal encoding of ``modality`` (one of :attr:`unimodal_encoders`), first dimension B."""
        raise NotImplementedError(f"{self.name}: no unimodal encoder for {modality!r}")

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        """:meth:`forward` from precomputed encodings of every modality in :attr:`unimodal_encoders`."""
        raise NotImplementedError(f"{self.name}: forward_encoded is not implemented")

    def criterion(self, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The supervised loss named by ``config['criterion']`` (``mse`` or ``l1``)."""
        kind = self.config.get("criterion", "mse")
        if kind == "mse":
            return nn.functional.mse_loss(pred, labels)
        if kind == "l1":
            return nn.functional.l1_loss(pred, labels)
        raise ConfigError(f"{self.name}: criterion must be 'mse' or 'l1', got {kind!r}")

    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss and its named parts (floats, for logs)."""
        main = self.criterion(output.pred, batch.labels)
        total, parts = main, {"criterion": float(main.detach())}
        weights = self.config.get("aux_weights", {})
        for key, value in output.aux_losses.items():
            total = total + float(weights.get(key, 1.0)) * value
            parts[key] = float(value.detach())
        return total, parts

    def configure_optimizers(self, epochs: int, steps_per_epoch: int) -> tuple[list[torch.optim.Optimizer], list]:
        """Optimisers and per-epoch schedulers; default: AdamW(lr, weight_decay) without a schedule."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=float(self.config["lr"]),
                                      weight_decay=float(self.config.get("weight_decay", 0.0)))
        return [optimizer], []

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the loss parts."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        output = self(batch)
        total, parts = self.loss(batch, output)
        total.backward()
        clip = self.config.get("grad_clip")
        if clip:
            nn.utils.clip_grad_norm_(self.parameters(), float(clip))
        for optimizer in optimizers:
            optimizer.step()
        parts["loss"] = float(total.detach())
        return parts

    # ------------------------------------------------------------------ introspection
    def text_encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the text encoder (excluded from reported parameter counts)."""
        encoder = getattr(self, "text_encoder", None)
        return iter(()) if encoder is None else encoder.parameters()

    def count_parameters(self, include_text_encoder: bool = False) -> int:
        """Number of trainable-or-not parameters, by default without the text encoder."""
        excluded = set() if include_text_encoder else {id(p) for p in self.text_encoder_parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in excluded)


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.add(cls.name, cls)


_BUILTIN_MODULES = ("lf_dnn", "almt", "mlcl", "cmcbep_cl", "mmim", "mecam", "lnln", "tfn", "lmf", "ef_lstm", "mfn", "mult", "misa", "self_mm", "tfr_net")


def _load_builtin_methods() -> None:
    """Import the modules that register the built-in methods (on first registry use; torch loads here)."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    _load_builtin_methods()
    return METHODS.get(name)


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names (natural order), optionally filtered by an fnmatch pattern."""
    _load_builtin_methods()
    return METHODS.names(pattern)


def _config_file(cls: type[Method]) -> Path:
    import inspect

    return Path(inspect.getfile(cls)).with_suffix(".yaml")


def config_key(spec: DatasetSpec, sections: Mapping[str, Any]) -> str | None:
    """The YAML dataset section that applies to ``spec``: its name, the name without ``-aligned``, else its family."""
    for key in (spec.name, spec.name.removesuffix("-aligned"), spec.label_family):
        if key in sections:
            return key
    return None


def resolve_config(name: str, spec: DatasetSpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Method ``name``'s configuration for ``spec``: YAML defaults < YAML dataset section < ``overrides``.

    Unknown override keys are an error that lists the known keys (with a suggestion).
    """
    import yaml

    cls = get_method(name)
    path = _config_file(cls)
    document = yaml.safe_load(path.read_text()) if path.exists() else {}
    config = copy.deepcopy(document.get("defaults", {}))
    sections = document.get("datasets", {})
    key = config_key(spec, sections)
    if key is not None:
        config.update(copy.deepcopy(sections[key]))
    config["config_section"] = key or "defaults"
    for item, value in (overrides or {}).items():
        if item not in config:
            close = difflib.get_close_matches(item, list(config), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{name}: unknown config key {item!r}.{hint} Known keys: {', '.join(sorted(config))}")
        config[item] = value
    return config


def create_method(name: str, spec: DatasetSpec, **overrides: Any) -> Method:
    """Build method ``name`` for a dataset described by ``spec``; ``None`` overrides are ignored (timm-style)."""
    cls = get_method(name)
    config = resolve_config(name, spec, {k: v for k, v in overrides.items() if v is not None})
    return cls(spec, config)
