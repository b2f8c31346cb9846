"""Turn splits into torch batches: one conversion per split, then cheap index-based batching.

**Paired batches** (for methods with ``wants_paired_batches``, e.g. LNLN): during training each batch is the
corrupted (train-noise) twin in the usual fields, and ``Batch.extra`` carries

- ``clean_text``, ``clean_text_ids``, ``clean_audio``, ``clean_vision``, ``clean_audio_lengths``,
  ``clean_vision_lengths``: the same samples without the noise (:data:`PAIRED_FIELDS`; the attention mask and
  segment ids are never changed by a corruption, so the twin shares ``text_mask`` and ``text_segments``);
  :func:`clean_twin` rebuilds the clean :class:`Batch`;
- ``missing_rate_text``, ``missing_rate_audio``, ``missing_rate_vision`` (float32, (B,)): the *realised*
  per-sample missing fraction of the corrupted twin, i.e. the fraction of eligible positions (word tokens,
  [CLS]/[SEP] excluded; valid frames) whose content differs from the clean twin (0 where a sample has none);
- ``drawn_rate_text``, ``drawn_rate_audio``, ``drawn_rate_vision``: the Bernoulli rate each sample was drawn
  with (LNLN's ``missing_rate_*`` labels; 0 for the clean half), 0 when there is no train-time noise.

Validation and test batches are never paired: a method predicts from its (possibly corrupted) input alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..datasets.split import Split
from ..methods.base import Batch

__all__ = ["SplitTensors", "iterate_batches", "iterate_paired_batches", "clean_twin", "realised_rates",
           "PAIRED_FIELDS"]

MODALITIES = ("text", "audio", "vision")
#: Batch fields whose clean values a paired batch carries as ``extra["clean_<field>"]``.
PAIRED_FIELDS = ("text", "text_ids", "audio", "vision", "audio_lengths", "vision_lengths")


@dataclass
class SplitTensors:
    """A split as torch tensors on the CPU (features float32, ids long), ready for indexing."""

    text: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    text_segments: torch.Tensor
    audio: torch.Tensor
    vision: torch.Tensor
    audio_lengths: torch.Tensor
    vision_lengths: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_split(cls, split: Split) -> "SplitTensors":
        def floats(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))

        def longs(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(x).astype(np.int64))

        return cls(text=floats(split.text), text_ids=longs(split.text_bert[:, 0]),
                   text_mask=longs(split.text_bert[:, 1]), text_segments=longs(split.text_bert[:, 2]),
                   audio=floats(split.audio), vision=floats(split.vision),
                   audio_lengths=longs(split.audio_lengths), vision_lengths=longs(split.vision_lengths),
                   labels=floats(split.regression_labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(text=self.text[index], text_ids=self.text_ids[index], text_mask=self.text_mask[index],
                     text_segments=self.text_segments[index], audio=self.audio[index], vision=self.vision[index],
                     audio_lengths=self.audio_lengths[index], vision_lengths=self.vision_lengths[index],
                     labels=self.labels[index], index=index)


def iterate_batches(tensors: SplitTensors, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Batches of ``batch_size`` in order, or shuffled by ``generator`` (the last batch may be smaller)."""
    n = len(tensors)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield tensors.batch(order[start:start + batch_size])


def realised_rates(noisy: Batch, clean: Batch) -> dict[str, torch.Tensor]:
    """Per-sample fraction (B,) of eligible positions of each modality that differ between the twins.

    Text: word tokens (valid positions other than the first, [CLS], and the last valid one, [SEP]) whose id or
    feature row changed. Audio / vision: frames within the clean twin's valid length whose features changed.
    A sample without eligible positions has rate 0.
    """
    lengths = clean.text_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(clean.text_mask.shape[1], device=lengths.device)[None, :]
    eligible = {"text": (clean.text_mask > 0) & (positions > 0) & (positions < lengths - 1)}
    changed = {"text": (noisy.text_ids != clean.text_ids) | (noisy.text != clean.text).any(dim=-1)}
    for modality in ("audio", "vision"):
        frames = getattr(clean, modality)
        positions = torch.arange(frames.shape[1], device=frames.device)[None, :]
        eligible[modality] = positions < getattr(clean, f"{modality}_lengths")[:, None]
        changed[modality] = (getattr(noisy, modality) != frames).any(dim=-1)
    return {m: (changed[m] & eligible[m]).sum(dim=1).float() / eligible[m].sum(dim=1).clamp(min=1).float()
            for m in MODALITIES}


def clean_twin(batch: Batch) -> Batch | None:
    """The clean twin of a paired batch (shares mask, segments, labels and index), or None if unpaired."""
    if not all(f"clean_{name}" in batch.extra for name in PAIRED_FIELDS):
        return None
    fields = {name: batch.extra[f"clean_{name}"] for name in PAIRED_FIELDS}
    return Batch(**fields, text_mask=batch.text_mask, text_segments=batch.text_segments, labels=batch.labels,
                 index=batch.index)


def iterate_paired_batches(noisy: SplitTensors, clean: SplitTensors, batch_size: int, *,
                           drawn_rates: dict[str, np.ndarray] | None = None, shuffle: bool = False,
                           generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Batches of ``noisy`` (same order as :func:`iterate_batches`) carrying their clean twins and rates.

    ``drawn_rates``: the per-sample rates the noise was drawn with (modality -> (N,)); missing ones are 0.
    """
    if len(noisy) != len(clean):
        raise ValueError(f"paired batches need splits of equal size, got {len(noisy)} and {len(clean)}")
    drawn = {m: torch.from_numpy(np.asarray(drawn_rates[m], dtype=np.float32)) if drawn_rates and m in drawn_rates
             else torch.zeros(len(noisy)) for m in MODALITIES}
    for batch in iterate_batches(noisy, batch_size, shuffle=shuffle, generator=generator):
        twin = clean.batch(batch.index)
        batch.extra.update({f"clean_{name}": getattr(twin, name) for name in PAIRED_FIELDS})
        batch.extra.update({f"missing_rate_{m}": rate for m, rate in realised_rates(batch, twin).items()})
        batch.extra.update({f"drawn_rate_{m}": drawn[m][batch.index] for m in MODALITIES})
        yield batch
