"""Turn splits into torch batches: one conversion per split, then cheap index-based batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..datasets.split import Split
from ..methods.base import Batch

__all__ = ["SplitTensors", "iterate_batches"]


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
