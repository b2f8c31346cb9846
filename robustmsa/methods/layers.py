"""Transformer building blocks shared by methods: ViT-style pre-norm attention and feed-forward blocks.

The blocks of ALMT (``Haoyu-ha/ALMT:models/almt_layer.py``) and its successors (LNLN), written for speed:

- :class:`Attention` -- multi-head attention, bias-free q/k/v projections and a ``Linear(inner, dim)`` output
  (the identity when ``heads == 1 and dim_head == dim``), computed by
  :func:`torch.nn.functional.scaled_dot_product_attention` (softmax scaled by ``dim_head ** -0.5``; no mask:
  every position is attended, padding included);
- :class:`PreNormAttention` -- separate LayerNorms on the query, key and value inputs, then attention;
- :class:`PreNormFeedForward` -- LayerNorm -> Linear -> GELU -> Linear (dropout after GELU and output);
- :class:`TransformerEncoder` -- ``x <- x + attn(x, x, x); x <- x + ff(x)`` per layer, optionally returning
  every hidden state ``[input, layer 1, ..., layer N]``;
- :class:`CrossTransformerEncoder` -- ``target <- target + attn(target, source, source)``, then
  ``target <- target + ff(target)`` (the source is never updated);
- :class:`TokenTransformer` -- learnable tokens prepended (optional), learnable positions, an encoder;
- :class:`CrossTransformer` -- a zero-initialised CLS token prepended to source and target, one positional
  table each, then a :class:`CrossTransformerEncoder`.

``keep_first=k`` on the encoders says that the caller reads only the first ``k`` output positions: the last
layer of a :class:`TransformerEncoder` then computes only those query rows (the other rows never influence
them), and a :class:`CrossTransformerEncoder` updates only those target rows from the start (target rows never
interact). The rows returned are those of the full computation; only the work on discarded rows is saved.

When keys and values come from one input (``k is v``), :class:`PreNormAttention` either attends in the input
space (:meth:`PreNormAttention._key_space`, when the keys outnumber the queries) or normalises the input once
and folds both LayerNorm affines into one key/value projection (``LN(x) W^T = norm(x) (W diag(gamma))^T +
W beta``). Both are exact algebra; results agree with the plain computation to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["split_heads", "merge_heads", "Attention", "PreNormAttention", "PreNormFeedForward",
           "TransformerLayer", "TransformerEncoder", "CrossTransformerEncoder", "TokenTransformer",
           "CrossTransformer", "SequenceTooLongError"]


class SequenceTooLongError(ValueError):
    """An input is longer than the positional table a model was built for."""


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D), a view."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head softmax attention (no mask) through ``scaled_dot_product_attention``.

    ``to_q``, ``to_k``, ``to_v``: ``Linear(dim, heads * dim_head, bias=False)``; ``to_out``:
    ``Linear(inner, dim)`` unless ``heads == 1 and dim_head == dim`` (then the identity); dropout after it.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Identity() if (heads == 1 and dim_head == dim) else nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over already projected (B, N, H*D) tensors; returns (B, N_q, dim) after ``to_out``."""
        h = self.heads
        out = F.scaled_dot_product_attention(split_heads(q, h), split_heads(k, h), split_heads(v, h))
        return self.dropout(self.to_out(merge_heads(out)))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.to_q(q), self.to_k(k), self.to_v(v))


