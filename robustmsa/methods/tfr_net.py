"""TFR-Net: Transformer-based Feature Reconstruction Network for robust MSA (missing data).

Paper: Yuan, Li, Xu, Yu, "Transformer-based Feature Reconstruction Network for Robust Multimodal Sentiment
Analysis", ACM Multimedia 2021. Reference: MMSA's port, ``thuiar/MMSA@a94e65d`` (MIT)
``src/MMSA/models/missingTask/TFR_NET/{model,alignment,fusion,generator}.py``, trainer
``src/MMSA/trains/missingTask/TFR_NET.py``, masks from ``src/MMSA/data_loader.py`` (``generate_m``), identical in
the PyPI release ``mmsa==2.2.1``; compared with the authors' repository ``thuiar/TFR-Net@00f06a6`` (same model
code; MOSI learning rates differ, see ``tfr_net.yaml``). Hyper-parameters: ``config/config_regression.json``
(``tfr_net``), in ``tfr_net.yaml``. Written from the reference's behaviour, not copied from it; the MulT blocks
are :class:`robustmsa.methods.mult.CrossmodalEncoder` (same parameters and initialisation as MMSA's fairseq copies).

Architecture (d = ``d_model``; every modality keeps its length):

1. text = the backbone's token states, dropout ``text_dropout``; each modality -> ``Conv1d(D_m, d, k_m,
   padding (k_m - 1) // 2, no bias)`` (skipped when ``D_m == d``);
2. per target X: ``trans_X_mem`` (self-attention, ``max(nlevels, 3)`` layers) and two crossmodal transformers
   ``trans_X_with_Y`` (``nlevels`` layers), all with sinusoidal positions -> ``h_X`` = concat (B, L_X, 3 d);
3. prediction: per modality a C-GATE encoder (bi-GRU of ``fusion_gru_layers`` over the valid steps, a Conv1d(k 3)
   sigmoid gate on its outputs, ``tanh(fc([h_X, tanh(gru) * gate]))``, max over time, dropout), concatenated ->
   BatchNorm1d -> Linear(cls_hidden_dim) -> LeakyReLU -> Dropout -> Linear(1);
4. reconstruction (training only): ``trans_X_final`` over ``h_X`` -> ``generator_X`` = Linear(3 d -> D_m), the
   clean features (text: the backbone's states of the clean text, detached).

Objective (MMSA's trainer): ``L1(pred, y) + sum_m w_m * REC_m`` from the second epoch on (``rec_start_epoch``),
``REC_m = [SmoothL1_sum(p * M, x * M) + weight_sim_loss * CMD(p * M, x * M)] / (sum(M) + 1e-4)`` where ``M`` is the
missing mask of modality m expanded over features (``recloss_type: combine``).

The missing data (``training_step``): TFR-Net trains on inputs it corrupts itself. Each step masks the batch with
an explicit ``torch.Generator`` (seed ``mask_seed``, else ``torch.initial_seed()`` when the model is built, i.e. the
run seed): every word token (never [CLS], [SEP] or padding) and every valid frame is dropped with probability
``missing_rate[m]`` (MMSA's ``generate_m``: tokens -> [UNK] id 100 and, for precomputed features, a zero row;
frames -> 0). The method also sets ``wants_paired_batches``: when the engine adds train-time noise, the noisy
batch is masked further and the clean twin is the target, the positions the noise changed counting as missing.
Evaluation feeds the (possibly corrupted) batch as it is. Deviations from MMSA: docs/methods.md, "TFR-Net".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..datasets.split import UNK_ID, DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .mmsa_common import AccumulatedSteps, clip_grad_value, map_state_dict, validation_plateau
from .mult import CrossmodalEncoder, crossmodal_mask
from .mult_layers import length_positions
from .text_encoders import build_text_encoder

__all__ = [
    "MMSA_KEY_RULES",
    "CGate",
    "TFRNet",
    "apply_missing",
    "cmd_loss",
    "from_mmsa_state_dict",
    "missing_masks",
    "reconstruction_loss",
]

MODALITIES = ("text", "audio", "vision")
SHORT = {"text": "l", "audio": "a", "vision": "v"}
MASKINGS = ("valid", "none")
RECON_ENCODERS = ("temporal", "mmsa")
STEP_SCHEDULES = ("mmsa", "standard")
REC_LOSSES = ("combine", "smooth_l1", "mse", "cmd")


# ---------------------------------------------------------------------------------------------------- losses
def cmd_loss(x1: torch.Tensor, x2: torch.Tensor, moments: int = 3) -> torch.Tensor:
    """Central moment discrepancy over the rows of (..., D) tensors (MMSA's ``CMD``; first + central moments 2..k)."""
    x1, x2 = x1.reshape(-1, x1.shape[-1]), x2.reshape(-1, x2.shape[-1])
    m1, m2 = x1.mean(0), x2.mean(0)

    def norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a - b).pow(2).sum() + 1e-12).sqrt()

    total = norm(m1, m2)
    c1, c2 = x1 - m1, x2 - m2
    for k in range(2, moments + 1):
        total = total + norm(c1.pow(k).mean(0), c2.pow(k).mean(0))
    return total


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, missing: torch.Tensor, kind: str = "combine",
                        weight_sim: float = 5.0) -> torch.Tensor:
    """MMSA's ``RECLoss``: a summed loss over the missing positions (B, L) divided by their element count."""
    m = missing.to(pred.dtype)[..., None].expand_as(pred)
    p, t = pred * m, target * m
    count = m.sum() + 1e-4
    if kind == "cmd":
        return cmd_loss(p, t) / count
    if kind == "mse":
        return F.mse_loss(p, t, reduction="sum") / count
    loss = F.smooth_l1_loss(p, t, reduction="sum") / count
    if kind == "combine" and weight_sim != 0:
        loss = loss + weight_sim * cmd_loss(p, t) / count
    return loss


