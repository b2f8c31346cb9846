"""MFN: Memory Fusion Network, as benchmarked in MMSA.

Paper: Zadeh, Liang, Mazumder, Poria, Cambria, Morency, "Memory Fusion Network for Multi-view Sequential Learning",
AAAI 2018. Reference: ``thuiar/MMSA@a94e65d`` (MIT; the model file equals ``mmsa==2.2.1`` up to tabs):
``src/MMSA/models/singleTask/MFN.py``, ``models/AMIO.py`` + ``models/subNets/AlignNets.py``, ``data_loader.py``
(``need_normalized``), trainer ``trains/singleTask/MFN.py``; per-dataset hyper-parameters from
``config/config_regression.json`` (``mfn``) in ``mfn.yaml``. Written from MMSA's behaviour, not copied; outputs
equal MMSA's (``tests/test_mmsa_parity_classic.py``).

**What MMSA actually feeds MFN.** Its config sets ``need_data_aligned``, ``need_model_aligned`` **and**
``need_normalized``: the loader first averages audio and vision over the padded time axis to one frame (N, 1, D),
then ``AlignSubNet('avg_pool')`` pads that single frame to the text length by repetition. So in MMSA the audio and
vision LSTMs see the same averaged vector at every text step, and alignment plays no role.
``av_input: average`` (default) reproduces this on any data (``average: padded`` as MMSA, or ``valid``);
``av_input: sequence`` feeds the per-step audio/vision of the paper instead, aligned like EF-LSTM (``alignment``:
``avg_pool`` / ``avg_pool_strided`` / ``require``).

Architecture (MMSA's; ``hidden_dims`` [text, audio, vision], memory ``memsize``, window 2):

1. one ``LSTMCell`` per modality over the ``L_t`` text steps (padding included, no lengths, as MMSA);
2. delta-memory attention at step t: ``c* = [c_{t-1}, c_t]`` (all three modalities, zeros before step 1);
   ``a = softmax(NN1(c*))``; ``c^ = tanh(NN2(a * c*))``;
3. multi-view gated memory: ``u = gamma1([a * c*, mem])``, ``g = gamma2([a * c*, mem])`` (sigmoid MLPs),
   ``mem <- u * mem + g * c^``;
4. output MLP on ``[h_l, h_a, h_v, mem]`` at the last step. Every MLP is ``Linear -> ReLU -> dropout -> Linear``.

Equivalent but faster evaluation order (same function): the LSTM input projections are one matrix product over all
steps; the attention (which never reads the memory) runs over all steps at once; only the memory update loops.
A modality's encoding (reused by the engine) is its LSTM's cell states at every step and its last hidden state.
Training as MMSA's trainer: L1 loss, Adam with L2 ``weight_decay``, early stopping 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .classic_blocks import ALIGNMENTS, AVERAGES, align_to_length, choose, require_aligned
from .lf_dnn import time_average
from .text_encoders import build_text_encoder

__all__ = ["MFN", "lstm_cell_states"]

AV_INPUTS = ("average", "sequence")


def lstm_cell_states(cell: nn.LSTMCell, x: torch.Tensor) -> torch.Tensor:
    """Run ``cell`` from a zero state over (B, T, D): every step's cell state, then the last hidden state (B, T+1, H).

    That is all MFN reads of a modality's LSTM (the memory attends to cell states, the output reads the last hidden
    state), so it is the modality's encoding.
    """
    batch, steps, _ = x.shape
    hidden = cell.hidden_size
    projected = F.linear(x, cell.weight_ih, cell.bias_ih)  # every step's input projection in one product
    h = x.new_zeros(batch, hidden)
    c = x.new_zeros(batch, hidden)
    cs = []
    for t in range(steps):
        gates = projected[:, t] + F.linear(h, cell.weight_hh, cell.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        cs.append(c)
    return torch.stack(cs + [h], dim=1)


@register_method
class MFN(Method):
    """Memory Fusion Network (MMSA ``MFN`` with MMSA's time-averaged audio/vision by default)."""

    name = "mfn"
    paper = "Zadeh et al., Memory Fusion Network for Multi-view Sequential Learning, AAAI 2018"
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/MFN.py"
    unimodal_encoders = ("text", "audio", "vision")

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        choose(c, "average", AVERAGES, self.name)
        sequence = choose(c, "av_input", AV_INPUTS, self.name) == "sequence"
        if sequence and choose(c, "alignment", ALIGNMENTS, self.name) == "require":
            require_aligned(self.name, spec)
        if int(c["windowsize"]) != 2:
            raise ConfigError(f"mfn: windowsize must be 2 (the attention window is the previous and the current "
                              f"step's cell states, as in MMSA, whose model crashes otherwise), "
                              f"got {c['windowsize']!r}")
        self.text_encoder = build_text_encoder(c["text_backbone"], spec, finetune=bool(c.get("finetune_text", True)))
        self.steps = int(spec.seq_lens["text"])
        dh_l, dh_a, dh_v = (int(h) for h in c["hidden_dims"])
        total, mem = dh_l + dh_a + dh_v, int(c["memsize"])
        att_in = 2 * total
        # created in MMSA's order, so that a seed gives MMSA's initial weights
        self.lstm_l = nn.LSTMCell(self.text_encoder.out_dim, dh_l)
        self.lstm_a = nn.LSTMCell(spec.dims["audio"], dh_a)
        self.lstm_v = nn.LSTMCell(spec.dims["vision"], dh_v)
        self.att1_fc1, self.att1_fc2, self.att1_dropout = self._mlp(att_in, c["NN1Config"], att_in)
        self.att2_fc1, self.att2_fc2, self.att2_dropout = self._mlp(att_in, c["NN2Config"], mem)
        self.gamma1_fc1, self.gamma1_fc2, self.gamma1_dropout = self._mlp(att_in + mem, c["gamma1Config"], mem)
        self.gamma2_fc1, self.gamma2_fc2, self.gamma2_dropout = self._mlp(att_in + mem, c["gamma2Config"], mem)
        self.out_fc1, self.out_fc2, self.out_dropout = self._mlp(total + mem, c["outConfig"], 1)

    @staticmethod
    def _mlp(in_dim: int, spec: Mapping[str, Any], out_dim: int) -> tuple[nn.Linear, nn.Linear, nn.Dropout]:
        """MMSA's two-layer block from a ``{shapes, drop}`` entry: (fc1, fc2, dropout)."""
        hidden = int(spec["shapes"])
        return nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim), nn.Dropout(float(spec["drop"]))

    # ------------------------------------------------------------------ encoders
    def modality_input(self, batch: Batch, modality: str) -> torch.Tensor:
        """The (B, L_t, D) sequence one modality's LSTM reads (averaged or aligned audio/vision)."""
        if modality == "text":
            return self.text_encoder(batch)
        x = batch.audio if modality == "audio" else batch.vision
        lengths = batch.audio_lengths if modality == "audio" else batch.vision_lengths
        if self.config["av_input"] == "average":
            mean = time_average(x, lengths, self.config["average"])
            return mean[:, None, :].expand(x.shape[0], self.steps, x.shape[2])
        if x.shape[1] == self.steps:
            return x
        if self.config["alignment"] == "require":
            raise ValueError(f"mfn (alignment=require): {modality} has {x.shape[1]} steps, the text {self.steps}")
        return align_to_length(x, self.steps, self.config["alignment"])

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The modality's LSTM cell states at every step, then its last hidden state: (B, L_t + 1, H_m)."""
        cell = {"text": self.lstm_l, "audio": self.lstm_a, "vision": self.lstm_v}[modality]
        return lstm_cell_states(cell, self.modality_input(batch, modality))

    # ------------------------------------------------------------------ fusion
    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        """Delta-memory attention and the gated memory over the encoded state sequences."""
        states = [encoded[m] for m in ("text", "audio", "vision")]
        if len({s.shape[1] for s in states}) != 1:
            raise ValueError(f"mfn: the three state sequences must have the same number of steps, got "
                             f"{[s.shape[1] for s in states]} (text, audio, vision)")
        cells = torch.cat([s[:, :-1] for s in states], dim=-1)                        # (B, T, C)
        previous = torch.cat([torch.zeros_like(cells[:, :1]), cells[:, :-1]], dim=1)
        c_star = torch.cat([previous, cells], dim=-1)                                 # (B, T, 2C)
        attention = F.softmax(self.att1_fc2(self.att1_dropout(F.relu(self.att1_fc1(c_star)))), dim=-1)
        attended = attention * c_star
        c_hat = torch.tanh(self.att2_fc2(self.att2_dropout(F.relu(self.att2_fc1(attended)))))
        memory = self._memory(attended, c_hat)
        last = torch.cat([s[:, -1] for s in states] + [memory], dim=-1)
        return Output(pred=self.out_fc2(self.out_dropout(F.relu(self.out_fc1(last)))).squeeze(-1))

    def _memory(self, attended: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
        """The multi-view gated memory after the last step, (B, memsize)."""
        width = attended.shape[-1]
        gates = []
        for fc1, fc2, drop in ((self.gamma1_fc1, self.gamma1_fc2, self.gamma1_dropout),
                               (self.gamma2_fc1, self.gamma2_fc2, self.gamma2_dropout)):
            from_attended = F.linear(attended, fc1.weight[:, :width], fc1.bias)  # all steps at once
            gates.append((from_attended, fc1.weight[:, width:], fc2, drop))
        memory = c_hat.new_zeros(c_hat.shape[0], c_hat.shape[-1])
        for t in range(c_hat.shape[1]):
            gamma1, gamma2 = (torch.sigmoid(fc2(drop(F.relu(pre[:, t] + F.linear(memory, w_mem)))))
                              for pre, w_mem, fc2, drop in gates)
            memory = gamma1 * memory + gamma2 * c_hat[:, t]
        return memory

    def forward(self, batch: Batch) -> Output:
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in self.unimodal_encoders})

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        optimizer = torch.optim.Adam(self.parameters(), lr=float(self.config["lr"]),
                                     weight_decay=float(self.config["weight_decay"]))
        return [optimizer], []
