"""Train-time noise: LNLN's scheme, re-drawn every epoch.

For each modality independently, every training sample gets a drop rate r ~ U(0, 1), then a random half of
the samples get r = 0 (clean) (``Haoyu-ha/LNLN:core/dataset.py:55-64``). LNLN draws this once and its per-epoch
re-draw barely changes the masks (metrics-and-protocol.md §3.8); robustmsa re-draws rates *and* masks every
epoch from (seed, epoch), a documented repair.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..corruptions import get_corruption
from ..corruptions.missing import _BernoulliMissing
from ..datasets.split import Split

__all__ = ["TrainNoise", "TRAIN_NOISES"]

TRAIN_NOISES = ("random_missing", "word_drop", "frame_drop")


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

    def __call__(self, split: Split, epoch: int) -> Split:
        return self.corruption.apply_rates(split, self.rates(len(split), epoch), seed=self.seed * 100003 + epoch)

    def describe(self) -> str:
        return f"{self.name} (LNLN: per-sample rate ~ U(0,1), {self.clean_fraction:.0%} clean, re-drawn every epoch)"
