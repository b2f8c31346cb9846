"""MECAM: contrastive removal of negative information and talking-heads attention, on MMIM.

Paper: Wang, Wang, Cambria, Fan, Yu, Huang, E, Zhu, "Contrastive-Based Removal of Negative Information in
Multimodal Emotion Analysis", Cognitive Computation 17(3), article 107, 2025. Reference:
``YaoYangWang/MECAM@37a0d97``: ``src/model.py``, ``src/modules/contrastive.py`` (``IntraModalityCL``),
``src/modules/bi_attention.py``, ``src/solver.py``, ``README.md`` (hyper-parameter table; figure
``images/1.png``). **The published code does not run** (``model.py`` imports a ``CustomEncoder`` that never
existed, and calls loss modules it never defines), so this is a repaired re-implementation: every decision is
listed below and in ``docs/methods.md``. Written from the reference's behaviour, not copied from it.

MECAM is a fork of MMIM (``mmim.py``, whose classes are reused here): the same text [CLS] / ``RNNEncoder``
encoders, the MMILB lower bounds (with the vision -> audio pair on: ``add_va``), the entropy term and the
two-stage optimisation (:meth:`MMIM.training_step`), with

(a) CPC replaced by **intra-modality supervised contrastive losses** (:func:`intra_modal_contrastive`, the
    HEAD ``IntraModalityCL``): for one modality's batch ``z`` (L2-normalised), ``s_ij = z_i . z_j / tau``
    (tau 0.03), positives ``P(i) = {j : class_j == class_i}`` (``i`` included), and
    ``L_i = -log( sum_{j in P(i)} e^{s_ij} / (sum_j e^{s_ij} + sum_{j not in P(i)} e^{0.8 s_ij} + |P(i)|) )``
    (HEAD's row ``[s_i, 0.8 * s_i with positives set to 0]``: the zeroed positives add ``e^0 = 1`` each);
    ``nce = 0.2 * (L_text + L_audio + L_vision)``, weighted by ``alpha`` in stage 1;
(b) a **talking-heads cross-attention** per A/V modality (:class:`TalkingHeadsCrossAttention`), registered and
    trained, whose pooled output is added to the modality's encoder vector before the fusion network.

Repairs (what the published code does -> what we do -> why):

1. **Attention registered.** The two ``BidirectionalCrossAttention`` modules are built inside ``forward`` on
   every call: new random weights each batch, never trained, dropout active and predictions random at test
   time -> ``attn_audio`` / ``attn_vision`` are created in ``__init__``, in the main optimiser (``lr_main``),
   deterministic in eval mode.
2. **Attention non-degenerate.** As published each input is one vector, so the softmax over one key is 1 and
   the output is a random linear map of the [CLS] vector, independent of audio and vision (queries and keys
   come from the A/V vector, values from text, and the *values* serve as keys). Ours attends over sequences:
   queries are the A/V LSTM's per-frame states (padding frames masked), keys and values the text backbone's
   token states with **their own** projections (padding tokens masked via ``text_mask``), pre-norm LayerNorms
   on both as published, 8 heads x 64; **talking heads** (Shazeer et al. 2020) mix the heads' logits before
   the softmax and the heads' attention maps after it (the published code mixes after the softmax only; both
   are learned ``H x H`` maps); dropout 0.1 on the attention maps as published. The per-frame outputs are
   averaged over the valid frames and projected to the modality's width (``Linear(512, d_out)``, as
   published). The result is **added** to the encoder vector (the published code replaced the A/V vector by
   the attention output, which, repaired, would make the A/V vector reach the head only through attention
   weights over text). So the A/V input enters through the residual, the queries and the frame mask; text
   tokens through keys and values. An absent modality (length 0) has no valid query: the attention term is
   then the output bias alone; a sample with no text token attends over all (zero) positions instead of
   producing NaN.
3. **Contrastive losses on the encoder outputs of all three modalities** (the figure: Intra-MCL-S/T/I before
   fusion). HEAD applies them, in pairs with a learned ``align_dim`` projection of one side, to the
   post-attention A/V vectors and the [CLS] vector (and calls modules that do not exist). Ours: one loss per
   modality on the L2-normalised encoder vector itself (text [CLS], audio / vision ``RNNEncoder`` outputs), no
   projection (HEAD's loss has no cross-modal term, so ``align_dim`` only re-parametrises one side). With the
   frozen ``features`` backbone the text term has no trainable input and is a constant; it trains an ``hf:``
   encoder.
4. **Positives by class, not exact label equality** (``cl_positives: classes``): MOSI/MOSEI labels are
   averages of annotations, so exact equality leaves almost only ``i`` itself as positive and the loss
   degenerates into HEAD v1's pure repulsion. ``classes`` uses the Acc-7 classes ``round(clip(y, -3, 3))`` for
   the MOSI family and the Acc-5 bins of the metrics (edges -0.7, -0.1, 0.1, 0.7) for SIMS; ``exact`` is
   HEAD's rule.
5. **Weights.** ``nce = 0.2 * sum`` of the three terms (HEAD's 0.2 over its two pair terms, each the mean of
   two intra-modal losses); stage 1 adds ``alpha * nce`` (0.2 MOSI, 0.1 MOSEI, README).
6. **Hyper-parameters: the README table** where it disagrees with ``config.py``: ``lr_main`` 5e-4 (README
   "learning rate 5e-4"; ``lr_bert`` 5e-5 and ``lr_mmilb`` 1e-3 from ``config.py``), ``d_vout`` 32, early
   stopping 20 (``when`` stays 20), batch 32 / 64. The README's ``dropout a/v`` are LSTM dropouts, inert with
   one layer (as in the reference); it has no counterpart for its ``dropout t``.
7. Inherited from MMIM (``mmim.py``): validation-only selection, per-batch stages, the explicit entropy memory
   and its numerical safety, absent modalities (the entropy leaves out samples whose modality is absent), float32
   loss heads, encoding reuse: :meth:`MECAM.encode_modality` packs one modality's encoder outputs into one tensor
   (text: token states + mask channel; audio / vision: LSTM vector, per-frame states + mask channel), unpacked by
   :meth:`MECAM.unpack`; the talking-heads attention, which mixes text and A/V, runs after it. HEAD's ``contrast: false`` branch
   (criterion + ``alpha nce``, no ``lld``) is kept for that setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, register_method
from .encoders import RNNEncoder
from .layers import merge_heads, split_heads
from .mmim import MMIM, FusionSubNet, full_precision

__all__ = [
    "MECAM",
    "SIMS_ACC5_EDGES",
    "TalkingHeadsCrossAttention",
    "intra_modal_contrastive",
    "rnn_with_states",
    "sentiment_classes",
]

#: The SIMS Acc-5 bin edges of ``robustmsa.metrics`` (right-closed bins on labels clipped to [-1, 1]).
SIMS_ACC5_EDGES = (-0.7, -0.1, 0.1, 0.7)


def rnn_with_states(encoder: RNNEncoder, x: torch.Tensor,
                    lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``encoder(x, lengths)`` and the LSTM's per-frame outputs: final (B, out), states (B, L, H), mask (B, L)

    The final vector equals :meth:`RNNEncoder.forward` (same packing, zero state for length 0); ``states`` are
    the last LSTM layer's outputs, zero at padding frames; ``mask`` marks the valid frames.
    """
    present = lengths > 0
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    outputs, (h_n, _) = encoder.rnn(packed)
    states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    h = torch.cat([h_n[-2], h_n[-1]], dim=-1) if encoder.rnn.bidirectional else h_n[-1]
    h = h * present[:, None].to(h.dtype)
    final = encoder.linear_1(encoder.dropout(h))
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    return final, states * mask[..., None].to(states.dtype), mask


