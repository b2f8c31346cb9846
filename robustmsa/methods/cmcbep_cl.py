"""CMCBEP-CL: cross-modal complementary balanced emotion prediction with contrastive learning.

Paper: none found (title and venue unknown); the repository's README describes three modules: lead-modality
supplementation, cross-modal comparative analysis (contrastive learning) and balanced prediction over every
stage's predictions. Reference: ``zbxshangqiu/CMCBEP-CL@c39f704``: ``src/model.py`` (class still named ``MMIM``),
``src/transformer.py``, ``src/solver.py``, ``src/config.py``, ``src/modules/encoders.py``, ``src/layers/*``,
``Fig.2.png`` / ``Fig.3.png``; hyper-parameters in ``cmcbep_cl.yaml`` beside this file. Written from the
reference's behaviour, not copied from it. Details and decisions: ``docs/methods.md``.

Architecture (``d`` = ``d_prjh`` = 64; every block acts on one d-vector per sample):

1. encoders: text = ``Linear(D_t, d)`` on the first row ([CLS]) of the text backbone's output; audio and vision =
   :class:`~robustmsa.methods.encoders.RNNEncoder` (1-layer LSTM over the valid frames, hidden 16, -> d);
2. :class:`ChunkAttention` (the reference's ``MHAtt``): the d-vector is cut into ``heads`` chunks of ``d / heads``
   values and the chunks attend to each other (``heads x heads`` scores per sample, scale ``sqrt(d / heads)``,
   dropout on the map), re-flattened chunk-minor (the reference's ``transpose(1, 2)``) and projected. Optional mask:
   "the key vector is all zeros" -> uniform attention;
3. lead-modality selection: three :class:`PairEstimator` scores ``I_vt = est(v, t)``, ``I_ta = est(t, a)``,
   ``I_av = est(a, v)``; relevances ``S_v = I_vt + I_av``, ``S_t = I_vt + I_ta``, ``S_a = I_ta + I_av``; the
   modalities ranked by relevance (low, middle, high) fill the slots ``(x, y, z)``; ``y`` is the lead;
4. lead supplementation: ``y1 = LeadEncoder(y)`` (two ``nn.MultiheadAttention`` layers on a length-1 sequence, FFN
   d -> 16 -> d, post-LN); ``x += MHAtt(q=y1, kv=x)``, ``z += MHAtt(q=y1, kv=z)`` (one shared module), ``y += y1``;
   then ``normlayer3`` (2) :class:`TransBlock` on ``y``;
5. cross-modal comparative analysis: :class:`ContrastiveProjections` (three ``Linear(d, d)``, L2-normalised) ->
   ``x_c, y_c, z_c`` and the in-batch InfoNCE ``db_loss`` (tau 0.1, pairs xy, xz, yz, one direction);
6. fusion: :class:`GatedFusion` (``FUNET``) on (lead ``y``, ``x``, ``z``) -> :class:`SubNet` -> ``fusion`` (d) and
   ``preds1``;
7. filter / semantic difference per slot: :class:`SemanticFilter` -> ``m_sin`` and ``m_dif``; heads
   ``x_pre, y_pre, z_pre = Linear(d, 1)(m_sin)``;
8. difference fusion: :class:`GatedFusion` on (``y_sin``, ``x_sin``, ``z_sin``) -> ``dif``; ``SubNet(2d)`` on
   ``[dif, fusion]`` -> ``preds``;
9. balanced prediction (:class:`BalancedPrediction`, Fig. 3): ``softmax(Linear(5, 5)([preds, preds1, x_pre, y_pre,
   z_pre]))`` weights the five predictions.

Loss (``src/solver.py``; the ``main_weight`` and ``aux_weights`` of the YAML):
``4/3 SmoothL1(y_hat, y) + 2/3 SmoothL1(preds1, y) + [Diff(x_dif, y_dif) + Diff(z_dif, x_dif) + Diff(y_dif,
z_dif)] / 6 - mean(I_vt + I_ta + I_av) / 3 + [CMD_1(x_c, y_c) + CMD_1(z_c, y_c)] / 2 + lambda * db_loss``.
Diff is MISA's soft orthogonality after a sigmoid; CMD_1 the distance of the batch means after a sigmoid.
Adamax (text encoder lr 5e-5, rest 1e-3, weight decay 3e-4), gradient-norm clip 1.0, ReduceLROnPlateau(patience 20,
factor 0.5) on the validation loss, kaiming-normal (fan_in) initialisation of every weight with ``dim > 1``
outside the text encoder, 90 epochs, early stop 50, batch 120.

Repairs (what the published code did, what we do, why):

- **Lead modality chosen per sample.** The reference ranks the relevances of the *first* sample of the batch
  (``argsort(...)[:, 0]``) and applies that one assignment to the whole batch, so a prediction depends on which
  samples share its batch and in which order (its collate function also sorts each batch by text length, so sample
  0 is the longest). We rank every sample's own relevances (vectorised: ``argsort`` per row, then a ``gather`` of
  the stacked (vision, text, audio) vectors into the slots; no loop over samples). Predictions are then
  independent of the batch in eval mode (tested). Every slot-indexed module (contrastive projections, filters,
  heads) now sees a mix of modalities within a batch, as it already did across batches in the reference.
- **Visual <-> text label swap.** The reference's six hard-coded branches equal "rank (low, middle, high), then
  swap the visual and text labels" (as if index 0 were text, but index 0 holds the visual score): e.g. when text
  has the lowest relevance, the *visual* vector goes to slot ``x``. ``lead_assignment: ranked`` (default) assigns
  the modalities by their true ranks; ``lead_assignment: published_swap`` reproduces the swap.
- **The contrastive loss is trained.** The reference computes ``db_loss`` and never adds it to the loss (only the
  CMD term reaches the projections). We add ``aux_weights.contrastive * db_loss``, weight 0.1: the repository's
  own ``--alpha`` (0.1, "weight for CPC NCE estimation item", inherited from MMIM and otherwise unused), the
  weight this code base gives its contrastive term.
- **The estimator term is bounded.** ``- (I_vt + I_ta + I_av) / 3`` maximises the raw ``Linear(d, 1)`` outputs of
  the estimators: nothing bounds them (the reference applies no activation), so the term can decrease without
  limit, its gradients grow with the estimator weights and, through the estimators, push on the encoders.
  ``score_bound: tanh`` (default) uses ``-mean(tanh(I_vt) + tanh(I_ta) + tanh(I_av))`` in the loss, which saturates;
  the ranking still uses the raw scores (no ties from saturation). ``score_bound: none`` is the published term.
- **Dead code dropped, outputs unchanged.** The reference builds ``normlayer`` (3) and ``normlayer2`` (3) fusion
  blocks, calls each on the same inputs and keeps only the last output (a block without a trailing norm): we build
  one. Unused modules (``Block_split0/Block_split``, ``reconenc``, GRU encoders, ``EnhancedModel``, ``SGA``,
  ``GNNDependency``, the estimators' bi-GRU, unused gates / FFNs / norms / ``AttFlat`` inside the blocks) are not
  built; they had no effect on outputs but were in the optimiser and changed the initialisation RNG order.
- **Same device** for batches and model (the reference moves every batch to the CPU while the model is on CUDA,
  so it runs only on CPU-only machines).
- **Selection** on the validation loss (the engine's protocol); the reference keeps the epoch with the best *test*
  Non0 Acc-2 among epochs whose validation loss improved.
- **Absent modalities.** The shared ``RNNEncoder`` accepts length 0 (the reference's packing crashes); its
  ``squeeze()`` of the final state, which breaks batches of one, is not reproduced.

Encoding reuse: the three encoders (``text_proj`` of the [CLS] row, the two ``RNNEncoder``) are the
``unimodal_encoders``; :meth:`CMCBEPCL.stages_encoded` runs everything after them (estimators onwards mix the
modalities); ``forward`` encodes in the reference's order (text, vision, audio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .encoders import RNNEncoder
from .text_encoders import build_text_encoder

__all__ = ["CMCBEPCL", "StdLayerNorm", "ChunkAttention", "FeedForward", "PairEstimator", "LeadEncoder",
           "TransBlock", "GatedFusion", "SubNet", "SemanticFilter", "ContrastiveProjections", "BalancedPrediction",
           "lead_order", "assign_slots", "diff_loss", "cmd_loss", "info_nce", "MODALITY_ORDER", "PUBLISHED_SWAP",
           "LEAD_ASSIGNMENTS", "SCORE_BOUNDS", "AUX_LOSSES", "Stages"]

#: Order of the relevance scores (S_v, S_t, S_a) and of the stacked modality vectors, as in the reference.
MODALITY_ORDER = ("vision", "text", "audio")
#: The reference's hard-coded assignment = ranked modalities with the vision and text labels swapped.
PUBLISHED_SWAP = (1, 0, 2)
LEAD_ASSIGNMENTS = ("ranked", "published_swap")
SCORE_BOUNDS = ("tanh", "none")
AUX_LOSSES = ("preds1", "diff", "scores", "cmd", "contrastive")


# ------------------------------------------------------------------------------------------ blocks
class StdLayerNorm(nn.Module):
    """The reference's ``LayerNorm``: ``a * (x - mean) / (std + eps) + b`` with the *unbiased* std, eps 1e-6."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class ChunkAttention(nn.Module):
    """The reference's ``MHAtt`` on single vectors: attention between the ``heads`` chunks of a d-vector.

    ``q, k, v`` (B, d) are projected and viewed as (B, heads, d / heads); scores (B, heads, heads) scaled by
    ``sqrt(d / heads)``; ``mask`` (B,) bool fills a sample's scores with -1e9 (uniform attention); dropout on the
    map; the result is flattened chunk-minor (``transpose(1, 2)``, as the reference) and projected.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"cmcbep_cl: d_prjh ({dim}) must be divisible by multi_head ({heads})")
        self.heads = heads
        self.linear_v = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_q = nn.Linear(dim, dim)
        self.linear_merge = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, d = q.shape
        shape = (b, self.heads, d // self.heads)
        v, k, q = self.linear_v(v).view(shape), self.linear_k(k).view(shape), self.linear_q(q).view(shape)
        scores = q @ k.transpose(-2, -1) / math.sqrt(shape[-1])
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, None], -1e9)
        attended = self.dropout(scores.softmax(dim=-1)) @ v
        return self.linear_merge(attended.transpose(1, 2).reshape(b, d))


class FeedForward(nn.Sequential):
    """The reference's ``FFN`` (``MLP``): ``Linear(d, ff) -> ReLU -> Dropout -> Linear(ff, d)``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class PairEstimator(nn.Module):
    """One relevance estimator (``estimator`` = ``Block_x_y(x_y_net)`` + ``Linear(d, 1)``), live parts only.

    ``x, y <- fc(x), fc(y)`` (shared); ``x <- LN0(x)``; ``x <- LN1(x + MHAtt(q=x, kv=y, mask=y all-zero))``;
    ``x <- LN2(x + FFN(x))``; ``x <- LN_out(x)`` (``Block_x_y``'s extra norm); score ``Linear(d, 1)``.
    """

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.attention = ChunkAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ff, dropout)
        self.drop_attention = nn.Dropout(dropout)
        self.drop_ffn = nn.Dropout(dropout)
        self.norm_in = StdLayerNorm(dim)
        self.norm_attention = StdLayerNorm(dim)
        self.norm_ffn = StdLayerNorm(dim)
        self.norm_out = StdLayerNorm(dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None) -> torch.Tensor:
        x, y = self.fc(x), self.fc(y)
        x = self.norm_in(x)
        x = self.norm_attention(x + self.drop_attention(self.attention(y, y, x, y_mask)))
        x = self.norm_ffn(x + self.drop_ffn(self.ffn(x)))
        return self.score(self.norm_out(x)).squeeze(-1)