class PreNormAttention(nn.Module):
    """Separate LayerNorms on the query, key and value inputs, then :class:`Attention`.

    ALMT's ``PreNormAttention``. With one input for keys and values, :meth:`use_key_space` picks the
    cheaper of :meth:`_key_space` and :meth:`_shared_key_value`; ``key_space = True / False`` on an instance
    forces one.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = self.attention
        shared = k is v and self.norm_k.eps == self.norm_v.eps
        if shared and self.use_key_space(q.shape[1], k.shape[1]):
            return self._key_space(q, k)
        query = attn.to_q(self.norm_q(q))
        if shared:
            key, value = self._shared_key_value(k)
        else:
            key, value = attn.to_k(self.norm_k(k)), attn.to_v(self.norm_v(v))
        return attn.attend(query, key, value)

    def use_key_space(self, n_q: int, n_k: int) -> bool:
        """Whether :meth:`_key_space` needs fewer multiply-adds per sample than projecting keys and values."""
        attn = self.attention
        if not isinstance(attn.to_out, nn.Linear):  # heads 1 and dim_head == dim: nothing to gain
            return False
        if self.key_space is not None:
            return self.key_space
        dim, heads, inner = self.norm_k.normalized_shape[0], attn.heads, attn.heads * attn.dim_head
        projected = 2 * n_q * dim * inner + 2 * n_k * dim * inner + 2 * n_q * n_k * inner
        key_space = 2 * n_q * heads * dim * dim + 2 * n_q * n_k * heads * dim
        return key_space < projected

    #: None: choose by cost (:meth:`use_key_space`); True / False: force the key-space / the projected form.
    key_space: bool | None = None

    def _key_space(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention of ``q`` over one key/value input ``x`` without projecting ``x`` to keys and values.

        With ``n = norm(x)`` (no affine) and, per head ``h``, ``q_h = LN_q(q) W_q,h^T``:
        ``q_h . k_j = (q_h W_k,h diag(gamma_k)) . n_j + c``, where ``c = q_h . W_k,h beta_k`` is the same for
        every key and cancels in the softmax; and ``sum_j a_j v_j = (sum_j a_j n_j) diag(gamma_v) W_v,h^T +
        W_v,h beta_v`` (the weights sum to 1). So each head's query is mapped into the ``dim``-wide input
        space by one matrix ``W_q,h^T W_k,h diag(gamma_k)``, all heads attend over ``n`` itself in one SDPA
        call (``heads * N_q`` queries, ``dim``-wide keys, scale ``dim_head ** -0.5``), and
        ``W_out,h W_v,h diag(gamma_v)`` maps each head's context back. Exact algebra (float rounding aside),
        and much cheaper when keys outnumber queries and ``heads * dim_head > dim``: ALMT's projection
        transformers attend with 8 queries over 58-508 positions. ``beta_k`` gets no gradient here (its true
        gradient is 0).
        """
        attn = self.attention
        heads, dim_head = attn.heads, attn.dim_head
        nk, nv = self.norm_k, self.norm_v
        b, n_q, dim = q.shape
        w_q = attn.to_q.weight.view(heads, dim_head, dim)
        w_k = attn.to_k.weight.view(heads, dim_head, dim) * nk.weight
        w_v = attn.to_v.weight.view(heads, dim_head, dim) * nv.weight
        w_out = attn.to_out.weight.view(dim, heads, dim_head).transpose(0, 1)  # (H, dim, dh)
        query_map = torch.bmm(w_q.transpose(1, 2), w_k).transpose(0, 1).reshape(dim, heads * dim)
        context_map = torch.bmm(w_out, w_v).transpose(0, 1).reshape(dim, heads * dim)
        bias = attn.to_out.weight @ (attn.to_v.weight @ nv.bias) + attn.to_out.bias
        query = (self.norm_q(q) @ query_map).view(b, n_q, heads, dim).transpose(1, 2)
        query = query.reshape(b, 1, heads * n_q, dim)
        normalised = F.layer_norm(x, nk.normalized_shape, None, None, nk.eps).unsqueeze(1)  # (B, 1, N_k, dim)
        context = F.scaled_dot_product_attention(query, normalised, normalised, scale=dim_head ** -0.5)
        context = context.view(b, heads, n_q, dim).transpose(1, 2).reshape(b, n_q, heads * dim)
        return attn.dropout(F.linear(context, context_map, bias))

    def _shared_key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``to_k(norm_k(x))`` and ``to_v(norm_v(x))`` from one normalisation and one matrix product."""
        nk, nv, attn = self.norm_k, self.norm_v, self.attention  # the caller checked nk.eps == nv.eps
        normalised = F.layer_norm(x, nk.normalized_shape, None, None, nk.eps)
        wk, wv = attn.to_k.weight, attn.to_v.weight
        weight = torch.cat((wk * nk.weight, wv * nv.weight), dim=0)
        bias = torch.cat((wk @ nk.bias, wv @ nv.bias), dim=0)
        return F.linear(normalised, weight, bias).split(wk.shape[0], dim=-1)


class PreNormFeedForward(nn.Module):
    """LayerNorm -> Linear(dim, hidden) -> GELU -> dropout -> Linear(hidden, dim) -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.norm(x))))))


