"""ALMT: Adaptive Language-guided Multimodal Transformer.

Paper: Zhang et al., "Learning Language-guided Adaptive Hyper-modality Representation for Multimodal
Sentiment Analysis", EMNLP 2023 (arXiv 2310.05804). Reference: ``Haoyu-ha/ALMT@da94610`` (MIT):
``models/almt.py``, ``models/almt_layer.py``, ``core/scheduler.py``, ``train.py``,
``configs/{mosi,mosei,sims}.yaml``; hyper-parameters in ``almt.yaml`` beside this file. Written from the
reference's behaviour, not copied from it. Details and decisions: ``docs/methods.md``.

Architecture (all widths ``token_dim`` = 128):

1. per modality ``m``: ``Linear(d_m, 128)``, then a :class:`~robustmsa.methods.layers.TokenTransformer`:
   8 zero-initialised tokens prepended, a ``randn`` positional table of ``L_m + 8`` positions, depth 1,
   heads 8, dim_head 64, mlp 128 (pre-LN, separate LayerNorms on q, k, v, GELU, dropout 0, **no padding
   mask**); the 8 token outputs are kept: ``h_l``, ``h_a``, ``h_v`` (B, 8, 128);
2. language encoder over ``h_l`` (8 positions, no extra tokens), depth ``AHL_depth - 1``, returning
   ``[h_l, layer 1, layer 2]``;
3. adaptive hyper-modality learning: ``h_hyper`` = ``ones(1, 8, 128)`` (learned); layer ``i`` LayerNorms
   ``h_t = hidden[i]``, ``h_a``, ``h_v`` and ``h_hyper``, attends ``q = h_t`` to audio and to vision (own
   K/V projections, heads 8, dim_head 16) and sets ``h_hyper <- LN(h_hyper) + Linear(out_ta + out_tv)``
   (the residual is on the normalised tensor, as published);
4. fusion: :class:`~robustmsa.methods.layers.CrossTransformer` (source ``h_hyper``, target the last text
   state, a zero CLS token and an own 9-position table each; depth 2 on MOSI, 4 on MOSEI / SIMS);
5. ``Linear(128, 1)`` on the CLS output.

The text backbone is ``build_text_encoder(config['text_backbone'])`` (default ``features``: the pickle's
precomputed token features; the reference fine-tunes BERT, as ``hf:PATH`` does on a local checkpoint), stored
as ``self.text_encoder`` so that parameter counts exclude it. Positional tables are sized by
``l/a/v_input_length`` (default: the data's padded lengths); shorter inputs use the first positions, longer
ones raise :class:`~robustmsa.methods.layers.SequenceTooLongError`.

Speed (the same function, less work; ``bench/bench_almt_throughput.py``): attention through
``scaled_dot_product_attention``; the projection transformers compute only the 8 token query rows in their
last layer and the fusion only the CLS row, since no other row reaches the output; where keys and values
come from one input and outnumber the queries, attention runs in the 128-wide input space instead of
projecting every frame to 512-wide keys and values (``PreNormAttention._key_space`` in ``layers.py``; exact
algebra). Outputs equal the reference's to float rounding (``tests/test_almt.py``, a fixture made by the
reference code).

Training as the reference: MSE, one AdamW group (lr 1e-4, weight decay 1e-4, BERT included when
fine-tuned), no gradient clipping, and the reference's per-epoch warm-up + cosine schedule reproduced step
for step by :class:`WarmupCosine` (epoch 1 trains at lr 0, as in the reference; see its docstring).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .layers import CrossTransformer, SequenceTooLongError, TokenTransformer, merge_heads, split_heads
from .text_encoders import HFText, build_text_encoder

__all__ = ["ALMT", "HyperModalityLayer", "HyperModalityEncoder", "ModalityProjector", "WarmupCosine",
           "REFERENCE_KEY_RULES", "reference_key_map", "load_reference_state_dict", "ReferenceLoadReport",
           "SequenceTooLongError"]


# ------------------------------------------------------------------------------------------ blocks
class ModalityProjector(nn.Module):
    """``Linear(d_in, dim)``, then a token transformer; returns the token outputs (B, token_len, dim)."""

    def __init__(self, in_dim: int, *, num_frames: int, token_len: int, dim: int, depth: int, heads: int,
                 dim_head: int, mlp_dim: int, name: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.transformer = TokenTransformer(num_frames=num_frames, token_len=token_len, dim=dim, depth=depth,
                                            heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, name=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.linear(x), keep_first=self.transformer.token_len)


class HyperModalityLayer(nn.Module):
    """One adaptive hyper-modality learning layer (the reference's ``PreNormAHL(HhyperLearningLayer)``).

    ``h_hyper <- LN(h_hyper) + dropout(to_out(Attn(LN(h_t), LN(h_a)) + Attn(LN(h_t), LN(h_v))))``, one
    query projection, separate key/value projections per modality.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        # created in the reference's order, so that a seed gives the reference's initial weights
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k_ta = nn.Linear(dim, inner, bias=False)
        self.to_k_tv = nn.Linear(dim, inner, bias=False)
        self.to_v_ta = nn.Linear(dim, inner, bias=False)
        self.to_v_tv = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Identity() if (heads == 1 and dim_head == dim) else nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm_t = nn.LayerNorm(dim)
        self.norm_a = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.norm_hyper = nn.LayerNorm(dim)

    def forward(self, h_t: torch.Tensor, h_a: torch.Tensor, h_v: torch.Tensor,
                h_hyper: torch.Tensor) -> torch.Tensor:
        h = self.heads
        h_a, h_v = self.norm_a(h_a), self.norm_v(h_v)
        q = split_heads(self.to_q(self.norm_t(h_t)), h)
        out_ta = F.scaled_dot_product_attention(q, split_heads(self.to_k_ta(h_a), h),
                                                split_heads(self.to_v_ta(h_a), h))
        out_tv = F.scaled_dot_product_attention(q, split_heads(self.to_k_tv(h_v), h),
                                                split_heads(self.to_v_tv(h_v), h))
        return self.norm_hyper(h_hyper) + self.dropout(self.to_out(merge_heads(out_ta + out_tv)))


class HyperModalityEncoder(nn.Module):
    """``depth`` :class:`HyperModalityLayer`; layer ``i`` reads the ``i``-th text hidden state."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HyperModalityLayer(dim, heads, dim_head, dropout) for _ in range(depth))

    def forward(self, h_t_list: list[torch.Tensor], h_a: torch.Tensor, h_v: torch.Tensor,
                h_hyper: torch.Tensor) -> torch.Tensor:
        if len(h_t_list) < len(self.layers):
            raise ValueError(f"hyper-modality encoder: {len(self.layers)} layers need as many text states, "
                             f"got {len(h_t_list)}")
        for layer, h_t in zip(self.layers, h_t_list):
            h_hyper = layer(h_t, h_a, h_v, h_hyper)
        return h_hyper


# ------------------------------------------------------------------------------------------ schedule
class WarmupCosine:
    """The reference's per-epoch lr factor, as a ``LambdaLR`` lambda of the number ``k`` of ``step()`` calls.

    The reference (``core/scheduler.py``, ``train.py``) builds ``CosineAnnealingLR(T_max = 0.9 E)``, wraps it
    in ``GradualWarmupScheduler(multiplier=1, total_epoch = W = 0.1 E)``, steps it once after every epoch, and
    so trains epoch ``e`` (1-based) with the lr set after ``k = e - 1`` steps. Running that code gives, with
    ``k0 = floor(W) + 1`` (the first step count above ``W``):

    - ``k <= W``: ``base * k / W``. So **epoch 1 trains at lr 0**: the warm-up scheduler's constructor already
      applies ``k = 0``. AdamW then leaves the weights unchanged, but its moment estimates and step count
      advance over that epoch and shape every later update, so the epoch is kept, not skipped;
    - ``k = k0``: ``base`` (the cosine scheduler's stored initial lr; so two epochs run at the peak when ``W``
      is integral: ``k = W`` and ``k = W + 1``);
    - ``k > k0``: ``base * (1 + cos(pi * (k - k0) / T_max)) / 2`` (cosine annealing, ``eta_min`` 0).

    E = 200: epochs 1-21 at 0, 5e-6, ..., 1e-4; epoch 22 at 1e-4; epoch 23 at 9.99924e-5; epoch 200 at
    ``base * (1 + cos(178 pi / 180)) / 2`` = 3.05e-8. ``W`` and ``T_max`` are the reference's float products
    (``0.1 * 30`` is 3.0000000000000004, so ``k0`` is 4 for E = 30). ``warmup_fraction`` 0 (where the
    reference would divide by zero) means plain cosine from ``base``.
    """

    def __init__(self, epochs: int, warmup_fraction: float = 0.1) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"almt: warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
        if epochs < 1:
            raise ConfigError(f"almt: epochs must be >= 1, got {epochs!r}")
        self.warmup = warmup_fraction * epochs
        self.t_max = (1.0 - warmup_fraction) * epochs
        self.first_cosine = math.floor(self.warmup) + 1 if self.warmup > 0 else 0

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step <= self.warmup:
            return step / self.warmup
        return (1.0 + math.cos(math.pi * (step - self.first_cosine) / self.t_max)) / 2.0


# ------------------------------------------------------------------------------------------ model
def _input_length(config: Mapping[str, Any], key: str, spec: DatasetSpec, modality: str) -> int:
    value = config.get(key)
    if value is None:
        return int(spec.seq_lens[modality])
    if int(value) < 1:
        raise ConfigError(f"almt: {key} must be a positive length or null (= the data's), got {value!r}")
    return int(value)


@register_method
class ALMT(Method):
    """ALMT (Haoyu-ha/ALMT@da94610); see the module docstring."""

    name = "almt"
    paper = ("Zhang et al., Learning Language-guided Adaptive Hyper-modality Representation for Multimodal "
             "Sentiment Analysis, EMNLP 2023")
    reference = "Haoyu-ha/ALMT@da94610 models/almt.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        dim, tokens = int(c["token_dim"]), int(c["token_len"])
        self.lengths = {"text": _input_length(c, "l_input_length", spec, "text"),
                        "audio": _input_length(c, "a_input_length", spec, "audio"),
                        "vision": _input_length(c, "v_input_length", spec, "vision")}
        # created in the reference's order (h_hyper, text, proj_l/a/v, l_encoder, AHL, fusion, head)
        self.h_hyper = nn.Parameter(torch.ones(1, tokens, dim))
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        proj = {"token_len": tokens, "dim": dim, "depth": int(c["proj_depth"]), "heads": int(c["proj_heads"]),
                "dim_head": int(c["proj_dim_head"]), "mlp_dim": int(c["proj_mlp_dim"])}
        self.proj_l = ModalityProjector(self.text_encoder.out_dim, num_frames=self.lengths["text"],
                                        name="text", **proj)
        self.proj_a = ModalityProjector(int(spec.dims["audio"]), num_frames=self.lengths["audio"],
                                        name="audio", **proj)
        self.proj_v = ModalityProjector(int(spec.dims["vision"]), num_frames=self.lengths["vision"],
                                        name="vision", **proj)
        ahl_depth = int(c["AHL_depth"])
        if ahl_depth < 1:
            raise ConfigError(f"almt: AHL_depth must be >= 1, got {ahl_depth}")
        self.l_encoder = TokenTransformer(num_frames=tokens, token_len=None, dim=dim, depth=ahl_depth - 1,
                                          heads=int(c["l_enc_heads"]), dim_head=int(c["l_enc_dim_head"]),
                                          mlp_dim=int(c["l_enc_mlp_dim"]), name="language encoder")
        self.h_hyper_layer = HyperModalityEncoder(dim, ahl_depth, int(c["ahl_heads"]), int(c["ahl_dim_head"]),
                                                  float(c.get("ahl_dropout", 0.0)))
        self.fusion_layer = CrossTransformer(source_num_frames=tokens, tgt_num_frames=tokens, dim=dim,
                                             depth=int(c["fusion_layer_depth"]), heads=int(c["fusion_heads"]),
                                             dim_head=int(c["fusion_dim_head"]),
                                             mlp_dim=int(c["fusion_mlp_dim"]))
        self.head = nn.Linear(dim, 1)

    def _checked(self, x: torch.Tensor, modality: str, key: str) -> torch.Tensor:
        n, capacity = x.shape[1], self.lengths[modality]
        if n > capacity:
            raise SequenceTooLongError(
                f"almt: {modality} input has length {n} but the model was built for at most {capacity} "
                f"({key}={capacity}; its positional embedding has {capacity} positions). Crop the input to "
                f"{capacity} or build the model with {key}={n}.")
        return x

    unimodal_encoders = ("text", "audio", "vision")

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """Projected tokens of one modality: the text backbone then ``proj_l``, or ``proj_a`` / ``proj_v``."""
        if modality == "text":
            return self.proj_l(self._checked(self.text_encoder(batch), "text", "l_input_length"))
        if modality == "audio":
            return self.proj_a(self._checked(batch.audio, "audio", "a_input_length"))
        if modality == "vision":
            return self.proj_v(self._checked(batch.vision, "vision", "v_input_length"))
        raise ValueError(f"almt: unknown modality {modality!r}")

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        h_l, h_a, h_v = encoded["text"], encoded["audio"], encoded["vision"]
        h_t_list = self.l_encoder(h_l, save_hidden=True)
        h_hyper = self.h_hyper_layer(h_t_list, h_a, h_v, self.h_hyper.expand(h_l.shape[0], -1, -1))
        cls = self.fusion_layer(h_hyper, h_t_list[-1], keep_first=1)[:, 0]
        return Output(pred=self.head(cls).squeeze(-1))

    def forward(self, batch: Batch) -> Output:
        # the reference runs the text backbone, then proj_v, proj_a, proj_l; the projectors have no dropout,
        # so this order draws the same random numbers (it matters for a fine-tuned BERT's dropout)
        encoded = {m: self.encode_modality(batch, m) for m in ("text", "vision", "audio")}
        return self.forward_encoded(batch, encoded)

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        """One AdamW group over every parameter; the reference's warm-up + cosine, stepped once per epoch."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=float(self.config["lr"]),
                                      weight_decay=float(self.config["weight_decay"]))
        schedule = WarmupCosine(int(epochs), float(self.config.get("warmup_fraction", 0.1)))
        return [optimizer], [torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)]

    @classmethod
    def from_reference_checkpoint(cls, spec: DatasetSpec, state_dict: Mapping[str, torch.Tensor] | str | Path,
                                  **overrides: Any) -> ALMT:
        """A model for ``spec`` (configured as by ``create_method``) with a reference checkpoint loaded."""
        from .base import create_method

        model = create_method(cls.name, spec, **overrides)
        load_reference_state_dict(model, state_dict)
        return model


