"""MulT: the Multimodal Transformer for unaligned multimodal language sequences, as benchmarked in MMSA.

Paper: Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov, "Multimodal Transformer for Unaligned Multimodal
Language Sequences", ACL 2019. Reference: MMSA's port, ``thuiar/MMSA@a94e65d`` (MIT)
``src/MMSA/models/singleTask/MULT.py``, ``models/subNets/transformers_encoder/{transformer,multihead_attention,
position_embedding}.py`` and the trainer ``trains/singleTask/MULT.py``; these files are identical in the PyPI
release ``mmsa==2.2.1``. Hyper-parameters: ``config/config_regression.json`` (``mult``), in ``mult.yaml``. Written
from the reference's behaviour, not copied from it; the attention, FFN and LayerNorm blocks are
:mod:`robustmsa.methods.mult_layers`' (same parameters and initialisation as MMSA's fairseq copies).

Architecture (MMSA, d = ``d_model``):

1. text (the backbone's token states; MMSA's MulT reads the precomputed ``text`` features, ``use_bert: false``)
   gets dropout ``text_dropout``; each modality goes through ``Conv1d(D_m, d, kernel k_m, no padding, no bias)``
   (skipped when ``D_m == d``), so a length ``L`` becomes ``L - k_m + 1``;
2. six crossmodal transformers ``trans_X_with_Y`` (query X, key/value Y; ``nlevels`` pre-LN layers, heads
   ``heads``): the key/value sequence is scaled by ``sqrt(d)`` once, gets its own embedding dropout for the keys
   and for the values, and is normalised by each layer's first LayerNorm (the query's), FFN ``4 d``, final LN;
   attention dropout by source modality (text ``attn_dropout``, audio ``attn_dropout_a``, vision
   ``attn_dropout_v``);
3. per target modality, ``[X_with_Y1, X_with_Y2]`` (2 d) -> a self-attention transformer ``trans_X_mem`` of
   ``max(nlevels, 3)`` layers -> one time step;
4. ``h = [h_l, h_a, h_v]`` (6 d) -> ``h + proj2(dropout(relu(proj1(h))))`` -> ``out_layer`` -> prediction.

``attn_mask: true`` (MMSA's setting) adds MulT's "future" mask to every attention: query ``i`` may attend key
``j`` only when ``j - i <= |L_k - L_q|`` (self-attention: ``j <= i``).

Lengths (``pooling``; docs/methods.md): MMSA's MulT ignores lengths: padding frames are convolved and attended, the
future mask is built from the padded lengths, and the prediction reads the **last padded** time step. The original
MulT read the last step of *front*-padded sequences (its own pickles), i.e. the last valid frame; MMSA's pickles
are *end*-padded, so the port reads a window of padding. Default ``pooling: last_valid``: frames past each
sample's length are zeroed before the convolution, each valid convolution output counts (``max(n - k + 1, 1)``;
an absent modality is one all-zero window), attention gets key-padding masks, the future mask uses the valid
lengths, and the last valid step is read. Then a sample's prediction equals MMSA's computation on that sample
alone, cropped to its valid lengths (tested). ``pooling: last_padded`` reproduces MMSA (parity test). Inputs
shorter than a kernel are right-padded with zeros to the kernel size (MMSA would fail).

Training as MMSA's trainer: L1 loss, Adam (the configured ``weight_decay`` is not passed to it by MMSA's
trainer, so there is none), gradient accumulation over ``update_epochs`` batches and clipping by value
(:mod:`.mmsa_common`), ``ReduceLROnPlateau(factor 0.1, patience)`` on the validation loss, selection on the
validation loss, early stopping 8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .mmsa_common import AccumulatedSteps, accumulated_training_step, map_state_dict, validation_plateau
from .mult_layers import MulTEncoderLayer, SinusoidalPositions, fairseq_positions, length_positions
from .text_encoders import build_text_encoder

__all__ = ["MMSA_KEY_RULES", "CrossmodalEncoder", "CrossmodalLayer", "MulT", "crossmodal_mask", "from_mmsa_state_dict", "future_mask"]

POOLINGS = ("last_valid", "last_padded")
MODALITIES = ("text", "audio", "vision")
SHORT = {"text": "l", "audio": "a", "vision": "v"}


def future_mask(q_lengths: torch.Tensor, k_lengths: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """MulT's future mask as "may attend" booleans (B, 1, n_q, n_k): ``j - i <= |L_k - L_q|`` per sample."""
    i = torch.arange(n_q, device=q_lengths.device)[None, :, None]
    j = torch.arange(n_k, device=q_lengths.device)[None, None, :]
    offset = (k_lengths - q_lengths).abs()[:, None, None]
    return (j - i <= offset)[:, None]