class TransformerLayer(nn.Module):
    """One pre-norm block: ``attn`` (:class:`PreNormAttention`) and ``ff`` (:class:`PreNormFeedForward`)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = PreNormAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff = PreNormFeedForward(dim, mlp_dim, dropout=dropout)


class TransformerEncoder(nn.Module):
    """``depth`` self-attention blocks; ``forward(x, save_hidden=True)`` returns ``[x, layer 1, ...]``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, dim_head, mlp_dim, dropout)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor, save_hidden: bool = False,
                keep_first: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The last hidden state (or all, with ``save_hidden``); ``keep_first``: see the module docstring."""
        hidden = [x]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and keep_first is not None and not save_hidden:
                query = x[:, :keep_first]
                x = query + layer.attn(query, x, x)
            else:
                x = x + layer.attn(x, x, x)
            x = x + layer.ff(x)
            if save_hidden:
                hidden.append(x)
        if save_hidden:
            return hidden
        return x if keep_first is None else x[:, :keep_first]


class CrossTransformerEncoder(nn.Module):
    """``depth`` blocks updating ``target`` by attention to a fixed ``source``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, dim_head, mlp_dim, dropout)
                                    for _ in range(depth))

    def forward(self, source: torch.Tensor, target: torch.Tensor,
                keep_first: int | None = None) -> torch.Tensor:
        if keep_first is not None:  # target rows never interact: drop the unread ones up front
            target = target[:, :keep_first]
        for layer in self.layers:
            target = target + layer.attn(target, source, source)
            target = target + layer.ff(target)
        return target


def _check_length(n: int, capacity: int, what: str) -> None:
    if n > capacity:
        raise SequenceTooLongError(f"{what}: input length {n} exceeds the configured length {capacity} "
                                   f"(the positional embedding has no positions beyond it)")


class TokenTransformer(nn.Module):
    """ALMT's ``Transformer``: learnable tokens prepended (optional), learnable positions, an encoder.

    ``pos_embedding``: ``randn(1, num_frames + token_len, dim)`` (``token_len`` None: ``num_frames``
    positions); ``extra_token``: ``zeros(1, token_len, dim)``; ``encoder``: a :class:`TransformerEncoder`. An
    input shorter than ``num_frames`` uses the first positions (the table is sliced); a longer one raises
    :class:`SequenceTooLongError`, whose message names ``name``.
    """

    def __init__(self, *, num_frames: int, dim: int, depth: int, heads: int, mlp_dim: int, dim_head: int = 64,
                 token_len: int | None = None, dropout: float = 0.0, name: str = "input") -> None:
        super().__init__()
        self.num_frames, self.token_len, self.name = num_frames, token_len, name
        extra = token_len or 0
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames + extra, dim))
        self.extra_token = nn.Parameter(torch.zeros(1, token_len, dim)) if token_len else None
        self.encoder = TransformerEncoder(dim, depth, heads, dim_head, mlp_dim, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens prepended and positions added: (B, token_len + N, dim)."""
        b, n, _ = x.shape
        _check_length(n, self.num_frames, self.name)
        if self.extra_token is not None:
            x = torch.cat((self.extra_token.expand(b, -1, -1), x), dim=1)
        return x + self.pos_embedding[:, :x.shape[1]]

    def forward(self, x: torch.Tensor, save_hidden: bool = False,
                keep_first: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        return self.encoder(self.embed(x), save_hidden=save_hidden, keep_first=keep_first)


class CrossTransformer(nn.Module):
    """ALMT's ``CrossTransformer``: zero CLS token prepended to source and target, separate positional tables.

    ``pos_embedding_s``: ``randn(1, source_num_frames + 1, dim)``, ``pos_embedding_t``:
    ``randn(1, tgt_num_frames + 1, dim)``, ``extra_token``: ``zeros(1, 1, dim)``. Returns the updated target
    (CLS first); ``keep_first=1`` computes only the CLS row.
    """

    def __init__(self, *, source_num_frames: int, tgt_num_frames: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.source_num_frames, self.tgt_num_frames = source_num_frames, tgt_num_frames
        self.pos_embedding_s = nn.Parameter(torch.randn(1, source_num_frames + 1, dim))
        self.pos_embedding_t = nn.Parameter(torch.randn(1, tgt_num_frames + 1, dim))
        self.extra_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = CrossTransformerEncoder(dim, depth, heads, dim_head, mlp_dim, dropout)

    def forward(self, source: torch.Tensor, target: torch.Tensor,
                keep_first: int | None = None) -> torch.Tensor:
        b, n_s, _ = source.shape
        n_t = target.shape[1]
        _check_length(n_s, self.source_num_frames, "cross-transformer source")
        _check_length(n_t, self.tgt_num_frames, "cross-transformer target")
        cls = self.extra_token.expand(b, -1, -1)
        source = torch.cat((cls, source), dim=1) + self.pos_embedding_s[:, :n_s + 1]
        target = torch.cat((cls, target), dim=1) + self.pos_embedding_t[:, :n_t + 1]
        return self.encoder(source, target, keep_first=keep_first)