# ------------------------------------------------------------------------------------------ reference weights
# The documented name mapping, reference state-dict key -> ours, as (regex matched against the whole key,
# ``re`` replacement) pairs; the first full match wins. In each transformer block the reference has
# ``layers.N.0`` = PreNormAttention(Attention) and ``layers.N.1`` = PreNormForward(FeedForward).
_ENCODERS = (  # reference encoder prefix -> ours
    (r"(?P<m>proj_[lav])\.1\.encoder", r"\g<m>.transformer.encoder"),
    (r"l_encoder\.encoder", "l_encoder.encoder"),
    (r"fusion_layer\.CrossTransformerEncoder", "fusion_layer.encoder"),
)
_BLOCK_PARTS = (  # inside one block, after ``layers.N.``: reference -> ours
    (r"0\.norm_(?P<x>q|k|v)\.(?P<p>weight|bias)", r"attn.norm_\g<x>.\g<p>"),
    (r"0\.fn\.to_(?P<x>q|k|v)\.(?P<p>weight)", r"attn.attention.to_\g<x>.\g<p>"),
    (r"0\.fn\.to_out\.0\.(?P<p>weight|bias)", r"attn.attention.to_out.\g<p>"),
    (r"1\.norm\.(?P<p>weight|bias)", r"ff.norm.\g<p>"),
    (r"1\.fn\.net\.0\.(?P<p>weight|bias)", r"ff.fc1.\g<p>"),
    (r"1\.fn\.net\.3\.(?P<p>weight|bias)", r"ff.fc2.\g<p>"),
)
_AHL, _OUR_AHL = r"h_hyper_layer\.layers\.(?P<i>\d+)\.0", r"h_hyper_layer.layers.\g<i>"

