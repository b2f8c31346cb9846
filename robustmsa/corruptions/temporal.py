"""Temporal corruptions of audio/vision features: blur (smoothing) and misalignment (shift)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datasets.split import Split
from .base import Corruption, Realised, realised, register_corruption
from .functional import blur_rows, gather_rows, shift_source, zero_rows

__all__ = ["Blur", "Misalign"]


@register_corruption
class Blur(Corruption):
    """Temporal Gaussian blur inside the valid length: the feature-space proxy of video blur.

    Pixel-level blur needs raw video and feature re-extraction; on MMSA features the closest
    deterministic analogue is smoothing each feature over time, which smears short events (facial
    expressions a few frames wide) into their neighbours. ``sigma = severity * max_sigma`` frames
    (severity 1.0 -> sigma 5 frames by default), kernel truncated at 3 sigma, renormalised at the
    sequence ends so padding never leaks in. Vision by default; audio on request.
    """

    name = "blur"
    supported = ("audio", "vision")
    default_modalities = ("vision",)
    severity_means = "temporal Gaussian sigma = severity * max_sigma frames (default max_sigma 5)"
    param_names = ("max_sigma",)

    def __init__(self, severity: float, modalities=None, seeding="independent", max_sigma: float = 5.0) -> None:
        super().__init__(severity, modalities, seeding)
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be > 0, got {max_sigma!r}")
        self.max_sigma = float(max_sigma)

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        sigma = self.severity * self.max_sigma
        valid = split.valid_mask(modality)
        affected = int(valid[split.lengths(modality) > 1].sum())  # a single frame has nothing to blur with
        return ({modality: blur_rows(getattr(split, modality), valid, sigma)},
                realised(affected, int(valid.sum()), "frames", sigma_frames=sigma))


@register_corruption
class Misalign(Corruption):
    """Time shift of audio/vision against the other modalities by ``severity`` of each valid length.

    Each sample's sequence is delayed or advanced (direction drawn per sample and modality) by
    ``round(severity * length)`` frames inside its valid length; frames shifted out are lost and the
    vacated frames are zero. The realised rate is the fraction of valid frames that were vacated.
    """

    name = "misalign"
    supported = ("audio", "vision")
    default_modalities = ("audio", "vision")
    severity_means = "shift as a fraction of the valid length (1: the whole sequence shifted out)"

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        lengths = split.lengths(modality)
        features = getattr(split, modality)
        direction = np.where(self.stream(key, modality).random(len(split)) < 0.5, -1, 1)
        shift = direction * np.rint(self.severity * lengths).astype(np.int64)
        source, vacated = shift_source(lengths, shift, features.shape[1])
        moved = zero_rows(gather_rows(features, source), vacated)
        return ({modality: moved},
                realised(int(vacated.sum()), int(lengths.sum()), "frames",
                         mean_shift_fraction=float(np.abs(shift).sum() / max(int(lengths.sum()), 1))))
