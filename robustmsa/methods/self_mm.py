"""Self-MM: self-supervised multi-task learning with unimodal labels generated online, as benchmarked in MMSA.

Paper: Yu, Xu, Yuan, Wu, "Learning Modality-Specific Representations with Self-Supervised Multi-Task Learning for
Multimodal Sentiment Analysis", AAAI 2021. Reference: MMSA's port, ``thuiar/MMSA@a94e65d`` (MIT)
``src/MMSA/models/multiTask/SELF_MM.py``, ``models/subNets/BertTextEncoder.py`` and the trainer
``trains/multiTask/SELF_MM.py`` (the unimodal label generation); identical in the PyPI release ``mmsa==2.2.1``.
Hyper-parameters: ``config/config_regression.json`` (``self_mm``), in ``self_mm.yaml``. Written from the
reference's behaviour, not copied from it.

Architecture (MMSA): text = the first row ([CLS]) of the text backbone (MMSA: fine-tuned BERT); audio / vision =
an LSTM over the valid frames, last hidden state -> dropout -> Linear (:class:`~.encoders.RNNEncoder`, MMSA's
``AuViSubNet``); four heads, each ``dropout -> ReLU(Linear) = feature -> ReLU(Linear) -> Linear(., 1)``: fusion
on ``[t, a, v]`` (feature width ``post_fusion_dim``), text, audio, vision (``post_{text,audio,video}_dim``). The
prediction is the fusion head's.

Training (MMSA's trainer, reproduced by :meth:`SelfMM.training_step` and :class:`UnimodalLabels`):

- labels ``y_m`` for m in fusion, text, audio, vision, one per training sample, all initialised to the
  multimodal label; the fusion label never changes;
- loss ``sum_m mean(w_m |y_hat_m - y_m|)`` with ``w_fusion = 1`` and ``w_m = tanh(|y_m - y_fusion|)`` (so the
  unimodal heads get no gradient until their labels move);
- after each batch's backward: from the second epoch on, new labels from the distances of the batch's (detached)
  features to the positive / negative centres of their modality, ``delta_s = (d_neg - d_pos) / (d_pos + 1e-8)``,
  ``alpha = delta_s / (delta_f + 1e-8)``, ``y_new = clamp(alpha y_f / 2 + (y_f + delta_s - delta_f) / 2, -H, H)``,
  ``y_m <- (n - 1) / (n + 1) y_m + 2 / (n + 1) y_new`` at epoch n; then the batch's features are stored and all
  centres recomputed (mean feature of the samples with positive / negative label of that modality; zero labels
  excluded, ``exclude_zero``);
- one Adam with five groups: text encoder (decay / no decay for biases and LayerNorms, ``lr_bert``), audio,
  vision and the rest, each with its own lr and (L2) weight decay; gradient accumulation over ``update_epochs``
  batches (:mod:`.mmsa_common`); no clipping; selection on the validation L1 of the fusion head; early stopping 8.

**Label state.** MMSA sizes its per-sample maps by ``train_samples`` from the config and initialises every label
in a pass over the training set before the first epoch. Here :class:`UnimodalLabels` (``model.unimodal_labels``)
grows with the largest ``Batch.index`` seen (the sample's position in the training split) and initialises a
sample's labels the first time a training step sees it; centres are means over the samples seen so far. Labels
change only from epoch 2 on, when every training sample has been seen, so from then on the state equals MMSA's
(in epoch 1 MMSA's centres also average the zero features of not-yet-seen samples, but nothing reads them before
the epoch ends). No engine hook is needed; the epoch boundary comes from ``steps_per_epoch``. The state is not
part of the state dict (it does not enter predictions) and is reset by ``configure_optimizers``.

Repairs (docs/methods.md): a sign group without samples keeps its previous centre (MMSA: mean of an empty set =
NaN, which would turn every unimodal label NaN); an absent audio / vision modality (length 0) encodes to the
LSTM's zero state (MMSA's packing fails); MMSA's ``t_bert_dropout`` and ``text_out`` are unused / the backbone's
width. MMSA's lengths use is correct (own audio / vision lengths on unaligned data; the text length on aligned
data, which is what robustmsa's loader gives aligned A/V lengths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, Method, Output, register_method
from .encoders import RNNEncoder
from .mmsa_common import AccumulatedSteps, map_state_dict
from .text_encoders import build_text_encoder

__all__ = ["MMSA_KEY_RULES", "SelfMM", "UnimodalLabels", "from_mmsa_state_dict"]

TASKS = ("fusion", "text", "audio", "vision")
BERT_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


class Head(nn.Module):
    """``dropout -> ReLU(layer_1)`` = feature, then ``ReLU(layer_2) -> layer_3`` = prediction."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.layer_1 = nn.Linear(in_size, hidden)
        self.layer_2 = nn.Linear(hidden, hidden)
        self.layer_3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = F.relu(self.layer_1(self.dropout(x)))
        return feature, self.layer_3(F.relu(self.layer_2(feature))).squeeze(-1)