#: (reference key regex, our key replacement) pairs; see :func:`reference_key_map`.
REFERENCE_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"h_hyper", "h_hyper"),
    (r"(?P<m>proj_[lav])\.0\.(?P<p>weight|bias)", r"\g<m>.linear.\g<p>"),
    (r"(?P<m>proj_[lav])\.1\.(?P<p>pos_embedding|extra_token)", r"\g<m>.transformer.\g<p>"),
    (r"l_encoder\.pos_embedding", "l_encoder.pos_embedding"),
    *((rf"{ref}\.layers\.(?P<n>\d+)\.{part}", rf"{ours}.layers.\g<n>.{our_part}")
      for ref, ours in _ENCODERS for part, our_part in _BLOCK_PARTS),
    (rf"{_AHL}\.norm1\.(?P<p>weight|bias)", rf"{_OUR_AHL}.norm_t.\g<p>"),
    (rf"{_AHL}\.norm2\.(?P<p>weight|bias)", rf"{_OUR_AHL}.norm_a.\g<p>"),
    (rf"{_AHL}\.norm3\.(?P<p>weight|bias)", rf"{_OUR_AHL}.norm_v.\g<p>"),
    (rf"{_AHL}\.norm4\.(?P<p>weight|bias)", rf"{_OUR_AHL}.norm_hyper.\g<p>"),
    (rf"{_AHL}\.fn\.(?P<x>to_q|to_k_ta|to_k_tv|to_v_ta|to_v_tv)\.weight", rf"{_OUR_AHL}.\g<x>.weight"),
    (rf"{_AHL}\.fn\.to_out\.0\.(?P<p>weight|bias)", rf"{_OUR_AHL}.to_out.\g<p>"),
    (r"fusion_layer\.(?P<p>pos_embedding_s|pos_embedding_t|extra_token)", r"fusion_layer.\g<p>"),
    (r"regression_layer\.0\.(?P<p>weight|bias)", r"head.\g<p>"),
    (r"bertmodel\.model\.(?P<rest>.+)", r"text_encoder.model.\g<rest>"),
)
_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in REFERENCE_KEY_RULES)