def crossmodal_mask(q_lengths: torch.Tensor, k_lengths: torch.Tensor, n_q: int, n_k: int, *, valid_only: bool,
                    use_future: bool) -> torch.Tensor | None:
    """"May attend" booleans for queries of one modality over keys of another (or the same), None = everything.

    ``valid_only``: keys past each sample's valid length are masked (our repair of the padding leak); without
    it only MulT's future mask applies, computed from the padded lengths as the published code does.
    """
    device = k_lengths.device
    if not valid_only:
        if not use_future:
            return None
        one = torch.ones(1, device=device, dtype=torch.long)
        return future_mask(one * n_q, one * n_k, n_q, n_k)
    allowed = (torch.arange(n_k, device=device)[None, :] < k_lengths[:, None])[:, None, None, :]
    if use_future:
        allowed = allowed & future_mask(q_lengths, k_lengths, n_q, n_k)
    return allowed


def _attend(layer: MulTEncoderLayer, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """fairseq multi-head attention with the layer's packed projection; ``mask`` True = may attend."""
    attn = layer.self_attn
    d, b = attn.dim, q_in.shape[0]
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(q_in, w[:d], bias[:d])
    if k_in is v_in:
        k, v = F.linear(k_in, w[d:], bias[d:]).chunk(2, dim=-1)
    else:
        k = F.linear(k_in, w[d:2 * d], bias[d:2 * d])
        v = F.linear(v_in, w[2 * d:], bias[2 * d:])
    q, k, v = (t.reshape(b, t.shape[1], attn.heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         dropout_p=attn.attn_dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(b, q.shape[2], d))


class CrossmodalLayer(MulTEncoderLayer):
    """MulT's pre-LN ``TransformerEncoderLayer`` with an optional key/value source and a general attention mask.

    Self-attention when ``source_k`` is None; otherwise the query ``x`` attends to ``source_k`` / ``source_v``,
    both normalised by the layer's first LayerNorm (the query's), as in MulT.
    """

    def forward(self, x: torch.Tensor, source_k: torch.Tensor | None = None,  # type: ignore[override]
                source_v: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L_q, d); ``mask`` (B or 1, 1, L_q, L_k) booleans. With ``select`` (B,) only row
        ``select[b]`` of each sample is computed (exact: rows interact only through attention): (B, 1, d)."""
        norm = self.layer_norms[0]
        normed = norm(x)
        if source_k is None:
            k_in = v_in = normed
        else:
            k_in = norm(source_k)
            v_in = k_in if source_v is source_k else norm(source_v)
        if select is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            x, normed = x[rows, select][:, None], normed[rows, select][:, None]
            if mask is not None:
                mask = mask.expand(x.shape[0], -1, -1, -1)[rows, :, select][:, :, None]
        h = _attend(self, normed, k_in, v_in, mask)
        x = x + F.dropout(h, self.res_dropout, self.training)
        h = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class CrossmodalEncoder(nn.Module):
    """MulT's ``TransformerEncoder`` (self- or crossmodal): ``sqrt(d)``-scaled inputs (+ optional sinusoidal
    positions), embedding dropout (separately on query, keys and values), pre-LN layers, final LayerNorm.

    Parameter names and creation order follow MMSA's module (``layers.N.*``, ``layer_norm``); MMSA's ``version``
    buffer is not kept.
    """

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0, embed_dropout: float = 0.0, position_embedding: bool = False) -> None:
        super().__init__()
        self.embed_scale = math.sqrt(dim)
        self.embed_dropout = embed_dropout
        self.embed_positions = SinusoidalPositions(dim) if position_embedding else None
        self.layers = nn.ModuleList(CrossmodalLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)

    def _embed(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        scaled = self.embed_scale * x
        if self.embed_positions is not None:
            index = fairseq_positions(x) if positions is None else positions
            scaled = scaled + self.embed_positions(index).to(x.dtype)
        return scaled

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                select: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                source_positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L_q, d), ``source`` (B, L_k, d) or None; returns (B, L_q, d), or (B, d) with ``select``."""
        x = F.dropout(self._embed(x, positions), self.embed_dropout, self.training)
        source_k = source_v = None
        if source is not None:
            embedded = self._embed(source, source_positions)
            if self.training and self.embed_dropout > 0:
                source_k = F.dropout(embedded, self.embed_dropout, True)
                source_v = F.dropout(embedded, self.embed_dropout, True)
            else:
                source_k = source_v = embedded
        last = len(self.layers) - 1
        if select is not None and last < 0:
            x = x[torch.arange(x.shape[0], device=x.device), select][:, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, source_k, source_v, mask, select if (select is not None and i == last) else None)
        x = self.layer_norm(x)
        return x if select is None else x[:, 0]


@register_method
class MulT(Method):
    """MulT as benchmarked in MMSA (``thuiar/MMSA@a94e65d``); see the module docstring."""

    name = "mult"
    paper = ("Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov, Multimodal Transformer for Unaligned Multimodal "
             "Language Sequences, ACL 2019")
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/MULT.py (= mmsa 2.2.1)"
    unimodal_encoders = MODALITIES

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        if c["pooling"] not in POOLINGS:
            raise ConfigError(f"mult: pooling must be one of {', '.join(POOLINGS)}, got {c['pooling']!r}")
        d, heads = int(c["d_model"]), int(c["heads"])
        if d % heads:
            raise ConfigError(f"mult: heads ({heads}) must divide d_model ({d})")
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", False)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        in_dims = {"text": int(self.text_encoder.out_dim), "audio": int(spec.dims["audio"]),
                   "vision": int(spec.dims["vision"])}
        self.kernels = {m: int(c[f"conv1d_kernel_size_{SHORT[m]}"]) for m in MODALITIES}
        self.projected = {m: in_dims[m] != d for m in MODALITIES}  # MMSA skips a projection when widths match
        self.d = d
        self.proj_l = nn.Conv1d(in_dims["text"], d, self.kernels["text"], padding=0, bias=False)
        self.proj_a = nn.Conv1d(in_dims["audio"], d, self.kernels["audio"], padding=0, bias=False)
        self.proj_v = nn.Conv1d(in_dims["vision"], d, self.kernels["vision"], padding=0, bias=False)
        attn_dropout = {"text": float(c["attn_dropout"]), "audio": float(c["attn_dropout_a"]),
                        "vision": float(c["attn_dropout_v"])}
        common = {"relu_dropout": float(c["relu_dropout"]), "res_dropout": float(c["res_dropout"]),
                  "embed_dropout": float(c["embed_dropout"]), "position_embedding": bool(c["position_embedding"])}
        levels = int(c["nlevels"])
        # MMSA's creation order: l<-a, l<-v, a<-l, a<-v, v<-l, v<-a, then the three memories
        for target in MODALITIES:
            for source in MODALITIES:
                if source != target:
                    setattr(self, f"trans_{SHORT[target]}_with_{SHORT[source]}",
                            CrossmodalEncoder(d, heads, levels, attn_dropout[source], **common))
        mem_layers = max(levels, int(c["mem_min_layers"]))
        for target in MODALITIES:
            setattr(self, f"trans_{SHORT[target]}_mem",
                    CrossmodalEncoder(2 * d, heads, mem_layers, attn_dropout["text"], **common))
        combined = 6 * d
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_layer = nn.Linear(combined, 1)
        self.steps = AccumulatedSteps(int(c["update_epochs"]))

    # ------------------------------------------------------------------ lengths
    @property
    def published_pooling(self) -> bool:
        return self.config["pooling"] == "last_padded"

    def _valid_lengths(self, batch: Batch, modality: str, padded: int) -> torch.Tensor:
        """Valid steps after the projection: ``max(n - k + 1, 1)`` (an absent modality is one zero window)."""
        raw = {"text": batch.text_lengths, "audio": batch.audio_lengths, "vision": batch.vision_lengths}[modality]
        k = self.kernels[modality] if self.projected[modality] else 1
        return (raw - k + 1).clamp(min=1, max=padded)

    # ------------------------------------------------------------------ encoders
    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The projected sequence (B, L', d) of one modality (text dropout, zeroed padding, Conv1d)."""
        if modality == "text":
            x = self.text_encoder(batch)
            lengths = batch.text_lengths
            x = F.dropout(x, float(self.config["text_dropout"]), self.training)
        elif modality in ("audio", "vision"):
            x = batch.audio if modality == "audio" else batch.vision
            lengths = batch.audio_lengths if modality == "audio" else batch.vision_lengths
        else:
            raise ValueError(f"mult: unknown modality {modality!r}")
        if not self.published_pooling:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            x = x * valid[..., None].to(x.dtype)
        if not self.projected[modality]:
            return x
        k = self.kernels[modality]
        if x.shape[1] < k:  # MMSA would fail on an input shorter than the kernel
            x = F.pad(x, (0, 0, 0, k - x.shape[1]))
        conv = {"text": self.proj_l, "audio": self.proj_a, "vision": self.proj_v}[modality]
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        seqs = {m: encoded[m] for m in MODALITIES}
        b = seqs["text"].shape[0]
        device = seqs["text"].device
        use_future = bool(self.config["attn_mask"])
        if self.published_pooling:
            full = {m: torch.full((b,), seqs[m].shape[1], device=device, dtype=torch.long) for m in MODALITIES}
            lengths = full
        else:
            lengths = {m: self._valid_lengths(batch, m, seqs[m].shape[1]) for m in MODALITIES}

        def mask_for(target: str, source: str) -> torch.Tensor | None:
            return crossmodal_mask(lengths[target], lengths[source], seqs[target].shape[1], seqs[source].shape[1],
                                   valid_only=not self.published_pooling, use_future=use_future)

        positions = None
        if self.config["position_embedding"] and not self.published_pooling:
            positions = {m: length_positions(lengths[m], seqs[m].shape[1]) for m in MODALITIES}
        last = []
        for target in MODALITIES:
            t = SHORT[target]
            crossed = []
            for source in MODALITIES:
                if source == target:
                    continue
                encoder = getattr(self, f"trans_{t}_with_{SHORT[source]}")
                crossed.append(encoder(seqs[target], seqs[source], mask_for(target, source),
                                       positions=None if positions is None else positions[target],
                                       source_positions=None if positions is None else positions[source]))
            h = torch.cat(crossed, dim=-1)
            select = lengths[target] - 1
            mem_positions = None if positions is None else positions[target]
            last.append(getattr(self, f"trans_{t}_mem")(h, mask=mask_for(target, target), select=select,
                                                        positions=mem_positions))
        h = torch.cat(last, dim=-1)
        residual = self.proj2(F.dropout(F.relu(self.proj1(h)), float(self.config["output_dropout"]), self.training))
        return Output(pred=self.out_layer(h + residual).squeeze(-1))

    def forward(self, batch: Batch) -> Output:
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in MODALITIES})

    # ------------------------------------------------------------------ training (MMSA's trainer)
    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        c = self.config
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=float(c["lr"]))
        plateau = validation_plateau(optimizer, c)
        self.steps.reset(steps_per_epoch)
        return [optimizer], [plateau]

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        return accumulated_training_step(self, batch, optimizers, self.steps)


#: MMSA ``MULT`` state-dict keys -> ours (first full match; None = not kept). Names are MMSA's apart from the
#: text encoder and the encoders' ``version`` buffers.
MMSA_KEY_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(?:Model\.)?text_model\.model\.(.*)", r"text_encoder.model.\1"),
    (r"(?:Model\.)?(trans_[lav]_(?:with_[lav]|mem))\.version", None),
    (r"(?:Model\.)?(trans_[lav]_(?:with_[lav]|mem))\.embed_positions\._float_tensor", None),
    (r"(?:Model\.)?((?:trans_[lav]_(?:with_[lav]|mem)|proj(?:[12]|_[lav])|out_layer)\..*)", r"\1"),
)


def from_mmsa_state_dict(state: Mapping[str, torch.Tensor]):
    """Rename an MMSA ``MULT`` (or ``AMIO``-wrapped) state dict for :class:`MulT` (see :data:`MMSA_KEY_RULES`)."""
    return map_state_dict(state, MMSA_KEY_RULES)
