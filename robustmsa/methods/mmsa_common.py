"""Pieces shared by the MMSA-derived re-implementations (MulT, MISA, Self-MM): MMSA's trainer loop mechanics and
its checkpoint key mapping.

MMSA's trainers (``thuiar/MMSA@a94e65d:src/MMSA/trains/``; identical in the PyPI release ``mmsa==2.2.1``) share
one loop shape that is part of each method's training and is reproduced here, written from its behaviour:

- **gradient accumulation over ``update_epochs`` batches** (the name is MMSA's; it counts batches): gradients
  are zeroed before the first batch of each group of ``update_epochs`` batches and the optimiser steps after the
  last one. The group counter restarts with every epoch, and the epoch's last, incomplete group is never applied
  (MMSA's trailing ``if not left_epochs: optimizer.step()`` cannot fire, because the counter was already reset
  after the last full group); its gradients are discarded when the next epoch zeroes them;
- **gradient clipping by value** (``clip_grad_value_``, not by norm) after *every* backward, i.e. on the partial
  sum accumulated so far (MulT, MISA; ``grad_clip: -1`` in MMSA disables it; here ``grad_clip_value: null``).

:class:`AccumulatedSteps` holds that counter; a method's ``training_step`` asks it whether to zero before the
forward and whether to step after the backward. The epoch boundary comes from ``steps_per_epoch`` (the engine
passes it to ``configure_optimizers``), so the method needs no engine hook.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .base import ConfigError

__all__ = ["AccumulatedSteps", "MappedStateDict", "accumulated_training_step", "clip_grad_value", "map_state_dict",
           "validation_plateau"]


class AccumulatedSteps:
    """MMSA's ``update_epochs`` gradient accumulation, counted per training batch.

    ``begin()`` is called once per training batch before the forward and says whether to zero the gradients;
    ``should_step()`` after the backward says whether to step. Groups restart at every epoch boundary
    (``steps_per_epoch`` batches; unknown: one endless epoch).
    """

    def __init__(self, update_every: int) -> None:
        if int(update_every) < 1:
            raise ConfigError(f"update_epochs must be >= 1, got {update_every}")
        self.update_every = int(update_every)
        self.steps_per_epoch: int | None = None
        self.seen = 0
        self._position = 0

    def reset(self, steps_per_epoch: int | None) -> None:
        self.steps_per_epoch = max(1, int(steps_per_epoch)) if steps_per_epoch else None
        self.seen = 0
        self._position = 0

    @property
    def epoch(self) -> int:
        """1-based epoch of the batch most recently begun (1 before any batch)."""
        if not self.seen:
            return 1
        return (self.seen - 1) // self.steps_per_epoch + 1 if self.steps_per_epoch else 1

    @property
    def batch_in_epoch(self) -> int:
        """0-based index of the batch most recently begun within its epoch."""
        last = max(self.seen - 1, 0)
        return last % self.steps_per_epoch if self.steps_per_epoch else last

    def begin(self) -> bool:
        """Register a new training batch; True when gradients must be zeroed before it."""
        self.seen += 1
        self._position = self.batch_in_epoch % self.update_every
        return self._position == 0

    def should_step(self) -> bool:
        """True after the last batch of a complete group."""
        return self._position == self.update_every - 1


def clip_grad_value(parameters: Iterable[nn.Parameter], value: float | None) -> None:
    """``clip_grad_value_`` over the parameters that have gradients; ``None`` or a negative value: no clip."""
    if value is None or float(value) < 0:
        return
    grads = [p for p in parameters if p.grad is not None]
    if grads:
        nn.utils.clip_grad_value_(grads, float(value))


def validation_plateau(optimizer: torch.optim.Optimizer,
                       config: Mapping) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """MMSA's ``ReduceLROnPlateau(mode="min")`` on the validation loss (config ``plateau_factor/_patience``)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min",
                                                      factor=float(config["plateau_factor"]),
                                                      patience=int(config["plateau_patience"]))


def accumulated_training_step(model: nn.Module, batch, optimizers: list[torch.optim.Optimizer],
                              steps: AccumulatedSteps) -> dict[str, float]:
    """One training batch as MMSA's plain trainers do it: zero the gradients at the start of a group of
    ``update_epochs`` batches, forward, ``model.loss``, backward, clip by value (``grad_clip_value``), and step the
    optimisers after the group's last batch. Returns the loss parts with ``loss``."""
    if steps.begin():
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
    output = model(batch)
    total, parts = model.loss(batch, output)
    total.backward()
    clip_grad_value(model.parameters(), model.config.get("grad_clip_value"))
    if steps.should_step():
        for optimizer in optimizers:
            optimizer.step()
    parts["loss"] = float(total.detach())
    return parts


class MappedStateDict(dict):
    """A state dict renamed for one of our models; ``skipped`` lists the source keys that were dropped."""

    skipped: list[str]


def map_state_dict(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str | None]]) -> MappedStateDict:
    """Rename ``state``'s keys by ``rules`` (regex, replacement; first full match wins; replacement ``None``
    drops the key). A ``module.`` prefix is ignored. A key no rule matches raises a KeyError naming it."""
    out = MappedStateDict()
    out.skipped = []
    unknown = []
    for key, value in state.items():
        name = key.removeprefix("module.")
        for pattern, replacement in rules:
            match = re.fullmatch(pattern, name)
            if match is None:
                continue
            if replacement is None:
                out.skipped.append(key)
            else:
                out[match.expand(replacement)] = value
            break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"no mapping for {len(unknown)} key(s): {', '.join(unknown[:10])}")
    return out