def reference_key_map(key: str) -> str | None:
    """Our name for the reference ``models/almt.py:ALMT`` state-dict ``key`` (None: no rule matches).

    BERT keys (``bertmodel.model.*``) map to ``text_encoder.model.*`` (an ``hf:`` backbone); a ``module.``
    prefix (``DataParallel``) is ignored. Examples: ``proj_a.1.encoder.layers.0.0.fn.to_q.weight`` ->
    ``proj_a.transformer.encoder.layers.0.attn.attention.to_q.weight``;
    ``h_hyper_layer.layers.2.0.norm4.bias`` -> ``h_hyper_layer.layers.2.norm_hyper.bias``;
    ``regression_layer.0.weight`` -> ``head.weight``.
    """
    key = key.removeprefix("module.")
    for pattern, replacement in _COMPILED:
        match = pattern.fullmatch(key)
        if match is not None:
            return match.expand(replacement)
    return None


@dataclass
class ReferenceLoadReport:
    """What :func:`load_reference_state_dict` did: our keys loaded, reference keys skipped, and why."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    message: str = ""


def load_reference_state_dict(model: ALMT,
                              state_dict: Mapping[str, torch.Tensor] | str | Path) -> ReferenceLoadReport:
    """Load a reference ALMT ``state_dict`` (or a file of ``torch.save(model.state_dict())``) into ``model``.

    Keys are renamed by :func:`reference_key_map`. BERT keys go into an ``hf:`` text encoder; with any other
    backbone they are skipped and reported (a ``UserWarning`` and ``report.skipped``). An old checkpoint's
    ``embeddings.position_ids`` buffer is skipped when the encoder does not keep it. Reference keys without a
    rule or a target, keys of the model the checkpoint lacks (a non-``hf:`` text encoder's own weights
    excepted), and shape mismatches raise ``KeyError`` / ``ValueError`` listing every offending key.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = torch.load(str(state_dict), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    hf_text = isinstance(model.text_encoder, HFText)
    report = ReferenceLoadReport()
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        target = reference_key_map(key)
        if target is not None and target.startswith("text_encoder.model."):
            if not hf_text or (target not in ours and target.endswith("embeddings.position_ids")):
                report.skipped.append(key)
                continue
        if target is None or target not in ours:
            unknown.append(key if target is None else f"{key} (-> {target}, which this model lacks)")
            continue
        mapped[target] = value
    if unknown:
        raise KeyError(f"almt: {len(unknown)} reference key(s) cannot be mapped: {', '.join(unknown)}")
    missing = [key for key in ours
               if key not in mapped and (hf_text or not key.startswith("text_encoder."))]
    if missing:
        raise KeyError(f"almt: the reference state dict lacks {len(missing)} key(s) of this model: "
                       f"{', '.join(missing)}")
    wrong = [f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[key].shape)}"
             for key, value in mapped.items() if tuple(value.shape) != tuple(ours[key].shape)]
    if wrong:
        raise ValueError("almt: shape mismatch (another dataset, input length or config?): "
                         + "; ".join(wrong))
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    if report.skipped and hf_text:  # only a stale position_ids buffer: nothing to warn about
        report.message = "almt: skipped embeddings.position_ids (the hf: encoder does not keep it)"
    elif report.skipped:
        report.message = (f"almt: skipped {len(report.skipped)} BERT key(s) (bertmodel.model.*): the text "
                          f"backbone is {model.text_encoder.kind!r}, not an hf: encoder, so the model reads "
                          f"its text from that backbone instead")
        warnings.warn(report.message, UserWarning, stacklevel=2)
    return report