class TalkingHeadsCrossAttention(nn.Module):
    """Queries from one modality's frame states, keys / values from the text tokens, talking heads, pooling.

    ``logits = mix_pre(q k^T / sqrt(d))`` (heads mixed by a learned ``H x H`` map), padding keys masked,
    softmax, dropout, ``mix_post`` (a second ``H x H`` map), the maps averaged over the valid query frames,
    times ``v``, heads merged, ``to_out``. Returns (B, out_dim).
    """

    def __init__(self, query_dim: int, text_dim: int, out_dim: int, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm_query = nn.LayerNorm(query_dim)
        self.norm_text = nn.LayerNorm(text_dim)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(text_dim, inner, bias=False)
        self.to_v = nn.Linear(text_dim, inner, bias=False)
        self.mix_pre = nn.Linear(heads, heads, bias=False)   # talking heads on the logits
        self.mix_post = nn.Linear(heads, heads, bias=False)  # talking heads on the attention maps
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(inner, out_dim)

    def attention_maps(self, states: torch.Tensor, text: torch.Tensor,
                       text_mask: torch.Tensor) -> torch.Tensor:
        """Post-mixing attention maps (B, H, L_q, L_t) (dropout applied in training mode)."""
        h = self.heads
        q = split_heads(self.to_q(self.norm_query(states)), h)
        t = self.norm_text(text)
        k = split_heads(self.to_k(t), h)
        logits = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        logits = torch.einsum("bhij,gh->bgij", logits, self.mix_pre.weight)
        keys = text_mask.bool()
        keys = keys | ~keys.any(dim=1, keepdim=True)  # no valid token: attend over all positions (no NaN)
        logits = logits.masked_fill(~keys[:, None, None, :], float("-inf"))
        attn = self.dropout(logits.softmax(dim=-1))
        return torch.einsum("bhij,gh->bgij", attn, self.mix_post.weight)

    def forward(self, states: torch.Tensor, state_mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        attn = self.attention_maps(states, text, text_mask)
        weights = state_mask.to(attn.dtype)
        # mean over the valid query frames first (exact: the output is linear in the maps)
        count = weights.sum(dim=1).clamp_min(1.0)[:, None, None]
        pooled = torch.einsum("bhij,bi->bhj", attn, weights) / count
        v = split_heads(self.to_v(self.norm_text(text)), self.heads)
        context = torch.einsum("bhj,bhjd->bhd", pooled, v)
        return self.to_out(merge_heads(context.unsqueeze(2)).squeeze(1))


def sentiment_classes(labels: torch.Tensor, family: str, mode: str) -> torch.Tensor:
    """The classes defining contrastive positives: ``exact`` labels, or ``classes`` (Acc-7 / SIMS Acc-5)."""
    if mode == "exact":
        return labels
    if mode != "classes":
        raise ConfigError(f"mecam: cl_positives must be 'classes' or 'exact', got {mode!r}")
    if family == "sims":
        edges = torch.tensor(SIMS_ACC5_EDGES, dtype=labels.dtype, device=labels.device)
        return torch.bucketize(labels.clamp(-1.0, 1.0), edges).to(labels.dtype)
    return torch.round(labels.clamp(-3.0, 3.0))


def intra_modal_contrastive(features: torch.Tensor, classes: torch.Tensor, temperature: float = 0.03,
                            negative_weight: float = 0.8) -> torch.Tensor:
    """HEAD's ``IntraModalityCL`` on one modality: supervised contrast with the 0.8 negative re-weighting.

    Row ``i`` of the logits is ``[s_i, negative_weight * s_i with the positives set to 0]``
    (``s = z z^T / tau`` on L2-normalised ``z``); the loss is ``-log`` of the softmax mass on the positives of
    the first half.
    """
    z = F.normalize(features, dim=-1)
    logits = z @ z.t() / float(temperature)
    positive = classes[:, None] == classes[None, :]
    negatives = float(negative_weight) * logits.masked_fill(positive, 0.0)
    log_prob = torch.log_softmax(torch.cat([logits, negatives], dim=1), dim=1)[:, : z.shape[0]]
    return -torch.logsumexp(log_prob.masked_fill(~positive, float("-inf")), dim=1).mean()


@register_method
class MECAM(MMIM):
    """MECAM (YaoYangWang/MECAM@37a0d97, repaired); see the module docstring."""

    name = "mecam"
    paper = ("Wang et al., Contrastive-Based Removal of Negative Information in Multimodal Emotion Analysis, "
             "Cognitive Computation 17(3), 2025")
    reference = "YaoYangWang/MECAM@37a0d97 src/model.py (does not run as published; repaired)"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        # validate the option at construction
        sentiment_classes(torch.zeros(1), spec.label_family, str(self.config["cl_positives"]))

    def _build_heads(self) -> None:
        c = self.config
        directions = 2 if bool(c["bidirectional"]) else 1
        attention = {"text_dim": self.dims["text"], "heads": int(c["attn_heads"]),
                     "dim_head": int(c["attn_dim_head"]), "dropout": float(c["attn_dropout"])}
        self.attn_audio = TalkingHeadsCrossAttention(directions * int(c["d_ah"]), out_dim=self.dims["audio"],
                                                     **attention)
        self.attn_vision = TalkingHeadsCrossAttention(directions * int(c["d_vh"]),
                                                      out_dim=self.dims["vision"], **attention)
        self.fusion_prj = FusionSubNet(sum(self.dims.values()), int(c["d_prjh"]), float(c["dropout_prj"]))

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """One modality's encoder outputs, packed into one tensor per sample (see :meth:`unpack`).

        ``text``: the token states with the attention mask as one more channel (B, L_t, D_t + 1);
        ``audio`` / ``vision``: the LSTM vector, then the per-frame states with the frame mask as one more
        channel, flattened: (B, d_m + L (H + 1)). The attention that mixes them runs later, in :meth:`fuse`.
        """
        if modality == "text":
            states = self.text_encoder(batch)
            return torch.cat([states, batch.text_mask[..., None].to(states.dtype)], dim=-1)
        if modality in ("audio", "vision"):
            encoder = self.acoustic_enc if modality == "audio" else self.visual_enc
            final, states, mask = rnn_with_states(encoder, getattr(batch, modality),
                                                  getattr(batch, f"{modality}_lengths"))
            frames = torch.cat([states, mask[..., None].to(states.dtype)], dim=-1)
            return torch.cat([final, frames.flatten(1)], dim=1)  # mixed precision: promoted, exact
        raise ValueError(f"{self.name}: unknown modality {modality!r}")

    def unpack(self, encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MMIM's encodings plus the A/V LSTM states and frame masks, the text states and the text mask."""
        text = encoded["text"]
        out = {"text_states": text[..., :-1], "text": text[:, 0, :-1], "text_mask": text[..., -1] > 0}
        for modality, encoder in (("audio", self.acoustic_enc), ("vision", self.visual_enc)):
            packed, width = encoded[modality], self.dims[modality]
            state_width = encoder.rnn.hidden_size * (2 if encoder.rnn.bidirectional else 1)
            frames = packed[:, width:].unflatten(1, (-1, state_width + 1))
            out[modality] = packed[:, :width]
            out[f"{modality}_states"] = frames[..., :-1]
            out[f"{modality}_mask"] = frames[..., -1] > 0
        return out

    def fuse(self, batch: Batch, enc: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        text, mask = enc["text_states"], enc["text_mask"]
        audio = enc["audio"] + self.attn_audio(enc["audio_states"], enc["audio_mask"], text, mask)
        vision = enc["vision"] + self.attn_vision(enc["vision_states"], enc["vision_mask"], text, mask)
        return self.fusion_prj(torch.cat([enc["text"], audio, vision], dim=-1))

    def contrastive(self, enc: Mapping[str, torch.Tensor], fusion: torch.Tensor,
                    labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``nce = cl_weight * (L_text + L_audio + L_vision)``; 0 without labels (HEAD returns 0 then too)."""
        if labels is None:
            return torch.zeros((), device=fusion.device), {}
        c = self.config
        classes = sentiment_classes(labels.float(), self.spec.label_family, str(c["cl_positives"]))
        with full_precision(fusion.device):
            terms = {m: intra_modal_contrastive(enc[m].float(), classes, float(c["cl_temperature"]),
                                                float(c["cl_negative_weight"]))
                     for m in ("text", "audio", "vision")}
        return float(c["cl_weight"]) * sum(terms.values()), terms

    def _contrast_terms(self, nce: torch.Tensor, lld: torch.Tensor) -> torch.Tensor:
        """``alpha nce - beta lld`` with ``contrast``; HEAD's ``alpha nce`` without it."""
        c = self.config
        if not c["contrast"]:
            return float(c["alpha"]) * nce
        return float(c["alpha"]) * nce - float(c["beta"]) * lld