class LeadEncoderLayer(nn.Module):
    """The reference's ``TransformerEncoderLayer`` on a length-1 sequence (post-LN, ``nn.LayerNorm``)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 1, d)."""
        attended, _ = self.self_attn(x, x, x, need_weights=False)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.linear2(F.relu(self.linear1(x)))))


class LeadEncoder(nn.Module):
    """``layers`` :class:`LeadEncoderLayer` over the lead vector (B, d) -> (B, d)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LeadEncoderLayer(dim, heads, ff, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(1)


class TransBlock(nn.Module):
    """The reference's ``Block_trans``: ``y <- LN(y + MHAtt(y, y, y))``; ``y <- LN(y + FFN_d(y))`` (one shared LN)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = ChunkAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.drop_attention = nn.Dropout(dropout)
        self.drop_ffn = nn.Dropout(dropout)
        self.norm = StdLayerNorm(dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.norm(y + self.drop_attention(self.attention(y, y, y)))
        return self.norm(y + self.drop_ffn(self.ffn(y)))


class GatedFusion(nn.Module):
    """The reference's ``FUNET`` (the last ``Block_gf``): gated fusion of a lead vector with two others.

    ``l, x, z <- fc(l), fc(x), fc(z)`` (shared); gates ``g(.) = sigmoid(Linear(.))`` (shared);
    ``h = LN(l + g(x) * MHAtt(q=l, kv=x))``; ``h = LN(z + g(z) * MHAtt(q=h, kv=z))`` (the residual base switches
    to ``z``, as published); ``h = LN(h + g(l) * FFN(h))`` (one shared LN).
    """

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
        self.attention_x = ChunkAttention(dim, heads, dropout)
        self.attention_z = ChunkAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ff, dropout)
        self.drop_x = nn.Dropout(dropout)
        self.drop_z = nn.Dropout(dropout)
        self.drop_ffn = nn.Dropout(dropout)
        self.norm = StdLayerNorm(dim)

    def forward(self, lead: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lead, x, z = self.fc(lead), self.fc(x), self.fc(z)
        h = self.norm(lead + self.gate(x) * self.drop_x(self.attention_x(x, x, lead)))
        h = self.norm(z + self.gate(z) * self.drop_z(self.attention_z(z, z, h)))
        return self.norm(h + self.gate(lead) * self.drop_ffn(self.ffn(h)))


class SubNet(nn.Module):
    """MMIM's ``SubNet``: dropout -> ``tanh(Linear)`` -> ``tanh(Linear)`` = features; ``Linear(., 1)`` = prediction."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.tanh(self.linear_2(torch.tanh(self.linear_1(self.drop(x)))))
        return features, self.linear_3(features)


class SemanticFilter(nn.Module):
    """The reference's ``filter``: the slot's specific (``sin``) and difference (``dif``) vectors.

    ``gate = sigmoid(LN(sigmoid(m) * fusion))``; ``dif = LN(fc(m))``; ``sin = LN(dif + gate * m)``, then
    ``layerforsemantic`` :class:`TransBlock`, then ``LN`` (one shared LN).
    """

    def __init__(self, dim: int, heads: int, dropout: float, blocks: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(TransBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = StdLayerNorm(dim)

    def forward(self, m: torch.Tensor, fusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.norm(torch.sigmoid(m) * fusion))
        dif = self.norm(self.fc(m))
        specific = self.norm(dif + gate * m)
        for block in self.blocks:
            specific = block(specific)
        return self.norm(specific), dif


class ContrastiveProjections(nn.Module):
    """``CrossModalContrastiveLearning``: a ``Linear(d, d)`` per slot, L2-normalised; InfoNCE over the pairs.

    The reference names the projections text/video/audio, but they act on the slots x, y, z.
    """

    def __init__(self, dim: int, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"cmcbep_cl: temperature must be positive, got {temperature!r}")
        self.temperature = temperature
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)
        self.proj_z = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        xc = F.normalize(self.proj_x(x), dim=-1)
        yc = F.normalize(self.proj_y(y), dim=-1)
        zc = F.normalize(self.proj_z(z), dim=-1)
        t = self.temperature
        loss = (info_nce(xc, yc, t) + info_nce(xc, zc, t) + info_nce(yc, zc, t)) / 3
        return xc, yc, zc, loss


class BalancedPrediction(nn.Module):
    """``AttentionWeightedFusion`` (Fig. 3): ``softmax(Linear(n, n)(p)) . p`` over the n stage predictions."""

    def __init__(self, n: int = 5) -> None:
        super().__init__()
        self.attention = nn.Linear(n, n)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        """``predictions`` (B, n) -> (B,)."""
        weights = self.attention(predictions).softmax(dim=-1)
        return (weights * predictions).sum(dim=-1)


# ------------------------------------------------------------------------------------------ functions
def lead_order(relevance: torch.Tensor, assignment: str = "ranked") -> torch.Tensor:
    """Per-sample slot order: ``order[b] = (x, y, z)`` modality indices (into ``MODALITY_ORDER``).

    ``relevance`` (B, 3) = (S_v, S_t, S_a). ``ranked``: lowest, middle, highest relevance (ties keep the
    modality order). ``published_swap``: the same ranks with the vision and text labels swapped, which is what
    the reference's six hard-coded branches compute.
    """
    order = torch.argsort(relevance.detach().float(), dim=-1, stable=True)
    if assignment == "published_swap":
        return torch.tensor(PUBLISHED_SWAP, device=order.device)[order]
    if assignment != "ranked":
        raise ConfigError(f"cmcbep_cl: lead_assignment must be one of {LEAD_ASSIGNMENTS}, got {assignment!r}")
    return order


def assign_slots(stacked: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``stacked`` (B, 3, d) modality vectors and ``order`` (B, 3) -> the slot vectors ``x, y, z`` (B, d) each."""
    index = order[:, :, None].expand(-1, -1, stacked.shape[-1])
    x, y, z = torch.gather(stacked, 1, index).unbind(dim=1)
    return x, y, z


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE, one direction: cross-entropy of ``a b^T / t`` against the diagonal."""
    logits = a @ b.transpose(0, 1) / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def diff_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's ``DiffLoss`` (MISA soft orthogonality) after a sigmoid.

    Sigmoid, centre over the batch, divide each row by its (detached) L2 norm + 1e-6, mean of the squared
    entries of ``A^T B``.
    """
    a, b = torch.sigmoid(a), torch.sigmoid(b)
    a, b = a - a.mean(dim=0, keepdim=True), b - b.mean(dim=0, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (a.transpose(0, 1) @ b).pow(2).mean()


def cmd_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's ``CMD`` with one moment: L2 distance between the batch means after a sigmoid.

    (``vector_norm`` has a zero subgradient at equal means, where the reference's ``sum ** 0.5`` gives NaN.)
    """
    return torch.linalg.vector_norm(torch.sigmoid(a).mean(dim=0) - torch.sigmoid(b).mean(dim=0))


# ------------------------------------------------------------------------------------------ model
@dataclass
class Stages:
    """Intermediate results of one forward pass (for losses, tests and analysis)."""

    relevance: torch.Tensor       # (B, 3): S_v, S_t, S_a
    scores: torch.Tensor          # (B, 3): I_vt, I_ta, I_av (raw)
    order: torch.Tensor           # (B, 3): modality index in slots x, y (lead), z
    predictions: torch.Tensor     # (B, 5): preds, preds1, x_pre, y_pre, z_pre
    final: torch.Tensor           # (B,)
    contrastive: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x_c, y_c, z_c
    differences: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x_dif, y_dif, z_dif
    db_loss: torch.Tensor


def _positive(config: Mapping[str, Any], key: str) -> int:
    value = int(config[key])
    if value < 1:
        raise ConfigError(f"cmcbep_cl: {key} must be >= 1, got {config[key]!r}")
    return value


@register_method
class CMCBEPCL(Method):
    """CMCBEP-CL (zbxshangqiu/CMCBEP-CL@c39f704); see the module docstring."""

    name = "cmcbep_cl"
    paper = ("CMCBEP-CL: cross-modal complementary balanced multimodal sentiment analysis driven by contrastive "
             "learning (no paper found; README of the reference repository)")
    reference = "zbxshangqiu/CMCBEP-CL@c39f704 src/model.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        d = _positive(c, "d_prjh")
        heads, ff, dropout = _positive(c, "multi_head"), _positive(c, "ff_size"), float(c["dropout_r"])
        if int(c["d_vout"]) != d or int(c["d_aout"]) != d:
            raise ConfigError(f"cmcbep_cl: d_vout ({c['d_vout']}) and d_aout ({c['d_aout']}) must equal d_prjh ({d}): "
                              f"the modality vectors share the slots")
        for key, choices in (("lead_assignment", LEAD_ASSIGNMENTS), ("score_bound", SCORE_BOUNDS)):
            if c[key] not in choices:
                raise ConfigError(f"cmcbep_cl: {key} must be one of {choices}, got {c[key]!r}")
        weights = c.get("aux_weights") or {}
        unknown, missing = set(weights) - set(AUX_LOSSES), set(AUX_LOSSES) - set(weights)
        if unknown or missing:
            raise ConfigError(f"cmcbep_cl: aux_weights needs exactly the keys {AUX_LOSSES} "
                              f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        n_layer = _positive(c, "n_layer")
        bidirectional = bool(c.get("bidirectional", False))

        self.text_encoder = build_text_encoder(c["text_backbone"], spec, finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        self.text_proj = nn.Linear(self.text_encoder.out_dim, d)
        # the reference passes the LSTM dropout only for n_layer > 1 (also the encoder's output dropout)
        self.vision_encoder = RNNEncoder(int(spec.dims["vision"]), _positive(c, "d_vh"), d, num_layers=n_layer,
                                         dropout=float(c["dropout_v"]) if n_layer > 1 else 0.0,
                                         bidirectional=bidirectional)
        self.audio_encoder = RNNEncoder(int(spec.dims["audio"]), _positive(c, "d_ah"), d, num_layers=n_layer,
                                        dropout=float(c["dropout_a"]) if n_layer > 1 else 0.0,
                                        bidirectional=bidirectional)
        self.estimator_vt = PairEstimator(d, heads, ff, dropout)
        self.estimator_ta = PairEstimator(d, heads, ff, dropout)
        self.estimator_av = PairEstimator(d, heads, ff, dropout)
        self.lead_encoder = LeadEncoder(d, _positive(c, "lead_encoder_heads"), _positive(c, "lead_encoder_ff"),
                                        float(c["lead_encoder_dropout"]), _positive(c, "lead_encoder_layers"))
        self.lead_attention = ChunkAttention(d, heads, dropout)
        self.lead_blocks = nn.ModuleList(TransBlock(d, heads, dropout) for _ in range(_positive(c, "normlayer3")))
        self.contrastive = ContrastiveProjections(d, float(c["temperature"]))
        self.fusion = GatedFusion(d, heads, ff, dropout)
        self.fusion_head = SubNet(d, d, float(c["dropout_prj"]))
        semantic_blocks = _positive(c, "layerforsemantic")
        self.filter_x = SemanticFilter(d, heads, dropout, semantic_blocks)
        self.filter_y = SemanticFilter(d, heads, dropout, semantic_blocks)
        self.filter_z = SemanticFilter(d, heads, dropout, semantic_blocks)
        self.head_x = nn.Linear(d, 1)
        self.head_y = nn.Linear(d, 1)
        self.head_z = nn.Linear(d, 1)
        self.difference_fusion = GatedFusion(d, heads, ff, dropout)
        self.semantic_head = SubNet(2 * d, d, float(c["dropout_prj"]))
        self.balance = BalancedPrediction(5)
        if c.get("kaiming_init", True):
            self._kaiming_init()

    def _kaiming_init(self) -> None:
        """The solver's init: ``kaiming_normal_(fan_in)`` on every parameter with dim > 1 outside the text encoder."""
        text = {id(p) for p in self.text_encoder_parameters()}
        with torch.no_grad():
            for p in self.parameters():
                if id(p) not in text and p.dim() > 1:
                    nn.init.kaiming_normal_(p, mode="fan_in")

    # ------------------------------------------------------------------ forward
    #: The three encoders read one modality each; everything after them (estimators, slots, fusion) mixes them.
    unimodal_encoders = ("text", "audio", "vision")
    #: The reference's order (text, vision, audio): training draws the same random numbers.
    _encoder_order = ("text", "vision", "audio")

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The d-vector of one modality: ``text_proj`` of the [CLS] row, or the LSTM encoder's output (B, d)."""
        if modality == "text":
            return self.text_proj(self.text_encoder(batch)[:, 0])
        if modality == "vision":
            return self.vision_encoder(batch.vision, batch.vision_lengths)
        if modality == "audio":
            return self.audio_encoder(batch.audio, batch.audio_lengths)
        raise ValueError(f"cmcbep_cl: unknown modality {modality!r}")

    def stages(self, batch: Batch) -> Stages:
        """Every stage of the forward pass (``forward`` keeps the prediction and the auxiliary losses)."""
        return self.stages_encoded({m: self.encode_modality(batch, m) for m in self._encoder_order})

    def stages_encoded(self, encoded: Mapping[str, torch.Tensor]) -> Stages:
        """:meth:`stages` from the encodings of :meth:`encode_modality`."""
        text, vision, audio = encoded["text"], encoded["vision"], encoded["audio"]

        def absent(v: torch.Tensor) -> torch.Tensor:  # the reference's make_mask: the whole vector is zero
            return v.abs().sum(dim=-1) == 0

        i_vt = self.estimator_vt(vision, text, absent(text))
        i_ta = self.estimator_ta(text, audio, absent(audio))
        i_av = self.estimator_av(audio, vision, absent(vision))
        relevance = torch.stack([i_vt + i_av, i_vt + i_ta, i_ta + i_av], dim=-1)
        order = lead_order(relevance, self.config["lead_assignment"])
        x, y, z = assign_slots(torch.stack([vision, text, audio], dim=1), order)

        # lead-modality supplementation (y leads)
        y1 = self.lead_encoder(y)
        x = x + self.lead_attention(x, x, y1)
        z = z + self.lead_attention(z, z, y1)
        y = y + y1
        for block in self.lead_blocks:
            y = block(y)

        x_c, y_c, z_c, db_loss = self.contrastive(x, y, z)
        fusion, preds1 = self.fusion_head(self.fusion(y, x, z))
        x_sin, x_dif = self.filter_x(x, fusion)
        y_sin, y_dif = self.filter_y(y, fusion)
        z_sin, z_dif = self.filter_z(z, fusion)
        dif = self.difference_fusion(y_sin, x_sin, z_sin)
        _, preds = self.semantic_head(torch.cat([dif, fusion], dim=-1))
        predictions = torch.cat([preds, preds1, self.head_x(x_sin), self.head_y(y_sin), self.head_z(z_sin)], dim=-1)
        return Stages(relevance=relevance, scores=torch.stack([i_vt, i_ta, i_av], dim=-1), order=order,
                      predictions=predictions, final=self.balance(predictions), contrastive=(x_c, y_c, z_c),
                      differences=(x_dif, y_dif, z_dif), db_loss=db_loss)

    def forward(self, batch: Batch) -> Output:
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in self._encoder_order})

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        s = self.stages_encoded(encoded)
        scores = torch.tanh(s.scores) if self.config["score_bound"] == "tanh" else s.scores
        x_dif, y_dif, z_dif = s.differences
        x_c, y_c, z_c = s.contrastive
        aux = {
            "preds1": self.criterion(s.predictions[:, 1], batch.labels),
            "diff": diff_loss(x_dif, y_dif) + diff_loss(z_dif, x_dif) + diff_loss(y_dif, z_dif),
            "scores": -scores.sum(dim=-1).mean(),
            "cmd": cmd_loss(x_c, y_c) + cmd_loss(z_c, y_c),
            "contrastive": s.db_loss,
        }
        return Output(pred=s.final, aux_losses=aux)

    # ------------------------------------------------------------------ training
    def criterion(self, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``smooth_l1`` (the reference's SmoothL1Loss, beta 1; training and validation), or the base's mse / l1."""
        if self.config.get("criterion", "smooth_l1") == "smooth_l1":
            return F.smooth_l1_loss(pred, labels)
        return super().criterion(pred, labels)

    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """``main_weight * criterion(pred) + sum(aux_weights[k] * aux[k])`` (the reference's weights)."""
        main = self.criterion(output.pred, batch.labels)
        weights = self.config["aux_weights"]
        total, parts = float(self.config["main_weight"]) * main, {"criterion": float(main.detach())}
        for key, value in output.aux_losses.items():
            total = total + float(weights[key]) * value
            parts[key] = float(value.detach())
        return total, parts

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        """Adamax: text-encoder group (``lr_text``) and main group (``lr``); ReduceLROnPlateau on the valid loss."""
        c = self.config
        text_ids = {id(p) for p in self.text_encoder_parameters()}
        text = [p for p in self.text_encoder_parameters() if p.requires_grad]
        main = [p for p in self.parameters() if id(p) not in text_ids and p.requires_grad]
        groups = [{"params": main, "lr": float(c["lr"]), "weight_decay": float(c["weight_decay"])}]
        if text:
            groups.insert(0, {"params": text, "lr": float(c["lr_text"]), "weight_decay": float(c["weight_decay_text"])})
        optimizer = torch.optim.Adamax(groups)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=float(c["plateau_factor"]),
                                                               patience=int(c["plateau_patience"]))
        return [optimizer], [scheduler]
