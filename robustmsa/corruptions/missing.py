"""Missing-data corruptions: Bernoulli token/frame drops (the LNLN/TFR-Net protocol), whole-modality
removal and TFR-Net's structured (contiguous span) missing.

Dropped text tokens become [UNK] (id 100) with a zero ``text`` row; [CLS], [SEP], the attention mask
and padding stay. Dropped frames become all-zero vectors inside the valid length; lengths stay
unless a modality is removed as absent.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import numpy as np

from ..datasets.split import Split
from .base import Corruption, Realised, realised, register_corruption
from .functional import (bernoulli_drop, copy_zero_rows, drop_tokens, row_blocks, span_mask, word_positions,
                         zero_rows)

__all__ = ["RandomMissing", "WordDrop", "FrameDrop", "ModalityMissing", "TemporalMissing"]


class _BernoulliMissing(Corruption):
    """Independent per-position drops with probability ``severity`` over valid positions."""

    lnln_capable = True

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        return self._drop(split, modality, key, self.severity)

    def _drop(self, split: Split, modality: str, key, rate: float | np.ndarray) -> tuple[dict[str, Any], Realised]:
        """Drop positions of ``modality`` with probability ``rate`` (scalar, or per sample with shape (N,))."""
        inclusive = self.seeding == "lnln"  # LNLN keeps a position only if U > r
        rate = rate if np.isscalar(rate) else np.asarray(rate, dtype=np.float64)[:, None]
        if modality == "text":
            eligible = word_positions(split.text_bert)
            uniform = self.uniform(key, modality, eligible.shape)
            drop = bernoulli_drop(uniform, rate, eligible, inclusive)
            text_bert, text = drop_tokens(split.text_bert, split.text, drop)
            return {"text_bert": text_bert, "text": text}, realised(int(drop.sum()), int(eligible.sum()), "tokens")
        # Frames: draw, mask and copy block by block, so that no (N, L) temporaries outlive a block
        # (peak memory is the output alone); the draws are the same as one (N, L) draw.
        features = getattr(split, modality)
        lengths = split.lengths(modality)
        positions = np.arange(features.shape[1])[None, :]
        source = self.uniform_source(key, modality)
        out = np.empty_like(features)
        dropped = 0
        # float64 draws for at most ~32 KiB of positions at a time
        for rows in row_blocks(features, max_rows=max(1, 4096 // max(1, features.shape[1]))):
            valid = positions < lengths[rows, None]
            block_rate = rate if np.isscalar(rate) else rate[rows]
            drop = bernoulli_drop(source.random(valid.shape), block_rate, valid, inclusive)
            copy_zero_rows(out[rows], features[rows], drop)
            dropped += int(drop.sum())
        return {modality: out}, realised(dropped, int(lengths.sum()), "frames")

    def apply_rates(self, split: Split, rates: Mapping[str, np.ndarray], seed: int) -> Split:
        """Apply with a drop rate per sample and modality (``rates[m]`` of shape (N,) in [0, 1]).

        Used for train-time noise (LNLN's scheme draws a rate per sample); ``severity`` is ignored and the
        record's ``severity`` is the mean rate. Modalities without an entry are left untouched.
        """
        from .base import _SeedKey

        changes: dict[str, Any] = {}
        stats: dict[str, Realised] = {}
        current = split
        for modality in self.modalities:
            if modality not in rates:
                continue
            values = np.asarray(rates[modality], dtype=np.float64)
            if values.shape != (len(split),) or np.any((values < 0) | (values > 1)):
                raise ValueError(f"{self.name}: rates[{modality!r}] must have shape ({len(split)},) with values in "
                                 f"[0, 1], got shape {values.shape}")
            updates, stats[modality] = self._drop(current, modality, _SeedKey(seed, split.name), values)
            changes.update(updates)
            current = current.replace(**updates)
        record = {"name": self.name, "version": self.version, "severity": float(np.mean([np.mean(rates[m])
                  for m in stats])) if stats else 0.0, "per_sample_rates": True,
                  "modalities": list(stats), "seeding": self.seeding, "seed": int(seed), "params": self.params(),
                  "realised": stats}
        return split.replace(**changes, corruptions=(*split.corruptions, record))


@register_corruption
class RandomMissing(_BernoulliMissing):
    """LNLN / TFR-Net random missing: every token and frame dropped with probability ``severity``.

    Text: [CLS] and [SEP] always kept, dropped tokens -> [UNK] + zero row. Audio/vision: dropped frames
    -> 0 inside the valid length. ``seeding="lnln"`` reproduces LNLN's ``generate_m`` bit for bit
    (``Haoyu-ha/LNLN:core/dataset.py``). This is the default corruption of ``--noise``.
    """

    name = "random_missing"
    severity_means = "per-token/per-frame drop probability (0: none, 1: every word token and valid frame)"


@register_corruption
class WordDrop(_BernoulliMissing):
    """Missing text: each word token (not [CLS]/[SEP]) becomes [UNK] with a zero row with probability ``severity``."""

    name = "word_drop"
    supported = ("text",)
    default_modalities = ("text",)
    severity_means = "per-token drop probability (1: every word token -> [UNK])"


@register_corruption
class FrameDrop(_BernoulliMissing):
    """Frame drops: each valid audio/vision frame is zeroed with probability ``severity``."""

    name = "frame_drop"
    supported = ("audio", "vision")
    default_modalities = ("audio", "vision")
    severity_means = "per-frame drop probability (1: every valid frame zeroed)"


@register_corruption
class ModalityMissing(Corruption):
    """Whole-modality removal for a fraction ``severity`` of the samples (exactly ``round(severity * N)``).

    Samples are chosen by a fixed random ranking, so the set removed at a lower severity is contained
    in the set removed at a higher one. Text: every word token -> [UNK] with zero rows ([CLS]/[SEP]
    kept, LNLN's rate-1 semantics). Audio/vision with ``mode="absent"`` (default): all valid frames
    zeroed and the length set to 0, i.e. the modality is absent; ``mode="zero"`` keeps the lengths
    (LNLN's rate-1 semantics, the model still sees zero frames).
    """

    name = "modality_missing"
    single_modality = True
    severity_means = "fraction of samples whose modality is removed entirely"
    param_names = ("mode",)

    def __init__(self, severity: float, modalities=None, seeding="independent",
                 mode: Literal["absent", "zero"] = "absent") -> None:
        super().__init__(severity, modalities, seeding)
        if mode not in ("absent", "zero"):
            raise ValueError(f"mode must be 'absent' or 'zero', got {mode!r}")
        self.mode = mode

    def _unit(self, modality: str) -> str:
        return "samples"

    def _units(self, split: Split, modality: str) -> int:
        return len(split)

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        n = len(split)
        ranks = np.argsort(self.stream(key, modality).random(n), kind="stable")
        chosen = np.zeros(n, dtype=bool)
        chosen[ranks[: int(round(self.severity * n))]] = True
        if modality == "text":
            drop = word_positions(split.text_bert) & chosen[:, None]
            text_bert, text = drop_tokens(split.text_bert, split.text, drop)
            return ({"text_bert": text_bert, "text": text},
                    realised(int(chosen.sum()), n, "samples", tokens=int(drop.sum())))
        drop = split.valid_mask(modality) & chosen[:, None]
        updates: dict[str, Any] = {modality: zero_rows(getattr(split, modality), drop)}
        if self.mode == "absent":
            updates[f"{modality}_lengths"] = np.where(chosen, 0, split.lengths(modality))
        return updates, realised(int(chosen.sum()), n, "samples", frames=int(drop.sum()))


@register_corruption
class TemporalMissing(Corruption):
    """Structured missing (TFR-Net): one contiguous span covering ``severity`` of the valid length is removed.

    Span length ``round(severity * n)`` with ``n`` the number of word tokens (text) or valid frames,
    start uniform over the possible offsets. Text tokens in the span -> [UNK] + zero rows; frames -> 0.
    """

    name = "temporal_missing"
    supported = ("text", "audio", "vision")
    default_modalities = ("text", "audio", "vision")
    severity_means = "fraction of the valid length covered by the removed span (1: everything)"

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        if modality == "text":
            n_valid = np.maximum(split.text_lengths - 2, 0)
            offset, length = 1, split.text.shape[1]  # words start after [CLS]
        else:
            n_valid = split.lengths(modality)
            offset, length = 0, getattr(split, modality).shape[1]
        span = np.rint(self.severity * n_valid).astype(np.int64)
        start = np.floor(self.stream(key, modality).random(len(split)) * (n_valid - span + 1)).astype(np.int64)
        drop = span_mask(n_valid, span, start, length, offset)
        if modality == "text":
            text_bert, text = drop_tokens(split.text_bert, split.text, drop)
            return {"text_bert": text_bert, "text": text}, realised(int(drop.sum()), int(n_valid.sum()), "tokens")
        return ({modality: zero_rows(getattr(split, modality), drop)},
                realised(int(drop.sum()), int(n_valid.sum()), "frames"))
