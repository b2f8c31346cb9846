"""Reuse clean unimodal encodings when a corruption leaves a modality untouched.

A sweep evaluates one model on many corrupted copies of the test split, and most corruptions touch one or
two modalities. For a method that declares unimodal encoders (``Method.unimodal_encoders``), the encoding of
an untouched modality equals the clean one, so it is computed once on the clean split and gathered by sample
index afterwards. Which modalities are untouched is decided by comparing the arrays each encoder reads, not by
trusting a corruption's declared modalities.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..datasets.split import Split

__all__ = ["ENCODER_INPUTS", "unchanged_modalities", "Encodings"]

#: The split fields each modality's encoder may read (``Batch`` is built from these).
ENCODER_INPUTS: dict[str, tuple[str, ...]] = {
    "text": ("text", "text_bert"),
    "audio": ("audio", "audio_lengths"),
    "vision": ("vision", "vision_lengths"),
}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays; views of the same memory (a split shares the arrays a corruption left alone) compare free."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides:
        return True
    return bool(np.array_equal(a, b))


def unchanged_modalities(clean: Split, other: Split) -> set[str]:
    """Modalities whose encoder inputs are identical in ``clean`` and ``other`` (same samples, same order)."""
    if len(clean) != len(other) or not _same(np.asarray(clean.id), np.asarray(other.id)):
        return set()
    return {modality for modality, names in ENCODER_INPUTS.items()
            if all(_same(getattr(clean, name), getattr(other, name)) for name in names)}


class Encodings:
    """Per-modality encodings of a whole split (first dimension = sample index), kept on the CPU."""

    def __init__(self, parts: Mapping[str, list[torch.Tensor]]) -> None:
        self.tensors = {modality: torch.cat(chunks) for modality, chunks in parts.items() if chunks}

    def gather(self, modalities: set[str] | frozenset[str], index: torch.Tensor,
               device: torch.device) -> dict[str, torch.Tensor]:
        """The stored encodings of ``modalities`` for the samples ``index``, on ``device``."""
        return {m: self.tensors[m][index].to(device, non_blocking=True) for m in modalities if m in self.tensors}
