"""LNLN: Language-dominated Noise-resistant Learning Network.

Paper: Zhang, Wang and Yu, "Towards Robust Multimodal Sentiment Analysis with Incomplete Data", NeurIPS 2024 (arXiv
2409.20012). Reference: ``Haoyu-ha/LNLN@80a052c`` (MIT): ``models/lnln.py``, ``models/basic_layers.py``,
``core/losses.py``, ``core/dataset.py``, ``train.py``, ``configs/train_{mosi,mosei,sims}.yaml``; hyper-parameters
in ``lnln.yaml`` beside this file. Written from the reference's behaviour, not copied from it; ALMT's blocks are
reused from :mod:`robustmsa.methods.almt` and :mod:`robustmsa.methods.layers`. Details: ``docs/methods.md``.

Architecture (all widths ``token_dim`` = 128; ``T`` = ``token_len`` = 8):

1. feature extraction per modality (ALMT's projector, depth **2**): ``h_l``, ``h_a``, ``h_v`` (B, T, 128) from
   the (corrupted) input;
2. dominant modality correction (DMC):
   - completeness check: a token transformer (1 extra token, depth 2) over ``h_l``, its token through
     ``Linear(128, 64) -> LeakyReLU(0.1) -> Linear(64, 1) -> sigmoid``: ``w`` (B, 1), trained towards the
     completeness of the text, ``1 - missing rate``;
   - proxy dominant feature generator: a token transformer (T extra tokens, depth 2) over ``[h_p, h_a, h_v]``
     (``h_p`` = ``ones(1, T, 128)``, learned; 3T frames), its T token outputs ``h_p'``;
   - dominant feature ``h_d = h_p' (1 - w) + h_l w``;
   - effectiveness discriminator ``Linear(128, 64) -> LeakyReLU(0.1) -> Linear(64, 2)`` on every token of
     ``h_d`` (label 1) and of the clean text projection (label 0), behind a gradient-reversal layer on ``h_p'``;
   - three reconstructors (token transformers without extra tokens, depth 2) map ``h_a``, ``h_v``, ``h_l`` to
     the projections of the clean twin;
3. dominant-modality-based multimodal learning (ALMT's DMML): language encoder over ``h_d`` (depth 2, every
   hidden state), adaptive hyper-modality learning (depth 3, dim_head 16), cross-transformer fusion (depth 2
   MOSI, 4 MOSEI / SIMS);
4. ``Linear(128, 1)`` on the **mean of the fused non-CLS tokens** (the reference's choice; ALMT reads the CLS).

Loss (``core/losses.py``): ``sigma MSE(pred, y) + alpha MSE(w, 1 - r_text) + beta CE(disc) + gamma MSE(rec,
clean)`` with (alpha, beta, gamma, sigma) = (0.9, 0.8, 0.1, 1.0), beta 0.6 on SIMS. The auxiliary terms need the
clean twin and the missing rates of each training sample: LNLN asks the engine for paired batches
(``wants_paired_batches``; keys in :mod:`robustmsa.engine.batches`) and trains with LNLN's noise by default
(``train_noise: random_missing`` in ``lnln.yaml``). Without a twin (validation, test, any plain batch) the model
predicts from its input alone and returns no auxiliary loss.

Repairs and decisions (``docs/methods.md``): the gradient reversal applies to the discriminator's input only
(``grl_scope: discriminator``; the published code also reverses the sentiment gradient into the generator:
``grl_scope: all``); the completeness target is the realised text missing fraction (``completeness_target:
realised``; LNLN's drawn rate: ``drawn``); train masks are re-drawn every epoch (engine); selection on the clean
validation loss.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from ..engine.batches import clean_twin
from .almt import HyperModalityEncoder, ModalityProjector, WarmupCosine
from .base import Batch, ConfigError, Method, Output, register_method
from .layers import CrossTransformer, SequenceTooLongError, TokenTransformer
from .text_encoders import HFText, build_text_encoder

__all__ = ["LNLN", "GradientReversal", "grad_reverse", "GRL_SCOPES", "COMPLETENESS_TARGETS"]

GRL_SCOPES = ("discriminator", "all")
COMPLETENESS_TARGETS = ("realised", "drawn")
_MODALITY_FIELDS = {"text": ("text", "text_ids", "text_mask", "text_segments"), "audio": ("audio", "audio_lengths"),
                    "vision": ("vision", "vision_lengths")}


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``-alpha`` backward (Ganin and Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * -ctx.alpha, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``x`` forward; ``-alpha`` times the incoming gradient backward."""
    return GradientReversal.apply(x, alpha)


