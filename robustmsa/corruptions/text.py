"""Word-order corruption: move a fraction of the word tokens to other positions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datasets.split import Split
from .base import Corruption, Realised, realised, register_corruption
from .functional import gather_tokens, word_positions

__all__ = ["WordShuffle"]


@register_corruption
class WordShuffle(Corruption):
    """Shuffle words: ``round(severity * n_words)`` word tokens are chosen and rotated among their positions.

    The chosen positions (in random order) pass their tokens on cyclically, so every chosen token
    lands on another position (a derangement); ids and ``text`` rows move together; [CLS], [SEP],
    the mask and padding stay. With fewer than two chosen tokens nothing moves. The realised rate is
    the fraction of word positions whose token moved.
    """

    name = "word_shuffle"
    supported = ("text",)
    default_modalities = ("text",)
    severity_means = "fraction of word tokens moved to other positions (1: all of them)"

    def _apply(self, split: Split, modality: str, key) -> tuple[dict[str, Any], Realised]:
        eligible = word_positions(split.text_bert)
        n_words = eligible.sum(axis=1)
        k = np.rint(self.severity * n_words).astype(np.int64)
        k = np.where(k >= 2, k, 0)
        keys = np.where(eligible, self.stream(key, modality).random(eligible.shape), np.inf)
        order = np.argsort(keys, axis=1, kind="stable")  # chosen positions first, in random order
        rank = np.arange(eligible.shape[1])[None, :]
        chosen = rank < k[:, None]
        next_rank = np.where(rank + 1 < k[:, None], rank + 1, 0)
        donor = np.take_along_axis(order, next_rank, axis=1)  # the position whose token moves in
        source = np.tile(np.arange(eligible.shape[1]), (len(split), 1))
        rows = np.nonzero(chosen)
        source[rows[0], order[rows]] = donor[rows]
        text_bert, text = gather_tokens(split.text_bert, split.text, source)
        return {"text_bert": text_bert, "text": text}, realised(int(k.sum()), int(n_words.sum()), "tokens")
