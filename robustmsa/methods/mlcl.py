"""MLCL: Multi-Level Contrastive Learning for multimodal sentiment analysis.

Paper: Zhuang, Bai, Zhang, Deng, Hu, Zhang, Ren, "Multi-Level Contrastive Learning for Multimodal Sentiment
Analysis", IEEE Transactions on Multimedia 27:9044-9058, 2025 (doi 10.1109/TMM.2025.3613116). Reference:
``YetZzzzzz/MLCL@7cc0f25`` (MIT): ``MCLC_MSA/MLCL_model.py``, ``MCLC_MSA/main_MLCL.py`` and
``MCLC_MSA/modules/{transformer,multihead_attention,position_embedding}.py`` (MulT's encoder); hyper-parameters
in ``mlcl.yaml`` beside this file. Written from the reference's behaviour, not copied from it. Details and
decisions: ``docs/methods.md``.

Architecture (width ``d`` = ``d_model``, 384 as published; ``num_heads`` 16 must divide it):

1. text: the text backbone's token states (B, L_t, D_t) -> ``Conv1d(D_t, d, k 3, pad 1, no bias)`` -> one
   position (see *pooling*) -> ``h_t``;
2. audio / vision: ``Conv1d(D_m, d, k 3, pad 1, no bias)`` -> MulT self-attention encoder
   (:class:`~robustmsa.methods.mult_layers.MulTEncoder`: input x sqrt(d) + fairseq sinusoidal positions, embed
   dropout 0.2, 3 pre-LN layers, 16 heads, attention dropout 0.5, ReLU dropout 0.3, residual dropout 0.3, FFN 4d,
   final LN) -> one time step -> ``h_a``, ``h_v``;
3. two private heads per modality, ``m_k = ReLU(Dropout_0.1(Linear(d, d)(h_m)))`` (k = 1, 2): the UMCL views; only
   ``m_1`` feeds the prediction;
4. six Perceiver-style cross-modal transformers ``C_xy = CT_xy(latent = x_1, context = y_1)`` for xy in ta, tv,
   av, at, vt, va, each with its own weights (:class:`CrossModalTransformer`: ``ct_depth`` 4 blocks of pre-LN
   cross-attention, 16 heads x 64, dropout 0.5 on the attention weights, and a GEGLU feed-forward d -> 8d -> 4d ->
   d with dropout 0.5; then mean over latent tokens and LayerNorm). Latent and context are single vectors, so the
   softmax is over one key: each block adds ``to_out(head-dropout(W_v LN(context)))`` to the latent stream;
5. fusion: ``nn.TransformerEncoder`` (2 post-LN layers, 16 heads, FFN 2048, ReLU, dropout 0.1) over the six
   tokens ``[t_1, a_1, v_1, C_ta, C_tv, C_av]``, outputs concatenated (6d) -> ``Linear(6d, 3d)`` -> Dropout 0.5 ->
   ReLU -> ``Linear(3d, 1)``.

Losses (training mode only; the reference's ``test()`` path computes none): InfoNCE with temperature 0.1 (both
sides L2-normalised, in-batch negatives, one direction: ``CE(q k^T / tau, diagonal)``)::

    L_U (UMCL) = NCE(t_1, t_2) + NCE(a_1, a_2) + NCE(v_1, v_2)
    L_T (TMCL) = NCE(v_1, C_ta) + NCE(a_1, C_tv) + NCE(t_1, C_av)
    L_B (BMCL) = NCE(C_ta, C_at) + NCE(C_tv, C_vt) + NCE(C_av, C_va)
    L = L1(y_hat, y) + alpha L_U / 3 + beta L_T / 3 + gamma L_B / 3,   alpha 0.01, beta 0.08, gamma 0.11

(the reference's ``contra_loss0/1/2``; mapping beta to TMCL and gamma to BMCL follows the paper's definitions).
``aux_losses`` holds ``umcl``, ``tmcl`` and ``bmcl`` (unweighted sums of three terms each).

Training as the reference: one Adam (lr 2e-5, no weight decay) over every parameter, the text encoder included
when fine-tuned; no scheduler, no clipping; batch 70, 50 epochs. Selection: the engine's, on the validation loss,
which ``criterion: mse`` makes the reference's dev MSE (``eval_epoch``); the training loss is ``train_criterion``
(L1, as published).

Repairs of the published code (each documented in ``docs/methods.md``):

- **A/V widths from the data.** ``MLCL_model.py`` hard-codes ``ACOUSTIC_DIM = 74`` and ``VISUAL_DIM = 35`` (MOSEI)
  at module level, so MOSI (V = 47) crashes unless the file is edited; we read ``spec.dims``.
- **vt has its own weights.** The reference computes ``C_vt`` with the ``cross_av`` module (``self.cross_av(v1,
  t1)``), so vt and av share weights and the constructed ``cross_vt`` is never used (the MHD version uses it). We
  use ``cross_vt``: the paper's six cross-modal transformers, one per ordered pair.
- **Pooling of the last valid step, with padding masks** (``pooling: last_valid``, default). The reference
  reads index ``L - 1`` of every padded sequence: for text the Conv1d output at the last padded position (a [PAD]
  position whose window covers the last two padded rows; real tokens reach it only through BERT's attention), and
  for audio / vision the output at the last padded frame of a transformer without any mask, so padding frames are
  attended and the pooled step is a padding step. On unaligned data with per-sample lengths (and on any corrupted
  length) that makes the representation depend on how much padding a sample has. We instead zero the rows beyond
  each valid length before the convolutions (so the window at the last valid step sees zeros, whatever the
  padding holds), add a key-padding mask to the A/V self-attention, give positions ``1..length`` to the valid
  frames, and read the last valid step: the [SEP] token for text (the last valid token; [CLS] was the
  alternative, we keep the reference's "last position" reading), the last valid frame for audio and vision. On
  word-aligned data the A/V lengths are the text lengths and the same rule applies. An **absent** modality
  (length 0, all-zero frames) is encoded as one all-zero step without a position, which is exactly what the
  reference computes for an all-zero sequence (every position then holds the same zero input and gets no
  position), so absent modalities map to the encoder's learned "empty" output, never to NaN.
  ``pooling: last_padded`` restores the published behaviour (no masks, fairseq positions where channel 0 of the
  projected input is non-zero, index ``L - 1``).
- **Training step in the engine.** The reference calls ``backward()`` and ``optimizer.step()`` inside
  ``MLCL.forward`` (its training loop's MSE is only logged) and builds its Adam in ``__init__``; here ``forward``
  only computes, :meth:`MLCL.loss` combines the terms and :meth:`MLCL.configure_optimizers` builds the Adam.

Speed (the same function, less work): the last MulT layer computes only the pooled row (``MulTEncoder(select=)``);
in evaluation only the three cross-modal transformers that feed the prediction (ta, tv, av) run. Encoding reuse:
``h_t``, ``h_a``, ``h_v`` are the ``unimodal_encoders`` (:meth:`MLCL.encode_modality`); the private heads and
everything after run in :meth:`MLCL.forward_encoded`, so in training their dropout draws still follow all three
encoders.

Measured on the embedded default (``synth`` section of ``mlcl.yaml``: d 64, 1 MulT layer, lr 1e-3, 12 epochs;
seeds 1111-1113, 2 CPU threads): test MAE 1.13-1.18, Corr 0.42-0.47, Non0 Acc-2 67-70 % against 1.367 / 54.5 % for
predicting the training mean; about 10 s of training on a quiet 2-core machine.

Initialisation (``init: bert``, default): the reference builds the model with ``BertPreTrainedModel.from_pretrained``,
so every non-BERT ``nn.Linear`` and ``nn.LayerNorm`` (private heads, cross-modal transformers, MulT FFNs and output
projections, the fusion encoder's linear layers, the head) is re-initialised by BERT's ``_init_weights``: weights
N(0, 0.02), biases 0, LayerNorm 1 / 0; the Conv1d projections and the packed attention input projections
(MulT's ``in_proj_weight``, Xavier; ``nn.MultiheadAttention``'s, Xavier) are not ``nn.Linear`` and keep their own
initialisation. ``init: bert`` does the same to every module outside the text encoder; ``init: torch`` keeps the
modules' own defaults. (Read from transformers' loading code as pinned, 4.30.2; not verified by running it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .encoders import last_valid
from .mult_layers import MulTEncoder, length_positions
from .text_encoders import build_text_encoder

__all__ = ["MLCL", "CrossModalTransformer", "info_nce", "POOLINGS"]

POOLINGS = ("last_valid", "last_padded")
PAIRS = ("ta", "tv", "av", "at", "vt", "va")  # C_xy: latent x, context y


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """In-batch InfoNCE, one direction: ``CE(norm(q) norm(k)^T / tau, targets = diagonal)``, mean over the batch."""
    logits = F.normalize(query, dim=-1) @ F.normalize(key, dim=-1).transpose(0, 1)
    return F.cross_entropy(logits / temperature, torch.arange(query.shape[0], device=query.device))


class CrossAttention(nn.Module):
    """Perceiver cross-attention: bias-free ``to_q`` and packed ``to_kv``, dropout on the weights, ``to_out``."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, -1).transpose(1, 2)
        k, v = (t.view(b, context.shape[1], h, -1).transpose(1, 2) for t in self.to_kv(context).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLUFeedForward(nn.Module):
    """``Linear(dim, 2 mult dim)`` -> ``a * gelu(g)`` (halves a, g) -> ``Linear(mult dim, dim)`` -> dropout."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * mult * dim)
        self.fc2 = nn.Linear(mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gates = self.fc1(x).chunk(2, dim=-1)
        return self.dropout(self.fc2(a * F.gelu(gates)))


class CrossBlock(nn.Module):
    """``x <- x + attn(LN(x), LN_c(context))``; ``x <- x + ff(LN(x))``."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        # created in the reference's order (attention, its norms, feed-forward, its norm)
        self.attn = CrossAttention(dim, heads, dim_head, dropout)
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ff_mult, dropout)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x), self.norm_context(context))
        return x + self.ff(self.ff_norm(x))