def _input_length(config: Mapping[str, Any], key: str, spec: DatasetSpec, modality: str) -> int:
    value = config.get(key)
    if value is None:
        return int(spec.seq_lens[modality])
    if int(value) < 1:
        raise ConfigError(f"lnln: {key} must be a positive length or null (= the data's), got {value!r}")
    return int(value)


def _choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = config.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"lnln: {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


@register_method
class LNLN(Method):
    """LNLN (Haoyu-ha/LNLN@80a052c); see the module docstring."""

    name = "lnln"
    paper = "Zhang et al., Towards Robust Multimodal Sentiment Analysis with Incomplete Data, NeurIPS 2024"
    reference = "Haoyu-ha/LNLN@80a052c models/lnln.py"
    wants_paired_batches = True
    unimodal_encoders = ("text", "audio", "vision")

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        dim, tokens = int(c["token_dim"]), int(c["token_len"])
        self.tokens = tokens
        self.grl_scope = _choice(c, "grl_scope", GRL_SCOPES)
        self.completeness_target = _choice(c, "completeness_target", COMPLETENESS_TARGETS)
        self.lengths = {"text": _input_length(c, "l_input_length", spec, "text"),
                        "audio": _input_length(c, "a_input_length", spec, "audio"),
                        "vision": _input_length(c, "v_input_length", spec, "vision")}
        if int(c["ahl_depth"]) > int(c["l_enc_depth"]) + 1:
            raise ConfigError(f"lnln: ahl_depth ({c['ahl_depth']}) needs as many language states, at most "
                              f"l_enc_depth + 1 = {int(c['l_enc_depth']) + 1}")

        def block(prefix: str, num_frames: int, token_len: int | None, name: str) -> TokenTransformer:
            return TokenTransformer(num_frames=num_frames, token_len=token_len, dim=dim,
                                    depth=int(c[f"{prefix}_depth"]), heads=int(c[f"{prefix}_heads"]),
                                    dim_head=int(c[f"{prefix}_dim_head"]), mlp_dim=int(c[f"{prefix}_mlp_dim"]),
                                    name=name)

        # created in the reference's order (models/lnln.py:LNLN.__init__), so that a seed gives its initial weights
        self.h_hyper = nn.Parameter(torch.ones(1, tokens, dim))
        self.h_p = nn.Parameter(torch.ones(1, tokens, dim))
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
        self.generator = block("gen", 3 * tokens, tokens, "proxy dominant feature generator")
        disc_hidden = int(c["disc_hidden"])
        self.discriminator = nn.Sequential(nn.Linear(dim, disc_hidden), nn.LeakyReLU(0.1),
                                           nn.Linear(disc_hidden, 2))
        self.completeness_encoder = block("cc", tokens, 1, "completeness check")
        cc_hidden = int(c["cc_hidden"])
        self.completeness_head = nn.Sequential(nn.Linear(dim, cc_hidden), nn.LeakyReLU(0.1),
                                               nn.Linear(cc_hidden, 1), nn.Sigmoid())
        # reconstructors of audio, vision, text (the reference's reconstructor[0], [1], [2])
        self.reconstructors = nn.ModuleList(block("rec", tokens, None, f"{m} reconstructor")
                                            for m in ("audio", "vision", "text"))
        self.l_encoder = block("l_enc", tokens, None, "language encoder")
        self.h_hyper_layer = HyperModalityEncoder(dim, int(c["ahl_depth"]), int(c["ahl_heads"]),
                                                  int(c["ahl_dim_head"]), float(c.get("ahl_dropout", 0.0)))
        self.fusion_layer = CrossTransformer(source_num_frames=tokens, tgt_num_frames=tokens, dim=dim,
                                             depth=int(c["fusion_layer_depth"]), heads=int(c["fusion_heads"]),
                                             dim_head=int(c["fusion_dim_head"]),
                                             mlp_dim=int(c["fusion_mlp_dim"]))
        self.head = nn.Linear(dim, 1)

    # ------------------------------------------------------------------ encoders
    def _checked(self, x: torch.Tensor, modality: str, key: str) -> torch.Tensor:
        n, capacity = x.shape[1], self.lengths[modality]
        if n > capacity:
            raise SequenceTooLongError(
                f"lnln: {modality} input has length {n} but the model was built for at most {capacity} "
                f"({key}={capacity}). Crop the input to {capacity} or build the model with {key}={n}.")
        return x

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The T projected tokens of one modality (the text backbone then ``proj_l``; ``proj_a``; ``proj_v``)."""
        if modality == "text":
            return self.proj_l(self._checked(self.text_encoder(batch), "text", "l_input_length"))
        if modality == "audio":
            return self.proj_a(self._checked(batch.audio, "audio", "a_input_length"))
        if modality == "vision":
            return self.proj_v(self._checked(batch.vision, "vision", "v_input_length"))
        raise ValueError(f"lnln: unknown modality {modality!r}")

    # ------------------------------------------------------------------ stages
    def completeness(self, h_l: torch.Tensor) -> torch.Tensor:
        """Completeness score ``w`` (B, 1) of the text tokens."""
        return self.completeness_head(self.completeness_encoder(h_l, keep_first=1)[:, 0])

    def proxy(self, h_a: torch.Tensor, h_v: torch.Tensor) -> torch.Tensor:
        """The proxy dominant feature (B, T, dim) from audio and vision (before gradient reversal)."""
        h_p = self.h_p.expand(h_a.shape[0], -1, -1)
        return self.generator(torch.cat((h_p, h_a, h_v), dim=1), keep_first=self.tokens)

    @staticmethod
    def dominant(h_p: torch.Tensor, h_l: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``h_p (1 - w) + h_l w`` with ``w`` (B, 1) broadcast over tokens and features."""
        w = w.unsqueeze(-1)
        return h_p * (1 - w) + h_l * w

    def predict_from(self, h_d: torch.Tensor, h_a: torch.Tensor, h_v: torch.Tensor) -> torch.Tensor:
        """DMML and the head: predictions (B,) from the dominant, audio and vision tokens."""
        hidden = self.l_encoder(h_d, save_hidden=True)
        h_hyper = self.h_hyper_layer(hidden, h_a, h_v, self.h_hyper.expand(h_d.shape[0], -1, -1))
        fused = self.fusion_layer(h_hyper, hidden[-1])
        return self.head(fused[:, 1:].mean(dim=1)).squeeze(-1)

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        h_l, h_a, h_v = encoded["text"], encoded["audio"], encoded["vision"]
        w = self.completeness(h_l)
        h_p = self.proxy(h_a, h_v)
        alpha = float(self.config.get("grl_alpha", 1.0))
        # published: the reversed proxy feeds the discriminator *and* the prediction; repaired: the discriminator only
        h_d = self.dominant(grad_reverse(h_p, alpha) if self.grl_scope == "all" else h_p, h_l, w)
        output = Output(pred=self.predict_from(h_d, h_a, h_v))
        clean = clean_twin(batch)
        if clean is not None:
            h_d_adv = h_d if self.grl_scope == "all" else self.dominant(grad_reverse(h_p, alpha), h_l, w)
            output.aux_losses = self._auxiliary_losses(batch, clean, h_l, h_a, h_v, w, h_d_adv)
        return output

    def forward(self, batch: Batch) -> Output:
        # the reference projects vision, audio, then text (models/lnln.py:forward); no dropout in the projectors
        encoded = {m: self.encode_modality(batch, m) for m in ("vision", "audio", "text")}
        return self.forward_encoded(batch, encoded)

    def _auxiliary_losses(self, batch: Batch, clean: Batch, h_l: torch.Tensor, h_a: torch.Tensor,
                          h_v: torch.Tensor, w: torch.Tensor, h_d_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_cc, L_adv, L_rec of a paired training batch (``core/losses.py``)."""
        rec_a, rec_v, rec_l = (module(h) for module, h in zip(self.reconstructors, (h_a, h_v, h_l)))
        # the clean twin's projections: targets of the reconstruction and the discriminator's "complete"
        # class; not detached, as in the reference (the reconstruction loss also moves the projectors)
        clean_l = self._clean_encoding(batch, clean, "text", h_l)
        clean_v = self._clean_encoding(batch, clean, "vision", h_v)
        clean_a = self._clean_encoding(batch, clean, "audio", h_a)
        b, t, d = h_d_adv.shape
        logits = self.discriminator(torch.cat((h_d_adv, clean_l), dim=0).reshape(2 * b * t, d))
        labels = torch.cat((torch.ones(b * t), torch.zeros(b * t))).long().to(logits.device)
        key = "missing_rate_text" if self.completeness_target == "realised" else "drawn_rate_text"
        target = 1.0 - batch.extra[key].to(w.dtype)
        return {
            "cc": F.mse_loss(w.squeeze(-1), target),
            "adv": F.cross_entropy(logits.float(), labels),
            "rec": F.mse_loss(torch.cat((rec_a, rec_v, rec_l), dim=1), torch.cat((clean_a, clean_v, clean_l), dim=1)),
        }

    def _clean_encoding(self, batch: Batch, clean: Batch, modality: str, encoded: torch.Tensor) -> torch.Tensor:
        """The clean twin's projection of ``modality``, recomputed only for the samples whose input differs.

        The projectors work per sample and have no dropout, so a sample the noise left unchanged has the same
        projection, as a function of the weights, as its corrupted twin: reusing it gives the reference's
        values and gradients (the two uses' gradients add up either way) at about half the cost under LNLN's
        noise (half the samples are clean). A text backbone with dropout (``hf:``) is always re-run, as in the
        reference, so that the clean pass draws its own dropout masks.
        """
        if modality == "text" and isinstance(self.text_encoder, HFText):
            return self.encode_modality(clean, modality)
        changed = torch.zeros(len(batch), dtype=torch.bool, device=encoded.device)
        for name in _MODALITY_FIELDS[modality]:
            a, b = getattr(batch, name), getattr(clean, name)
            changed |= (a != b).reshape(len(batch), -1).any(dim=1)
        rows = changed.nonzero().squeeze(1)
        if len(rows) == len(batch):
            return self.encode_modality(clean, modality)
        if len(rows) == 0:
            return encoded
        part = Batch(**{f.name: getattr(clean, f.name)[rows] for f in fields(Batch) if f.name != "extra"})
        return encoded.index_copy(0, rows, self.encode_modality(part, modality).to(encoded.dtype))

    # ------------------------------------------------------------------ training
    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """``sigma L_sp + alpha L_cc + beta L_adv + gamma L_rec`` (the auxiliary terms on paired batches only)."""
        c = self.config
        main = self.criterion(output.pred, batch.labels)
        total, parts = float(c["sigma"]) * main, {"criterion": float(main.detach())}
        weights = {"cc": float(c["alpha"]), "adv": float(c["beta"]), "rec": float(c["gamma"])}
        for key, value in output.aux_losses.items():
            total = total + weights[key] * value
            parts[key] = float(value.detach())
        return total, parts

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        """One AdamW group over every parameter; the reference's warm-up + cosine (ALMT's), stepped per epoch."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=float(self.config["lr"]),
                                      weight_decay=float(self.config["weight_decay"]))
        schedule = WarmupCosine(int(epochs), float(self.config.get("warmup_fraction", 0.1)))
        return [optimizer], [torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)]
