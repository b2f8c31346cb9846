"""Train-time noise: LNLN's scheme, re-drawn every epoch.

For each modality independently, every training sample gets a drop rate r ~ U(0, 1), then a random half of
the samples get r = 0 (clean) (``Haoyu-ha/LNLN:core/dataset.py:55-64``). LNLN's masks are nearly static: its
uniform field is re-seeded with the config seed in every call, and its per-epoch re-draw reaches only one
``DataLoader`` worker's copy (metrics-and-protocol.md §3.8; docs/methods.md, LNLN repair 2). robustmsa re-draws
rates *and* masks every epoch from (seed, epoch), a documented repair. :meth:`TrainNoise.draw` also returns the
rates, which paired batches carry (``engine.batches``).

A method's YAML may name its own default (``train_noise: random_missing`` in ``lnln.yaml``: LNLN always trains
with its noise); the engine uses it when the caller gives none (``engine.train.effective_train_noise``).
``none`` names "no train-time noise" explicitly (it overrides such a default).
"""

from __future__ import annotations

import zlib

import numpy as np

from ..corruptions import get_corruption
from ..corruptions.missing import _BernoulliMissing
from ..datasets.split import Split

__all__ = ["TrainNoise", "TRAIN_NOISES", "NO_TRAIN_NOISE", "normalise_train_noise"]

TRAIN_NOISES = ("random_missing", "word_drop", "frame_drop")
NO_TRAIN_NOISE = "none"  # the explicit "no train-time noise" (overrides a method's default)


def normalise_train_noise(name: str | None) -> str | None:
    """``None`` for no noise (``None``, ``""``, ``"none"`` in any case), else the name unchanged."""
    if name is None or str(name).strip().lower() in ("", NO_TRAIN_NOISE, "null"):
        return None
    return str(name)


class TrainNoise:
    """Per-epoch corruption of the training split with per-sample rates (LNLN's scheme)."""

    def __init__(self, name: str, seed: int, clean_fraction: float = 0.5) -> None:
        cls = get_corruption(name)
        if not issubclass(cls, _BernoulliMissing):
            raise ValueError(f"train-time noise supports {', '.join(TRAIN_NOISES)}; got {name!r}")
        self.name, self.seed, self.clean_fraction = name, int(seed), float(clean_fraction)
        self.corruption = cls(1.0)

    def rates(self, n: int, epoch: int) -> dict[str, np.ndarray]:
        """Per-sample rates per modality for ``epoch``: U(0, 1), a random ``clean_fraction`` of them 0."""
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(b"train_noise")])
        rates = {}
        for modality in self.corruption.modalities:
            values = rng.random(n)
            values[rng.permutation(n)[: int(self.clean_fraction * n)]] = 0.0
            rates[modality] = values
        return rates

    def draw(self, split: Split, epoch: int) -> tuple[Split, dict[str, np.ndarray]]:
        """The corrupted training split of ``epoch`` and the per-sample rates it was drawn with."""
        rates = self.rates(len(split), epoch)
        return self.corruption.apply_rates(split, rates, seed=self.seed * 100003 + epoch), rates

    def __call__(self, split: Split, epoch: int) -> Split:
        return self.draw(split, epoch)[0]

    def describe(self) -> str:
        return f"{self.name} (LNLN: per-sample rate ~ U(0,1), {self.clean_fraction:.0%} clean, re-drawn every epoch)"