class CrossModalTransformer(nn.Module):
    """MLCL's Perceiver-style ``CrossTransformer``: ``depth`` cross blocks, mean over latent tokens, LayerNorm.

    ``forward(latent, context)`` takes (B, d) vectors (one token each, as MLCL uses it) or (B, N, d) sequences and
    returns (B, d).
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, dim_head, ff_mult, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, latent: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = latent[:, None] if latent.dim() == 2 else latent
        context = context[:, None] if context.dim() == 2 else context
        for block in self.blocks:
            x = block(x, context)
        return self.out_norm(x.mean(dim=1))


def _private_head(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU())


def _bert_init(module: nn.Module) -> None:
    """BERT's ``_init_weights`` on one module: Linear N(0, 0.02) and zero bias; LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_method
class MLCL(Method):
    """MLCL (YetZzzzzz/MLCL@7cc0f25); see the module docstring."""

    name = "mlcl"
    paper = ("Zhuang et al., Multi-Level Contrastive Learning for Multimodal Sentiment Analysis, "
             "IEEE Transactions on Multimedia 27, 2025")
    reference = "YetZzzzzz/MLCL@7cc0f25 MCLC_MSA/MLCL_model.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        d, heads = int(c["d_model"]), int(c["num_heads"])
        if d % heads:
            raise ConfigError(f"mlcl: num_heads ({heads}) must divide d_model ({d})")
        if c["pooling"] not in POOLINGS:
            raise ConfigError(f"mlcl: pooling must be one of {', '.join(POOLINGS)}, got {c['pooling']!r}")
        if c.get("init", "bert") not in ("bert", "torch"):
            raise ConfigError(f"mlcl: init must be 'bert' or 'torch', got {c.get('init')!r}")
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        self.proj_l = nn.Conv1d(self.text_encoder.out_dim, d, kernel_size=3, padding=1, bias=False)
        self.proj_a = nn.Conv1d(int(spec.dims["audio"]), d, kernel_size=3, padding=1, bias=False)
        self.proj_v = nn.Conv1d(int(spec.dims["vision"]), d, kernel_size=3, padding=1, bias=False)
        mult = {"dim": d, "heads": heads, "layers": int(c["layers"]), "attn_dropout": float(c["attn_dropout"]),
                "relu_dropout": float(c["relu_dropout"]), "res_dropout": float(c["res_dropout"]),
                "embed_dropout": float(c["embed_dropout"])}
        self.trans_a = MulTEncoder(**mult)
        self.trans_v = MulTEncoder(**mult)
        rdrop = float(c["rdrop"])
        for m in "tav":
            for k in (1, 2):
                setattr(self, f"private_{m}{k}", _private_head(d, rdrop))
        self.cross = nn.ModuleDict({pair: CrossModalTransformer(
            d, int(c["ct_depth"]), heads, int(c["ct_dim_head"]), int(c["ct_ff_mult"]), float(c["ct_dropout"]))
            for pair in PAIRS})
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=int(c["fusion_ff_dim"]),
                                           dropout=float(c["fusion_dropout"]), activation="relu", batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, num_layers=int(c["fusion_layers"]), enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(6 * d, 3 * d), nn.Dropout(float(c["head_dropout"])), nn.ReLU(),
                                  nn.Linear(3 * d, 1))
        if c.get("init", "bert") == "bert":
            for name, child in self.named_children():
                if name != "text_encoder":
                    child.apply(_bert_init)

    # ------------------------------------------------------------------ encoders
    @property
    def published_pooling(self) -> bool:
        return self.config["pooling"] == "last_padded"

    @staticmethod
    def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def _pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return x[:, -1] if self.published_pooling else last_valid(x, lengths)

    def encode_text(self, batch: Batch) -> torch.Tensor:
        """(B, d): the Conv1d output at the last valid token ([SEP]), or at index L - 1 (published)."""
        tokens = self.text_encoder(batch)
        if self.published_pooling:
            return self._conv(self.proj_l, tokens)[:, -1]
        mask = batch.text_mask[:, :tokens.shape[1]]
        lengths = mask.sum(dim=1)
        tokens = tokens * (mask > 0)[..., None].to(tokens.dtype)
        return last_valid(self._conv(self.proj_l, tokens), lengths)

    def encode_sequence(self, conv: nn.Conv1d, encoder: MulTEncoder, x: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
        """(B, d): Conv1d, MulT encoder, then the last valid frame (or index L - 1, published)."""
        b, n = x.shape[:2]
        if self.published_pooling:
            return encoder(self._conv(conv, x), select=torch.full((b,), n - 1, device=x.device))
        steps = torch.arange(n, device=x.device)[None, :]
        valid = steps < lengths[:, None]
        h = self._conv(conv, x * valid[..., None].to(x.dtype))
        # an absent modality (length 0) is one all-zero step without a position: never an all-masked row
        readable = lengths.clamp(min=1)
        return encoder(h, positions=length_positions(lengths, n), key_padding_mask=steps >= readable[:, None],
                       select=readable - 1)

    #: Conv1d (+ MulT encoder) per modality, pooled to one step: each reads one modality. The private heads come
    #: after them in :meth:`forward_encoded` (their dropout draws follow all three encoders in training).
    unimodal_encoders = ("text", "audio", "vision")

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """``h_t``, ``h_a`` or ``h_v`` (B, d): :meth:`encode_text` or :meth:`encode_sequence`."""
        if modality == "text":
            return self.encode_text(batch)
        if modality == "audio":
            return self.encode_sequence(self.proj_a, self.trans_a, batch.audio, batch.audio_lengths)
        if modality == "vision":
            return self.encode_sequence(self.proj_v, self.trans_v, batch.vision, batch.vision_lengths)
        raise ValueError(f"mlcl: unknown modality {modality!r}")

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> Output:
        # text, audio, vision: the reference's order (the same dropout draws in training)
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in ("text", "audio", "vision")})

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        h_t, h_a, h_v = encoded["text"], encoded["audio"], encoded["vision"]
        t1, a1, v1 = self.private_t1(h_t), self.private_a1(h_a), self.private_v1(h_v)
        first = {"t": t1, "a": a1, "v": v1}
        cross = {pair: self.cross[pair](first[pair[0]], first[pair[1]])
                 for pair in (PAIRS if self.training else PAIRS[:3])}
        tokens = torch.stack([t1, a1, v1, cross["ta"], cross["tv"], cross["av"]], dim=1)
        pred = self.head(self.fusion(tokens).flatten(1)).squeeze(-1)
        if not self.training:
            return Output(pred=pred)
        tau = float(self.config["temperature"])
        t2, a2, v2 = self.private_t2(h_t), self.private_a2(h_a), self.private_v2(h_v)
        aux = {
            "umcl": info_nce(t1, t2, tau) + info_nce(a1, a2, tau) + info_nce(v1, v2, tau),
            "tmcl": info_nce(v1, cross["ta"], tau) + info_nce(a1, cross["tv"], tau) + info_nce(t1, cross["av"], tau),
            "bmcl": (info_nce(cross["ta"], cross["at"], tau) + info_nce(cross["tv"], cross["vt"], tau)
                     + info_nce(cross["av"], cross["va"], tau)),
        }
        return Output(pred=pred, aux_losses=aux)

    # ------------------------------------------------------------------ training
    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """``train_criterion`` (L1) + alpha L_U / 3 + beta L_T / 3 + gamma L_B / 3 (the aux losses, when present)."""
        kind = self.config.get("train_criterion", "l1")
        if kind == "l1":
            main = F.l1_loss(output.pred, batch.labels)
        elif kind == "mse":
            main = F.mse_loss(output.pred, batch.labels)
        else:
            raise ConfigError(f"mlcl: train_criterion must be 'l1' or 'mse', got {kind!r}")
        total, parts = main, {"criterion": float(main.detach())}
        weights = {"umcl": "alpha", "tmcl": "beta", "bmcl": "gamma"}
        for key, value in output.aux_losses.items():
            total = total + float(self.config[weights[key]]) / 3.0 * value
            parts[key] = float(value.detach())
        return total, parts

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        """One Adam over every parameter (lr 2e-5, no weight decay, as published); no schedule."""
        optimizer = torch.optim.Adam(self.parameters(), lr=float(self.config["lr"]),
                                     weight_decay=float(self.config.get("weight_decay", 0.0)))
        return [optimizer], []
