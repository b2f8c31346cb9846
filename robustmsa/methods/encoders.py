"""Sequence encoders shared by the MMIM family (MMIM, MECAM, CMCBEP-CL) and others.

``RNNEncoder`` is MMIM's audio/vision encoder (``declare-lab/Multimodal-Infomax:src/modules/encoders.py``): an LSTM
over the packed valid frames, last hidden state -> dropout -> linear. It also accepts absent modalities (valid length
0): an empty sequence leaves the LSTM at its zero initial state, so its final hidden state is zero (MMIM itself
crashes on a zero audio length and clamps zero vision lengths to 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

__all__ = ["RNNEncoder", "last_valid"]


class RNNEncoder(nn.Module):
    """LSTM over the first ``lengths[b]`` frames of each sample -> final hidden state -> dropout -> linear."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int, num_layers: int = 1, dropout: float = 0.2,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.linear_1 = nn.Linear((2 if bidirectional else 1) * hidden_size, out_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, D) with valid ``lengths`` (B,) -> (B, out_size)."""
        present = lengths > 0
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.rnn(packed)
        if self.rnn.bidirectional:
            h = torch.cat([h_n[-2], h_n[-1]], dim=-1)
        else:
            h = h_n[-1]
        h = h * present[:, None].to(h.dtype)  # an empty sequence leaves the LSTM state at zero
        return self.linear_1(self.dropout(h))


def last_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x[b, lengths[b] - 1]`` for (B, L, D) sequences; zeros where the length is 0."""
    index = (lengths - 1).clamp(min=0)
    picked = x[torch.arange(x.shape[0], device=x.device), index]
    return picked * (lengths > 0)[:, None].to(x.dtype)
