"""MulT-style (fairseq) transformer encoder with sinusoidal positions, batch-first, with optional padding masks.

The self-attention encoder of MulT (Tsai et al., ACL 2019; ``yaohungt/Multimodal-Transformer:modules/``), which
MulT's successors copy unchanged (e.g. MLCL, ``YetZzzzzz/MLCL:MCLC_MSA/modules/{transformer,multihead_attention,
position_embedding}.py``). Written from that code's behaviour, not copied from it:

- :func:`sinusoidal_table` -- fairseq's sinusoidal table: row ``p`` = ``[sin(p w_0..w_{h-1}), cos(p w_0..)]`` with
  ``h = dim // 2``, ``w_i = 10000 ** (-i / (h - 1))`` (a zero column appended for odd ``dim``); the row of
  ``padding_idx`` (0) is all zero, so real positions start at 1;
- :class:`SinusoidalPositions` -- that table looked up by position index (0 = no position);
  :func:`fairseq_positions` assigns fairseq's indices (``t + 1`` where channel 0 of the input is non-zero, else 0:
  channel 0 doubles as a padding detector), :func:`length_positions` assigns ``t + 1`` to the first ``lengths[b]``
  steps and 0 after them;
- :class:`MulTSelfAttention` -- fairseq's ``MultiheadAttention`` for self-attention: one packed
  ``in_proj_weight`` (3 dim, dim) with Xavier-uniform init and a zero ``in_proj_bias``, softmax scaled by
  ``head_dim ** -0.5``, dropout on the attention weights, ``out_proj`` (Xavier, zero bias); computed by
  :func:`torch.nn.functional.scaled_dot_product_attention` with an optional key-padding mask;
- :class:`MulTEncoderLayer` -- pre-LN block: ``x + res_drop(attn(LN(x)))``, then ``x + res_drop(fc2(relu_drop(
  relu(fc1(LN(x))))))`` with a 4 dim FFN (Xavier init, zero biases);
- :class:`MulTEncoder` -- ``x * sqrt(dim) + positions``, embedding dropout, the layers, a final LayerNorm.

Tensors are batch-first (B, L, dim); MulT's code is time-first (L, B, dim), which changes nothing computed.
``key_padding_mask`` (B, L), True at padding, is our addition: MulT attends every position, padding included. A
row whose every key is padding would give NaN; callers must leave at least one key per row unmasked.
``select`` (B,) indices (also ours) says that the caller reads one output row per sample: the last layer then
computes only that query row (attending to every row) and its FFN, which is exact, since rows interact only
through attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["sinusoidal_table", "fairseq_positions", "length_positions", "SinusoidalPositions",
           "MulTSelfAttention", "MulTEncoderLayer", "MulTEncoder"]


def sinusoidal_table(num_positions: int, dim: int, padding_idx: int | None = 0) -> torch.Tensor:
    """fairseq's sinusoidal table (num_positions, dim), float32; the ``padding_idx`` row is zero."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"sinusoidal positions need dim >= 4, got {dim}")
    rate = math.log(10000.0) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -rate)
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * frequencies[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    if padding_idx is not None:
        table[padding_idx] = 0.0
    return table


def fairseq_positions(x: torch.Tensor) -> torch.Tensor:
    """fairseq's indices for (B, L, D) inputs: ``t + 1`` where ``x[b, t, 0] != 0``, else 0 (no position)."""
    steps = torch.arange(1, x.shape[1] + 1, device=x.device)[None, :]
    return steps * (x[..., 0] != 0).long()


def length_positions(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Indices ``t + 1`` for the first ``lengths[b]`` steps and 0 after them: (B, length) long."""
    steps = torch.arange(1, length + 1, device=lengths.device)[None, :]
    return steps * (steps <= lengths[:, None]).long()


class SinusoidalPositions(nn.Module):
    """Sinusoidal embeddings looked up by position index (0 = padding -> zero vector); no parameters.

    The table is a non-persistent buffer (not in the state dict), grown on demand: any length works.
    """

    def __init__(self, dim: int, init_size: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("table", sinusoidal_table(init_size + 1, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, L) long indices in ``[0, L]`` -> (B, L, dim) embeddings (float32; the caller casts)."""
        needed = positions.shape[1] + 1  # indices never exceed the length (no device sync to find the max)
        if needed > self.table.shape[0]:
            self.table = sinusoidal_table(max(needed, 2 * self.table.shape[0]), self.dim).to(self.table.device)
        return self.table[positions]


class MulTSelfAttention(nn.Module):
    """fairseq multi-head self-attention with a packed input projection; optional key-padding mask."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MulT attention: heads ({heads}) must divide the width ({dim})")
        self.dim, self.heads, self.attn_dropout = dim, heads, attn_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                query: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` (B, L, dim); ``query`` (B, N_q, dim): only these rows attend (to ``x``)."""
        b = x.shape[0]
        w, bias = self.in_proj_weight, self.in_proj_bias
        if query is None:
            q, k, v = F.linear(x, w, bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, w[:self.dim], bias[:self.dim])
            k, v = F.linear(x, w[self.dim:], bias[self.dim:]).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, q.shape[2], self.dim))


def _xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MulTEncoderLayer(nn.Module):
    """Pre-LN self-attention block with a ReLU FFN of width ``4 dim`` (MulT's ``TransformerEncoderLayer``)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MulTSelfAttention(dim, heads, attn_dropout)
        self.fc1 = _xavier_linear(dim, 4 * dim)
        self.fc2 = _xavier_linear(4 * dim, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim); with ``select`` (B,) indices, only row ``select[b]`` of each sample is
        computed (it attends to every row): (B, 1, dim). Rows never mix outside attention, so that row equals
        the full computation's."""
        normed = self.layer_norms[0](x)
        if select is None:
            h = self.self_attn(normed, key_padding_mask)
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            x = x[rows, select][:, None]
            h = self.self_attn(normed, key_padding_mask, query=normed[rows, select][:, None])
        x = x + F.dropout(h, self.res_dropout, self.training)
        h = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class MulTEncoder(nn.Module):
    """MulT's self-attention ``TransformerEncoder``: scaled input + sinusoidal positions, pre-LN layers, final LN."""

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0, embed_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_scale = math.sqrt(dim)
        self.embed_dropout = embed_dropout
        self.embed_positions = SinusoidalPositions(dim)
        self.layers = nn.ModuleList(MulTEncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, select: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L, dim); ``positions`` (B, L) indices (None: :func:`fairseq_positions` of ``x``);
        ``key_padding_mask`` (B, L), True at padding (None: attend everything, as MulT). Returns (B, L, dim), or
        with ``select`` (B,) indices only the output row ``select[b]`` of each sample, (B, dim): the last layer
        then computes only that row (the same values, less work)."""
        if positions is None:
            positions = fairseq_positions(x)
        x = self.embed_scale * x + self.embed_positions(positions).to(x.dtype)
        x = F.dropout(x, self.embed_dropout, self.training)
        if select is not None and not len(self.layers):
            x = x[torch.arange(x.shape[0], device=x.device), select][:, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, key_padding_mask, select if (select is not None and i == len(self.layers) - 1) else None)
        x = self.layer_norm(x)
        return x if select is None else x[:, 0]