class UnimodalLabels:
    """Self-MM's per-training-sample state: labels, last features and sign centres per task (module docstring).

    Plain tensors, not buffers (a training state, not in the state dict); grown to the largest index seen.
    """

    def __init__(self, dims: Mapping[str, int], bound: float, exclude_zero: bool = True) -> None:
        self.dims = dict(dims)
        self.bound = float(bound)
        self.exclude_zero = bool(exclude_zero)
        self.reset()

    def reset(self) -> None:
        self.labels: dict[str, torch.Tensor] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.seen = torch.zeros(0, dtype=torch.bool)
        self.centres: dict[str, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return int(self.seen.shape[0])

    def _grow(self, size: int, device: torch.device) -> None:
        if not self.labels:
            self.labels = {m: torch.zeros(0, device=device) for m in TASKS}
            self.features = {m: torch.zeros(0, self.dims[m], device=device) for m in TASKS}
            self.seen = torch.zeros(0, dtype=torch.bool, device=device)
            self.centres = {m: {s: torch.zeros(self.dims[m], device=device) for s in ("pos", "neg")} for m in TASKS}
        extra = size - len(self)
        if extra <= 0:
            return
        for m in TASKS:
            self.labels[m] = torch.cat([self.labels[m], self.labels[m].new_zeros(extra)])
            self.features[m] = torch.cat([self.features[m], self.features[m].new_zeros(extra, self.dims[m])])
        self.seen = torch.cat([self.seen, self.seen.new_zeros(extra)])

    def observe(self, index: torch.Tensor, labels: torch.Tensor) -> None:
        """Initialise the labels of samples seen for the first time to their multimodal label."""
        index = index.to(labels.device)
        self._grow(int(index.max()) + 1 if index.numel() else 0, labels.device)
        new = ~self.seen[index]
        if bool(new.any()):
            for m in TASKS:
                self.labels[m][index[new]] = labels[new].to(self.labels[m].dtype)
            self.seen[index[new]] = True

    def lookup(self, task: str, index: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Current labels of ``index`` (``fallback``, the multimodal labels, for samples not seen yet)."""
        if not len(self):
            return fallback
        index = index.to(fallback.device)
        inside = index < len(self)
        safe = index.clamp(max=len(self) - 1)
        known = inside & self.seen[safe]
        return torch.where(known, self.labels[task][safe].to(fallback.dtype), fallback)

    def update_labels(self, features: Mapping[str, torch.Tensor], index: torch.Tensor, epoch: int) -> None:
        """MMSA's ``update_labels`` for the text, audio and vision labels of ``index`` at epoch ``epoch``."""
        tiny = 1e-8
        index = index.to(self.seen.device)
        y_f = self.labels["fusion"][index]
        c = self.centres["fusion"]
        d_fp = torch.linalg.vector_norm(features["fusion"] - c["pos"], dim=-1)
        d_fn = torch.linalg.vector_norm(features["fusion"] - c["neg"], dim=-1)
        delta_f = (d_fn - d_fp) / (d_fp + tiny)
        for m in TASKS[1:]:
            c = self.centres[m]
            d_sp = torch.linalg.vector_norm(features[m] - c["pos"], dim=-1)
            d_sn = torch.linalg.vector_norm(features[m] - c["neg"], dim=-1)
            delta_s = (d_sn - d_sp) / (d_sp + tiny)
            alpha = delta_s / (delta_f + tiny)
            new = (0.5 * alpha * y_f + 0.5 * (y_f + delta_s - delta_f)).clamp(-self.bound, self.bound)
            self.labels[m][index] = (epoch - 1) / (epoch + 1) * self.labels[m][index] + 2 / (epoch + 1) * new

    def update_features(self, features: Mapping[str, torch.Tensor], index: torch.Tensor) -> None:
        index = index.to(self.seen.device)
        for m in TASKS:
            self.features[m][index] = features[m].to(self.features[m].dtype)

    def update_centres(self) -> None:
        """Mean feature of the seen samples with positive / negative label, per task; an empty group keeps its
        previous centre (MMSA: NaN)."""
        for m in TASKS:
            labels = self.labels[m]
            groups = {"pos": (labels > 0) if self.exclude_zero else (labels >= 0), "neg": labels < 0}
            for sign, members in groups.items():
                members = members & self.seen
                if bool(members.any()):
                    self.centres[m][sign] = self.features[m][members].mean(dim=0)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The labels of every task for the seen samples (index order), as CPU tensors."""
        return {m: self.labels[m][self.seen].detach().cpu() for m in TASKS} if len(self) else {}


@dataclass
class SelfMMParts:
    preds: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


@register_method
class SelfMM(Method):
    """Self-MM as benchmarked in MMSA (``thuiar/MMSA@a94e65d``); see the module docstring."""

    name = "self_mm"
    paper = ("Yu, Xu, Yuan, Wu, Learning Modality-Specific Representations with Self-Supervised Multi-Task "
             "Learning for Multimodal Sentiment Analysis, AAAI 2021")
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/multiTask/SELF_MM.py (= mmsa 2.2.1)"
    unimodal_encoders = ("text", "audio", "vision")

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        text_out = int(self.text_encoder.out_dim)
        self.audio_model = RNNEncoder(int(spec.dims["audio"]), int(c["a_lstm_hidden_size"]), int(c["audio_out"]),
                                      num_layers=int(c["a_lstm_layers"]), dropout=float(c["a_lstm_dropout"]))
        self.video_model = RNNEncoder(int(spec.dims["vision"]), int(c["v_lstm_hidden_size"]), int(c["video_out"]),
                                      num_layers=int(c["v_lstm_layers"]), dropout=float(c["v_lstm_dropout"]))
        self.post_fusion = Head(text_out + int(c["audio_out"]) + int(c["video_out"]), int(c["post_fusion_dim"]),
                                float(c["post_fusion_dropout"]))
        self.post_text = Head(text_out, int(c["post_text_dim"]), float(c["post_text_dropout"]))
        self.post_audio = Head(int(c["audio_out"]), int(c["post_audio_dim"]), float(c["post_audio_dropout"]))
        self.post_video = Head(int(c["video_out"]), int(c["post_video_dim"]), float(c["post_video_dropout"]))
        dims = {"fusion": int(c["post_fusion_dim"]), "text": int(c["post_text_dim"]),
                "audio": int(c["post_audio_dim"]), "vision": int(c["post_video_dim"])}
        self.unimodal_labels = UnimodalLabels(dims, float(c["H"]), bool(c["exclude_zero"]))
        self.steps = AccumulatedSteps(int(c["update_epochs"]))

    # ------------------------------------------------------------------ forward
    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """Text: the backbone's first row (B, D_t); audio / vision: the LSTM encoders (B, out)."""
        if modality == "text":
            return self.text_encoder(batch)[:, 0]
        if modality == "audio":
            return self.audio_model(batch.audio, batch.audio_lengths)
        if modality == "vision":
            return self.video_model(batch.vision, batch.vision_lengths)
        raise ValueError(f"self_mm: unknown modality {modality!r}")

    def heads(self, encoded: Mapping[str, torch.Tensor]) -> SelfMMParts:
        """Features and predictions of the four heads (MMSA computes them in this order)."""
        t, a, v = encoded["text"], encoded["audio"], encoded["vision"]
        outs = {"fusion": self.post_fusion(torch.cat([t, a, v], dim=-1)), "text": self.post_text(t),
                "audio": self.post_audio(a), "vision": self.post_video(v)}
        return SelfMMParts(preds={m: o[1] for m, o in outs.items()}, features={m: o[0] for m, o in outs.items()})

    def task_losses(self, batch: Batch, parts: SelfMMParts) -> dict[str, torch.Tensor]:
        """The weighted L1 of the text, audio and vision heads against their current labels."""
        y_f = self.unimodal_labels.lookup("fusion", batch.index, batch.labels)
        losses = {}
        for m in TASKS[1:]:
            y_m = self.unimodal_labels.lookup(m, batch.index, batch.labels)
            weight = torch.tanh((y_m - y_f).abs())
            losses[m] = (weight * (parts.preds[m] - y_m).abs()).mean()
        return losses

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        parts = self.heads(encoded)
        aux = self.task_losses(batch, parts) if self.training else {}
        return Output(pred=parts.preds["fusion"], aux_losses=aux)

    def forward(self, batch: Batch) -> Output:
        # MMSA's order: text, audio, vision
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in ("text", "audio", "vision")})

    # ------------------------------------------------------------------ training (MMSA's trainer)
    def parameter_groups(self) -> list[dict]:
        """MMSA's five Adam groups; empty groups (e.g. no trainable text encoder) are left out."""
        c = self.config
        text_named = [(n, p) for n, p in self.text_encoder.named_parameters() if p.requires_grad]
        text_ids = {id(p) for p in self.text_encoder.parameters()}
        audio = list(self.audio_model.parameters())
        video = list(self.video_model.parameters())
        taken = text_ids | {id(p) for p in audio + video}
        groups = [
            {"params": [p for n, p in text_named if not any(k in n for k in BERT_NO_DECAY)],
             "weight_decay": float(c["weight_decay_bert"]), "lr": float(c["lr_bert"]), "name": "text_decay"},
            {"params": [p for n, p in text_named if any(k in n for k in BERT_NO_DECAY)],
             "weight_decay": 0.0, "lr": float(c["lr_bert"]), "name": "text_no_decay"},
            {"params": audio, "weight_decay": float(c["weight_decay_audio"]), "lr": float(c["lr_audio"]),
             "name": "audio"},
            {"params": video, "weight_decay": float(c["weight_decay_video"]), "lr": float(c["lr_video"]),
             "name": "video"},
            {"params": [p for p in self.parameters() if id(p) not in taken],
             "weight_decay": float(c["weight_decay_other"]), "lr": float(c["lr_other"]), "name": "other"},
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        self.steps.reset(steps_per_epoch)
        self.unimodal_labels.reset()
        return [torch.optim.Adam(self.parameter_groups())], []

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        if self.steps.begin():
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
        epoch = self.steps.epoch
        state = self.unimodal_labels
        state.observe(batch.index, batch.labels)
        encoded = {m: self.encode_modality(batch, m) for m in ("text", "audio", "vision")}
        parts = self.heads(encoded)
        output = Output(pred=parts.preds["fusion"], aux_losses=self.task_losses(batch, parts))
        total, logged = self.loss(batch, output)
        total.backward()
        features = {m: f.detach().float() for m, f in parts.features.items()}
        if epoch > 1:
            state.update_labels(features, batch.index, epoch)
        state.update_features(features, batch.index)
        state.update_centres()
        if self.steps.should_step():
            for optimizer in optimizers:
                optimizer.step()
        logged["loss"] = float(total.detach())
        return logged


#: MMSA ``SELF_MM`` state-dict keys -> ours (first full match).
MMSA_KEY_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(?:Model\.)?text_model\.model\.(.*)", r"text_encoder.model.\1"),
    (r"(?:Model\.)?(audio_model|video_model)\.(rnn|linear_1)\.(.*)", r"\1.\2.\3"),
    (r"(?:Model\.)?post_(fusion|text|audio|video)_layer_([123])\.(.*)", r"post_\1.layer_\2.\3"),
)


def from_mmsa_state_dict(state: Mapping[str, torch.Tensor]):
    """Rename an MMSA ``SELF_MM`` (or ``AMIO``-wrapped) state dict for :class:`SelfMM`."""
    return map_state_dict(state, MMSA_KEY_RULES)
