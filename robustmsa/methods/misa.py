"""MISA: modality-invariant and -specific representations, as benchmarked in MMSA.

Paper: Hazarika, Zimmermann, Poria, "MISA: Modality-Invariant and -Specific Representations for Multimodal
Sentiment Analysis", ACM MM 2020. Reference: MMSA's port, ``thuiar/MMSA@a94e65d`` (MIT)
``src/MMSA/models/singleTask/MISA.py``, ``models/subNets/BertTextEncoder.py`` and the trainer
``trains/singleTask/MISA.py`` (its ``DiffLoss``, ``CMD``, ``MSE``); identical in the PyPI release ``mmsa==2.2.1``.
Hyper-parameters: ``config/config_regression.json`` (``misa``), in ``misa.yaml``. Written from the reference's
behaviour, not copied from it.

Architecture (MMSA, hidden size ``h`` = ``hidden_size``; modality order t, v, a as in MMSA):

1. utterance vectors: text = mean of the text backbone's token states over the attention mask (MMSA: fine-tuned
   BERT, ``use_bert`` is required); audio and vision = a two-layer bidirectional LSTM stack
   (:class:`SequenceEncoder`: LSTM(D, D) -> LayerNorm(2 D) on its outputs -> LSTM(2 D, D); hidden width = the
   input width, as MMSA), final states ``[h1_fwd, h2_fwd, h1_bwd, h2_bwd]`` (4 D);
2. ``u_m = LayerNorm(ReLU(Linear(., h)))`` per modality; private ``p_m = sigmoid(Linear_m(u_m))``, shared
   ``s_m = sigmoid(Linear_shared(u_m))``; reconstruction ``r_m = Linear_m(p_m + s_m)``;
3. a one-layer ``nn.TransformerEncoder`` (post-LN, 2 heads, FFN 2048, dropout 0.1: torch's defaults, as MMSA) over
   the six vectors ``[p_t, p_v, p_a, s_t, s_v, s_a]``, outputs concatenated (6 h) -> Linear(6 h, 3 h) -> dropout
   -> ReLU -> Linear(3 h, 1).

Losses (MMSA's trainer, ``use_cmd_sim: true``): ``MSE(y_hat, y) + diff_weight * L_diff + sim_weight * L_cmd +
recon_weight * L_recon`` with ``L_diff`` the soft-orthogonality (centred, row-normalised, mean squared entries of
``X^T Y``) of (p_t, s_t), (p_v, s_v), (p_a, s_a), (p_a, p_t), (p_a, p_v), (p_t, p_v), summed; ``L_cmd`` the central
moment discrepancy (5 moments) of the shared vectors (t, v), (t, a), (a, v), averaged; ``L_recon`` the MSE of
``r_m`` against ``u_m``, averaged. Adam (no weight decay: MMSA's trainer does not pass the configured one), gradient
accumulation over ``update_epochs`` batches, clipping by value (:mod:`.mmsa_common`), selection on the validation
MSE, early stopping 8.

Deviations (docs/methods.md):

- **Own lengths** (default). MMSA packs audio *and vision* with the **text** length (``lengths = mask_len`` for all
  three), so on unaligned data the frames past the text length are ignored (MOSI: 50 of up to 375 audio and 500
  vision frames) and, for a modality shorter than its text, padding frames are read. We pack each modality with
  its own length; ``pack_with_text_length: true`` reproduces MMSA (parity test; the text length is clamped to the
  padded length, where MMSA would fail).
- **Absent modalities.** A length-0 modality gives zero final states (an empty sequence); an empty text mask a zero
  text vector (MMSA: packing fails; 0/0). ``cmd`` uses a norm with a zero subgradient at 0 (MMSA's ``sum ** 0.5``
  gives NaN gradients when two shared codes have equal moments, e.g. two absent modalities); values are equal.
- **Dead modules dropped**: ``sp_discriminator`` (computed, used by no loss and no output) and ``tlayer_norm``
  (unused with BERT) are not built; MMSA's ``use_cmd_sim: false`` branch (adversarial discriminator) is not offered
  (MMSA's trainer would fail on it: ``domain_loss_criterion`` is never defined).
- The text projection's input width is the backbone's (MMSA hard-codes 768).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .mmsa_common import AccumulatedSteps, accumulated_training_step, map_state_dict
from .text_encoders import build_text_encoder

__all__ = ["MISA", "MMSA_KEY_RULES", "SequenceEncoder", "cmd_loss", "diff_loss", "from_mmsa_state_dict"]

ORDER = ("text", "vision", "audio")  # MMSA's modality order (t, v, a)
SHORT = {"text": "t", "vision": "v", "audio": "a"}


def diff_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MISA's soft orthogonality: centre over the batch, divide each row by its (detached) norm + 1e-6,
    mean of the squared entries of ``X^T Y``."""
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    x = x / (x.norm(dim=1, keepdim=True).detach() + 1e-6)
    y = y / (y.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (x.t() @ y).pow(2).mean()


def cmd_loss(x: torch.Tensor, y: torch.Tensor, moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy: ``||E x - E y|| + sum_{k=2..K} ||E (x - E x)^k - E (y - E y)^k||``."""
    mx, my = x.mean(dim=0), y.mean(dim=0)
    total = torch.linalg.vector_norm(mx - my)
    cx, cy = x - mx, y - my
    for k in range(2, moments + 1):
        total = total + torch.linalg.vector_norm(cx.pow(k).mean(dim=0) - cy.pow(k).mean(dim=0))
    return total


class SequenceEncoder(nn.Module):
    """MISA's audio/vision encoder: bidirectional RNN -> LayerNorm on its outputs -> bidirectional RNN over the
    first ``lengths[b]`` steps; returns ``[h1_fwd, h2_fwd, h1_bwd, h2_bwd]`` (B, 4 hidden); zero for length 0."""

    def __init__(self, in_size: int, hidden: int, cell: str = "lstm") -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ConfigError(f"misa: rnncell must be 'lstm' or 'gru', got {cell!r}")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn1 = rnn(in_size, hidden, bidirectional=True, batch_first=True)
        self.rnn2 = rnn(2 * hidden, hidden, bidirectional=True, batch_first=True)
        self.layer_norm = nn.LayerNorm(2 * hidden)
        self.hidden = hidden

    @staticmethod
    def _final(output) -> torch.Tensor:
        return output[1][0] if isinstance(output[1], tuple) else output[1]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        present = lengths > 0
        cpu_lengths = lengths.clamp(min=1).cpu()
        out1 = self.rnn1(pack_padded_sequence(x, cpu_lengths, batch_first=True, enforce_sorted=False))
        padded, _ = pad_packed_sequence(out1[0], batch_first=True)
        normed = pack_padded_sequence(self.layer_norm(padded), cpu_lengths, batch_first=True, enforce_sorted=False)
        h1 = self._final(out1)                       # (2, B, hidden): forward, backward
        h2 = self._final(self.rnn2(normed))
        h = torch.cat([h1, h2], dim=2).permute(1, 0, 2).reshape(b, 4 * self.hidden)
        return h * present[:, None].to(h.dtype)


class Projection(nn.Module):
    """``LayerNorm(ReLU(Linear(x)))`` (MMSA's ``project_m``)."""

    def __init__(self, in_size: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_size, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.linear(x)))


@register_method
class MISA(Method):
    """MISA as benchmarked in MMSA (``thuiar/MMSA@a94e65d``); see the module docstring."""

    name = "misa"
    paper = ("Hazarika, Zimmermann, Poria, MISA: Modality-Invariant and -Specific Representations for "
             "Multimodal Sentiment Analysis, ACM MM 2020")
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/MISA.py (= mmsa 2.2.1)"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        h = int(c["hidden_size"])
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        # an instance attribute: with MMSA's packing, audio/vision encodings read the text lengths
        self.unimodal_encoders = () if c["pack_with_text_length"] else ("text", "audio", "vision")
        widths = {m: int(spec.dims[m]) for m in ("audio", "vision")}
        hidden = {m: int(c["rnn_hidden"] or widths[m]) for m in widths}
        self.vision_encoder = SequenceEncoder(widths["vision"], hidden["vision"], c["rnncell"])
        self.audio_encoder = SequenceEncoder(widths["audio"], hidden["audio"], c["rnncell"])
        utterance = {"text": int(self.text_encoder.out_dim), "vision": 4 * hidden["vision"],
                     "audio": 4 * hidden["audio"]}
        self.project = nn.ModuleDict({m: Projection(utterance[m], h) for m in ORDER})
        self.private = nn.ModuleDict({m: nn.Linear(h, h) for m in ORDER})
        self.shared = nn.Linear(h, h)
        self.recon = nn.ModuleDict({m: nn.Linear(h, h) for m in ORDER})
        self.fusion_1 = nn.Linear(6 * h, 3 * h)
        self.fusion_dropout = nn.Dropout(float(c["dropout"]))
        self.fusion_2 = nn.Linear(3 * h, 1)
        layer = nn.TransformerEncoderLayer(d_model=h, nhead=int(c["fusion_heads"]),
                                           dim_feedforward=int(c["fusion_ff_dim"]),
                                           dropout=float(c["fusion_dropout"]), batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.steps = AccumulatedSteps(int(c["update_epochs"]))

    # ------------------------------------------------------------------ encoders
    def _lengths(self, batch: Batch, modality: str, padded: int) -> torch.Tensor:
        if self.config["pack_with_text_length"]:
            return batch.text_lengths.clamp(max=padded)
        return batch.audio_lengths if modality == "audio" else batch.vision_lengths

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """Utterance vector: masked mean of the text states (B, D_t), or the RNN stack's final states."""
        if modality == "text":
            states = self.text_encoder(batch)
            mask = batch.text_mask[:, :states.shape[1]].to(states.dtype)
            total = (states * mask[..., None]).sum(dim=1)
            return total / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        if modality in ("audio", "vision"):
            x = batch.audio if modality == "audio" else batch.vision
            encoder = self.audio_encoder if modality == "audio" else self.vision_encoder
            return encoder(x, self._lengths(batch, modality, x.shape[1]))
        raise ValueError(f"misa: unknown modality {modality!r}")

    def represent(self, encoded: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Projections ``orig``, ``private`` and ``shared`` codes per modality."""
        orig = {m: self.project[m](encoded[m]) for m in ORDER}
        return {"orig": orig, "private": {m: torch.sigmoid(self.private[m](orig[m])) for m in ORDER},
                "shared": {m: torch.sigmoid(self.shared(orig[m])) for m in ORDER}}

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        codes = self.represent(encoded)
        tokens = torch.stack([codes["private"][m] for m in ORDER] + [codes["shared"][m] for m in ORDER], dim=1)
        h = self.transformer(tokens).flatten(1)
        pred = self.fusion_2(F.relu(self.fusion_dropout(self.fusion_1(h)))).squeeze(-1)
        aux = self.auxiliary_losses(codes) if self.training else {}
        return Output(pred=pred, aux_losses=aux)

    def forward(self, batch: Batch) -> Output:
        # MMSA's order: BERT, then vision, then audio (matters only for dropout random numbers)
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in ORDER})

    # ------------------------------------------------------------------ objective
    def auxiliary_losses(self, codes: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``diff`` (6 pairs, summed), ``cmd`` (3 pairs of shared codes, mean), ``recon`` (mean of 3 MSEs)."""
        # float32 under autocast (5th moments in bf16 lose too much); the reconstructions too
        p, s, orig = ({m: t.float() for m, t in codes[k].items()} for k in ("private", "shared", "orig"))
        diff = (diff_loss(p["text"], s["text"]) + diff_loss(p["vision"], s["vision"])
                + diff_loss(p["audio"], s["audio"]) + diff_loss(p["audio"], p["text"])
                + diff_loss(p["audio"], p["vision"]) + diff_loss(p["text"], p["vision"]))
        moments = int(self.config["cmd_moments"])
        cmd = (cmd_loss(s["text"], s["vision"], moments) + cmd_loss(s["text"], s["audio"], moments)
               + cmd_loss(s["audio"], s["vision"], moments)) / 3.0
        with torch.autocast(device_type=p["text"].device.type, enabled=False):
            recon = sum(F.mse_loss(self.recon[m](p[m] + s[m]), orig[m]) for m in ORDER) / 3.0
        return {"diff": diff, "cmd": cmd, "recon": recon}

    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """``MSE + diff_weight diff + sim_weight cmd + recon_weight recon`` (MMSA's trainer)."""
        c = self.config
        main = self.criterion(output.pred, batch.labels)
        total, parts = main, {"criterion": float(main.detach())}
        weights = {"diff": float(c["diff_weight"]), "cmd": float(c["sim_weight"]), "recon": float(c["recon_weight"])}
        for key, value in output.aux_losses.items():
            total = total + weights[key] * value
            parts[key] = float(value.detach())
        return total, parts

    # ------------------------------------------------------------------ training (MMSA's trainer)
    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=float(self.config["lr"]))
        self.steps.reset(steps_per_epoch)
        return [optimizer], []

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        return accumulated_training_step(self, batch, optimizers, self.steps)


#: MMSA ``MISA`` state-dict keys -> ours (first full match; None = not kept: modules MMSA builds but never uses).
MMSA_KEY_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(?:Model\.)?bertmodel\.model\.(.*)", r"text_encoder.model.\1"),
    (r"(?:Model\.)?vrnn([12])\.(.*)", r"vision_encoder.rnn\1.\2"),
    (r"(?:Model\.)?arnn([12])\.(.*)", r"audio_encoder.rnn\1.\2"),
    (r"(?:Model\.)?vlayer_norm\.(.*)", r"vision_encoder.layer_norm.\1"),
    (r"(?:Model\.)?alayer_norm\.(.*)", r"audio_encoder.layer_norm.\1"),
    (r"(?:Model\.)?tlayer_norm\..*", None),
    (r"(?:Model\.)?sp_discriminator\..*", None),
    (r"(?:Model\.)?project_t\.project_t\.(.*)", r"project.text.linear.\1"),
    (r"(?:Model\.)?project_v\.project_v\.(.*)", r"project.vision.linear.\1"),
    (r"(?:Model\.)?project_a\.project_a\.(.*)", r"project.audio.linear.\1"),
    (r"(?:Model\.)?project_t\.project_t_layer_norm\.(.*)", r"project.text.norm.\1"),
    (r"(?:Model\.)?project_v\.project_v_layer_norm\.(.*)", r"project.vision.norm.\1"),
    (r"(?:Model\.)?project_a\.project_a_layer_norm\.(.*)", r"project.audio.norm.\1"),
    (r"(?:Model\.)?private_t\.private_t_1\.(.*)", r"private.text.\1"),
    (r"(?:Model\.)?private_v\.private_v_1\.(.*)", r"private.vision.\1"),
    (r"(?:Model\.)?private_a\.private_a_3\.(.*)", r"private.audio.\1"),
    (r"(?:Model\.)?shared\.shared_1\.(.*)", r"shared.\1"),
    (r"(?:Model\.)?recon_t\.recon_t_1\.(.*)", r"recon.text.\1"),
    (r"(?:Model\.)?recon_v\.recon_v_1\.(.*)", r"recon.vision.\1"),
    (r"(?:Model\.)?recon_a\.recon_a_1\.(.*)", r"recon.audio.\1"),
    (r"(?:Model\.)?fusion\.fusion_layer_1\.(.*)", r"fusion_1.\1"),
    (r"(?:Model\.)?fusion\.fusion_layer_3\.(.*)", r"fusion_2.\1"),
    (r"(?:Model\.)?transformer_encoder\.(.*)", r"transformer.\1"),
)


def from_mmsa_state_dict(state: Mapping[str, torch.Tensor]):
    """Rename an MMSA ``MISA`` (or ``AMIO``-wrapped) state dict for :class:`MISA` (see :data:`MMSA_KEY_RULES`)."""
    return map_state_dict(state, MMSA_KEY_RULES)
