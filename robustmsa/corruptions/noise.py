"""Additive Gaussian noise on audio/vision features, scaled to each feature's spread."""

from __future__ import annotations

from typing import Any

from ..datasets.split import Split
from .base import Corruption, Realised, realised, register_corruption
from .functional import add_scaled_noise, feature_std

__all__ = ["GaussianNoise"]


@register_corruption
class GaussianNoise(Corruption):
    """``x + severity * max_scale * std_d * N(0, 1)`` on every valid frame, ``std_d`` each feature's std.

    ``std_d`` is measured over the valid frames of the split being corrupted, so the noise is on the
    data's own scale whatever the features are (COVAREP, FACET, OpenFace ...). Severity 1 with the
    default ``max_scale=1`` gives a signal-to-noise ratio of about 0 dB per feature.
    """

    name = "gaussian_noise"
    supported = ("audio", "vision")
    default_modalities = ("audio", "vision")
    severity_means = "noise std as a multiple of each feature's std: severity * max_scale (default 1)"
    param_names = ("max_scale",)

    def __init__(self, severity: float, modalities=None, seeding="independent", max_scale: float = 1.0) -> None:
        super().__init__(severity, modalities, seeding)
        if not max_scale > 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale!r}")
        self.max_scale = float(max_scale)

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        features = getattr(split, modality)
        valid = split.valid_mask(modality)
        scale = self.severity * self.max_scale * feature_std(features, valid)
        noisy = add_scaled_noise(features, valid, scale, self.stream(key, modality))
        total = int(valid.sum())
        return {modality: noisy}, realised(total, total, "frames", noise_scale=self.severity * self.max_scale)