# ---------------------------------------------------------------------------------------------------- masks
def _eligible(batch: Batch) -> dict[str, torch.Tensor]:
    """Positions that may go missing: word tokens ([CLS], [SEP], padding excluded) and valid frames."""
    lengths = batch.text_mask.sum(dim=1, keepdim=True)
    pos = torch.arange(batch.text_mask.shape[1], device=lengths.device)[None, :]
    out = {"text": (batch.text_mask > 0) & (pos > 0) & (pos < lengths - 1)}
    for m in ("audio", "vision"):
        frames = getattr(batch, m)
        pos = torch.arange(frames.shape[1], device=frames.device)[None, :]
        out[m] = pos < getattr(batch, f"{m}_lengths")[:, None]
    return out


def missing_masks(batch: Batch, rates: Mapping[str, float], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Bernoulli drop masks (B, L_m) bool: each eligible position is dropped with probability ``rates[m]``.

    Uniforms come from ``generator`` (CPU), one (B, L_m) draw per modality in text, audio, vision order.
    """
    eligible = _eligible(batch)
    out = {}
    for m in MODALITIES:
        u = torch.rand(eligible[m].shape, generator=generator).to(eligible[m].device)
        out[m] = (u < float(rates[m])) & eligible[m]
    return out


def apply_missing(batch: Batch, drop: Mapping[str, torch.Tensor]) -> Batch:
    """``batch`` with dropped tokens -> [UNK] id and zero feature row, dropped frames -> 0 (nothing else changes)."""
    keep = {m: (~drop[m])[..., None].to(getattr(batch, m).dtype) for m in MODALITIES}
    return Batch(text=batch.text * keep["text"], text_ids=torch.where(drop["text"], torch.full_like(
        batch.text_ids, UNK_ID), batch.text_ids), text_mask=batch.text_mask, text_segments=batch.text_segments,
        audio=batch.audio * keep["audio"], vision=batch.vision * keep["vision"], audio_lengths=batch.audio_lengths,
        vision_lengths=batch.vision_lengths, labels=batch.labels, index=batch.index, extra=dict(batch.extra))


# ---------------------------------------------------------------------------------------------------- fusion
class CGate(nn.Module):
    """MMSA's ``C_GATE``: bi-GRU over the valid steps, Conv1d sigmoid gate, ``tanh(fc)``, max over time, dropout."""

    def __init__(self, in_dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.cnn = nn.Conv1d(2 * hidden, 1, kernel_size=3, stride=1, padding=1)
        self.fc = nn.Linear(2 * hidden + in_dim, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, pool_valid: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, L, in); ``lengths`` (B,) >= 1 steps the GRU reads; ``pool_valid`` (B, L) bool: the steps the
        max runs over (None: all, MMSA)."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        gate = torch.sigmoid(self.cnn(states.transpose(1, 2)).transpose(1, 2))
        rep = torch.tanh(self.fc(torch.cat([x, torch.tanh(states) * gate], dim=-1)))
        if pool_valid is not None:
            rep = rep.masked_fill(~pool_valid[..., None], float("-inf"))
        return self.dropout(rep.max(dim=1).values)


# ---------------------------------------------------------------------------------------------------- method
@register_method
class TFRNet(Method):
    """TFR-Net as in MMSA (``thuiar/MMSA@a94e65d``), trained on self-generated missing data; see the module docstring."""

    name = "tfr_net"
    paper = ("Yuan, Li, Xu, Yu, Transformer-based Feature Reconstruction Network for Robust Multimodal Sentiment "
             "Analysis, ACM MM 2021")
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/missingTask/TFR_NET (= mmsa 2.2.1); thuiar/TFR-Net@00f06a6"
    unimodal_encoders = MODALITIES
    wants_paired_batches = True

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        for key, options in (("masking", MASKINGS), ("reconstruction_encoder", RECON_ENCODERS),
                             ("optimizer_steps", STEP_SCHEDULES), ("recloss_type", REC_LOSSES)):
            if c[key] not in options:
                raise ConfigError(f"tfr_net: {key} must be one of {', '.join(options)}, got {c[key]!r}")
        d, heads = int(c["d_model"]), int(c["heads"])
        if d % heads or (3 * d) % heads:
            raise ConfigError(f"tfr_net: heads ({heads}) must divide d_model ({d})")
        self.rates = {m: float(r) for m, r in zip(MODALITIES, c["missing_rate"])}
        self.gen_weights = {m: float(w) for m, w in zip(MODALITIES, c["weight_gen_loss"])}
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        in_dims = {"text": int(self.text_encoder.out_dim), "audio": int(spec.dims["audio"]),
                   "vision": int(spec.dims["vision"])}
        self.in_dims = in_dims
        self.kernels = {m: int(c[f"conv1d_kernel_size_{SHORT[m]}"]) for m in MODALITIES}
        for m, k in self.kernels.items():
            if k % 2 == 0:
                raise ConfigError(f"tfr_net: conv1d_kernel_size_{SHORT[m]} must be odd (length-preserving), got {k}")
        self.projected = {m: in_dims[m] != d for m in MODALITIES}
        self.d = d
        for m in MODALITIES:
            k = self.kernels[m]
            setattr(self, f"proj_{SHORT[m]}", nn.Conv1d(in_dims[m], d, k, padding=(k - 1) // 2, bias=False))
        attn_dropout = {"text": float(c["attn_dropout"]), "audio": float(c["attn_dropout_a"]),
                        "vision": float(c["attn_dropout_v"])}
        common = {"relu_dropout": float(c["relu_dropout"]), "res_dropout": float(c["res_dropout"]),
                  "embed_dropout": float(c["embed_dropout"])}
        levels = int(c["nlevels"])
        # MMSA's creation order: l<-a, l<-v, a<-l, a<-v, v<-l, v<-a, the memories, then the "final" encoders
        for target in MODALITIES:
            for source in MODALITIES:
                if source != target:
                    setattr(self, f"trans_{SHORT[target]}_with_{SHORT[source]}",
                            CrossmodalEncoder(d, heads, levels, attn_dropout[source], position_embedding=True,
                                              **common))
        mem_layers = max(levels, int(c["mem_min_layers"]))
        for m in MODALITIES:
            setattr(self, f"trans_{SHORT[m]}_mem",
                    CrossmodalEncoder(d, heads, mem_layers, attn_dropout["text"], position_embedding=True, **common))
        self.use_generator = bool(c["generator"])
        if self.use_generator:
            for m in MODALITIES:
                if c["reconstruction_encoder"] == "mmsa":  # MMSA: width = padded length, the batch as sequence
                    width, h = int(spec.seq_lens[m]), int(c["num_temporal_head"])
                    if width % h:
                        raise ConfigError(
                            f"tfr_net: reconstruction_encoder 'mmsa' attends over the batch with width = the padded "
                            f"{m} length ({width}), which num_temporal_head ({h}) must divide (MMSA fails here too, "
                            f"e.g. SIMS text 39); use reconstruction_encoder: temporal")
                else:
                    width, h = 3 * d, heads
                setattr(self, f"trans_{SHORT[m]}_final",
                        CrossmodalEncoder(width, h, mem_layers, attn_dropout["text"], position_embedding=False,
                                          **common))
            for m in MODALITIES:
                setattr(self, f"generator_{SHORT[m]}", nn.Linear(3 * d, in_dims[m]))
        hidden = {m: int(c[f"fusion_{SHORT[m] if m != 'text' else 't'}_hid"]) for m in MODALITIES}
        self.text_gate = CGate(3 * d, hidden["text"], int(c["fusion_gru_layers"]), float(c["fusion_drop"]))
        self.audio_gate = CGate(3 * d, hidden["audio"], int(c["fusion_gru_layers"]), float(c["fusion_drop"]))
        self.vision_gate = CGate(3 * d, hidden["vision"], int(c["fusion_gru_layers"]), float(c["fusion_drop"]))
        total = sum(hidden.values())
        self.classifier = nn.Sequential()
        self.classifier.add_module("linear_trans_norm", nn.BatchNorm1d(total))
        self.classifier.add_module("linear_trans_hidden", nn.Linear(total, int(c["cls_hidden_dim"])))
        self.classifier.add_module("linear_trans_activation", nn.LeakyReLU())
        self.classifier.add_module("linear_trans_drop", nn.Dropout(float(c["cls_dropout"])))
        self.classifier.add_module("linear_trans_final", nn.Linear(int(c["cls_hidden_dim"]), 1))
        self.steps = AccumulatedSteps(int(c["update_epochs"]))
        seed = c.get("mask_seed")
        self.mask_generator = torch.Generator().manual_seed(int(torch.initial_seed() if seed is None else seed))

    # ------------------------------------------------------------------ lengths and masks
    @property
    def valid_masking(self) -> bool:
        return self.config["masking"] == "valid"

    @staticmethod
    def _raw_lengths(batch: Batch, modality: str) -> torch.Tensor:
        return {"text": batch.text_lengths, "audio": batch.audio_lengths, "vision": batch.vision_lengths}[modality]

    def _lengths(self, batch: Batch, modality: str, padded: int) -> torch.Tensor:
        """Valid steps, at least 1 (an absent modality is one zero step) and at most the padded length."""
        return self._raw_lengths(batch, modality).clamp(min=1, max=padded)

    # ------------------------------------------------------------------ encoders
    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The projected sequence (B, L_m, d) of one modality (text backbone + dropout, Conv1d)."""
        if modality == "text":
            x = F.dropout(self.text_encoder(batch), float(self.config["text_dropout"]), self.training)
        elif modality in ("audio", "vision"):
            x = getattr(batch, modality)
        else:
            raise ValueError(f"tfr_net: unknown modality {modality!r}")
        if self.valid_masking:  # padding cannot leak into the convolution
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < self._raw_lengths(batch, modality)[:, None]
            x = x * valid[..., None].to(x.dtype)
        if not self.projected[modality]:
            return x
        conv = getattr(self, f"proj_{SHORT[modality]}")
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        seqs = {m: encoded[m] for m in MODALITIES}
        device = seqs["text"].device
        use_future = bool(self.config["attn_mask"])
        lengths = {m: self._lengths(batch, m, seqs[m].shape[1]) for m in MODALITIES}

        def mask_for(target: str, source: str) -> torch.Tensor | None:
            return crossmodal_mask(lengths[target], lengths[source], seqs[target].shape[1], seqs[source].shape[1],
                                   valid_only=self.valid_masking, use_future=use_future)

        positions = ({m: length_positions(lengths[m], seqs[m].shape[1]) for m in MODALITIES}
                     if self.valid_masking else {m: None for m in MODALITIES})
        hidden = {}
        for target in MODALITIES:
            t = SHORT[target]
            parts = [getattr(self, f"trans_{t}_mem")(seqs[target], mask=mask_for(target, target),
                                                     positions=positions[target])]
            for source in MODALITIES:
                if source != target:
                    parts.append(getattr(self, f"trans_{t}_with_{SHORT[source]}")(
                        seqs[target], seqs[source], mask_for(target, source), positions=positions[target],
                        source_positions=positions[source]))
            hidden[target] = torch.cat(parts, dim=-1)
        reps = []
        for m in MODALITIES:
            pool = None
            if self.valid_masking:
                pool = torch.arange(hidden[m].shape[1], device=device)[None, :] < lengths[m][:, None]
            reps.append(getattr(self, f"{m}_gate")(hidden[m], lengths[m], pool))
        fused = torch.cat(reps, dim=-1)
        if self.training and fused.shape[0] == 1:  # BatchNorm cannot train on one sample: use its running stats
            norm = self.classifier.linear_trans_norm
            fused = F.batch_norm(fused, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0,
                                 norm.eps)
            pred = self.classifier[1:](fused)
        else:
            pred = self.classifier(fused)
        aux = {}
        if self.use_generator and "tfr_missing_text" in batch.extra:
            aux["reconstruction"] = self._reconstruction(batch, hidden, lengths, mask_for)
        return Output(pred=pred.squeeze(-1), aux_losses=aux)

    def _reconstruction(self, batch: Batch, hidden: Mapping[str, torch.Tensor], lengths, mask_for) -> torch.Tensor:
        """Weighted reconstruction loss on the missing positions (targets and masks from ``batch.extra``)."""
        c = self.config
        targets = {"audio": batch.extra["tfr_target_audio"], "vision": batch.extra["tfr_target_vision"]}
        clean_text = Batch(text=batch.extra["tfr_target_text"], text_ids=batch.extra["tfr_target_text_ids"],
                           text_mask=batch.text_mask, text_segments=batch.text_segments, audio=batch.audio,
                           vision=batch.vision, audio_lengths=batch.audio_lengths,
                           vision_lengths=batch.vision_lengths, labels=batch.labels, index=batch.index)
        with torch.no_grad():  # the clean text states are a target, not a path for gradients
            targets["text"] = self.text_encoder(clean_text).detach()
        total = hidden["text"].new_zeros(())
        for m in MODALITIES:
            final = getattr(self, f"trans_{SHORT[m]}_final")
            if c["reconstruction_encoder"] == "mmsa":
                # MMSA: (B, L, 3d) read as (sequence = batch, batch = 3d, width = L), a causal mask over samples
                x = hidden[m].permute(2, 0, 1)
                n = x.shape[1]
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()[None, None] \
                    if c["attn_mask"] else None
                states = final(x, mask=mask).permute(1, 2, 0)
            else:
                states = final(hidden[m], mask=mask_for(m, m))
            recon = getattr(self, f"generator_{SHORT[m]}")(states)
            loss = reconstruction_loss(recon.float(), targets[m].float(), batch.extra[f"tfr_missing_{m}"],
                                       c["recloss_type"], float(c["weight_sim_loss"]))
            total = total + self.gen_weights[m] * loss
        return total

    def forward(self, batch: Batch) -> Output:
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in MODALITIES})

    # ------------------------------------------------------------------ training (MMSA's trainer)
    def make_missing(self, batch: Batch) -> Batch:
        """The training input: ``batch`` (or its noisy twin) with TFR-Net's own drops, plus in ``extra`` the clean
        targets (``tfr_target_*``) and the missing masks (``tfr_missing_*``, (B, L_m) bool)."""
        from ..engine.batches import clean_twin

        twin = clean_twin(batch)
        clean = batch if twin is None else twin
        eligible = _eligible(clean)
        drop = missing_masks(batch, self.rates, self.mask_generator)
        masked = apply_missing(batch, drop)
        changed = {"text": (batch.text_ids != clean.text_ids) | (batch.text != clean.text).any(dim=-1),
                   "audio": (batch.audio != clean.audio).any(dim=-1),
                   "vision": (batch.vision != clean.vision).any(dim=-1)}
        masked.extra.update({"tfr_target_text": clean.text, "tfr_target_text_ids": clean.text_ids,
                             "tfr_target_audio": clean.audio, "tfr_target_vision": clean.vision})
        masked.extra.update({f"tfr_missing_{m}": (drop[m] | changed[m]) & eligible[m] for m in MODALITIES})
        return masked

    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        main = self.criterion(output.pred, batch.labels)
        total, parts = main, {"criterion": float(main.detach())}
        if "reconstruction" in output.aux_losses:
            rec = output.aux_losses["reconstruction"]
            parts["reconstruction"] = float(rec.detach())
            if self.steps.epoch >= int(self.config["rec_start_epoch"]):  # MMSA: generation loss from epoch 2
                total = total + rec
        return total, parts

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        c = self.config
        text_params = {id(p) for p in self.text_encoder_parameters()}
        groups = []
        if text_params:
            named = [(n, p) for n, p in self.text_encoder.named_parameters() if p.requires_grad]
            no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
            decay = [p for n, p in named if not any(k in n for k in no_decay)]
            plain = [p for n, p in named if any(k in n for k in no_decay)]
            groups += [{"params": decay, "weight_decay": float(c["weight_decay_text"]), "lr": float(c["lr_text"])},
                       {"params": plain, "weight_decay": 0.0, "lr": float(c["lr_text"])}]
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in text_params]
        groups.append({"params": other, "weight_decay": float(c["weight_decay"]), "lr": float(c["lr"])})
        optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        plateau = validation_plateau(optimizer, c)
        self.steps.reset(steps_per_epoch)
        return [optimizer], [plateau]

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        mmsa = self.config["optimizer_steps"] == "mmsa"
        begin = self.steps.begin()
        if begin or not mmsa:
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
        masked = self.make_missing(batch)
        output = self(masked)
        total, parts = self.loss(masked, output)
        total.backward()
        clip_grad_value(self.parameters(), self.config.get("grad_clip_value"))
        for optimizer in optimizers:
            optimizer.step()
            if mmsa and self.steps.should_step():  # MMSA's trainer steps again after each group of batches
                optimizer.step()
        parts["loss"] = float(total.detach())
        return parts


#: MMSA ``TFR_NET`` state-dict keys -> ours (first full match; None = not kept).
MMSA_KEY_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(?:Model\.)?text_model\.model\.(.*)", r"text_encoder.model.\1"),
    (r"(?:Model\.)?align_subnet\.Model\.(trans_[lav]_\w+)\.version", None),
    (r"(?:Model\.)?align_subnet\.Model\.(trans_[lav]_\w+)\.embed_positions\._float_tensor", None),
    (r"(?:Model\.)?align_subnet\.Model\.(.*)", r"\1"),
    (r"(?:Model\.)?generator_([tav])\.Model\.linear\.(.*)", None),  # replaced below
    (r"(?:Model\.)?fusion_subnet\.Model\.text_encoder\.gru\.gru\.(.*)", r"text_gate.gru.\1"),
    (r"(?:Model\.)?fusion_subnet\.Model\.audio_encoder\.gru\.gru\.(.*)", r"audio_gate.gru.\1"),
    (r"(?:Model\.)?fusion_subnet\.Model\.vision_encoder\.gru\.gru\.(.*)", r"vision_gate.gru.\1"),
    (r"(?:Model\.)?fusion_subnet\.Model\.(text|audio|vision)_encoder\.(.*)", r"\1_gate.\2"),
    (r"(?:Model\.)?fusion_subnet\.Model\.classifier\.(.*)", r"classifier.\1"),
)
_GENERATOR = {"t": "l", "a": "a", "v": "v"}


def from_mmsa_state_dict(state: Mapping[str, torch.Tensor]):
    """Rename an MMSA ``TFR_NET`` (or ``AMIO``-wrapped) state dict for :class:`TFRNet`."""
    import re

    renamed = {}
    rest = {}
    for key, value in state.items():
        match = re.fullmatch(r"(?:module\.)?(?:Model\.)?generator_([tav])\.Model\.linear\.(.*)", key)
        if match:
            renamed[f"generator_{_GENERATOR[match.group(1)]}.{match.group(2)}"] = value
        else:
            rest[key] = value
    mapped = map_state_dict(rest, MMSA_KEY_RULES)
    mapped.update(renamed)
    return mapped
