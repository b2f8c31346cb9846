"""EF-LSTM: early-fusion LSTM over per-step concatenated text, audio and vision, as benchmarked in MMSA.

Papers: Williams et al., "Recognizing Emotions in Video Using Multimodal DNN Feature Fusion" (ACL 2018 workshop);
the MMSA benchmark. Reference: ``thuiar/MMSA@a94e65d`` (MIT): ``src/MMSA/models/singleTask/EF_LSTM.py``,
``models/AMIO.py`` + ``models/subNets/AlignNets.py`` (``AlignSubNet``, ``avg_pool``), trainer
``trains/singleTask/EF_LSTM.py``; per-dataset hyper-parameters from ``config/config_regression.json`` (``ef_lstm``)
in ``ef_lstm.yaml``. Written from MMSA's behaviour, not copied; outputs equal MMSA's
(``tests/test_mmsa_parity_classic.py``).

1. **alignment.** MMSA runs EF-LSTM with ``need_data_aligned`` (MOSI / MOSEI: ``aligned_50.pkl``) and
   ``need_model_aligned`` (``AlignSubNet('avg_pool')``: audio and vision average-pooled to the text length whenever
   the lengths differ; that is how MMSA runs SIMS, which has no aligned file, and any unaligned feature file).
   ``alignment: avg_pool`` (default) does the same with MMSA HEAD's contiguous windows; ``avg_pool_strided`` is
   mmsa 2.2.1's reshape (frames ``L_t`` apart averaged); ``require`` refuses unaligned data with a ConfigError that
   names the aligned variant (``mosi-aligned``). Aligned data passes unchanged;
2. ``x = [text, audio, vision]`` per step, then ``BatchNorm1d(L_t)``: the **time steps are the channels** (each step
   normalised over batch and all features of all modalities), as MMSA;
3. an LSTM (``num_layers``, inter-layer ``dropout``) over all ``L_t`` steps, padding included (no lengths, as
   MMSA); the last layer's final hidden state -> dropout -> ``Linear -> ReLU`` -> dropout -> ``Linear(1)``.

Training as MMSA's trainer: L1 loss, Adam with L2 ``weight_decay``, early stopping 8. Early fusion reads every
modality from its first operation, so there are no unimodal encoders to reuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, Method, Output, register_method
from .classic_blocks import ALIGNMENTS, align_to_length, choose, require_aligned
from .text_encoders import build_text_encoder

__all__ = ["EFLSTM"]


@register_method
class EFLSTM(Method):
    """Early-fusion LSTM (MMSA ``EF_LSTM`` behind ``AMIO``'s average-pool alignment)."""

    name = "ef_lstm"
    paper = "Williams et al., ACL 2018 Grand Challenge and Workshop on Human Multimodal Language (MMSA benchmark)"
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/EF_LSTM.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        if choose(c, "alignment", ALIGNMENTS, self.name) == "require":
            require_aligned(self.name, spec)
        self.text_encoder = build_text_encoder(c["text_backbone"], spec, finetune=bool(c.get("finetune_text", True)))
        in_size = self.text_encoder.out_dim + spec.dims["audio"] + spec.dims["vision"]
        hidden, layers, dropout = int(c["hidden_dims"]), int(c["num_layers"]), float(c["dropout"])
        self.steps = int(spec.seq_lens["text"])
        self.norm = nn.BatchNorm1d(self.steps)
        self.lstm = nn.LSTM(in_size, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                            batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def fused_input(self, batch: Batch) -> torch.Tensor:
        """Text, audio and vision concatenated per text step (audio/vision aligned when their lengths differ)."""
        text = self.text_encoder(batch)
        steps = text.shape[1]
        mode = self.config["alignment"]
        audio, vision = batch.audio, batch.vision
        if audio.shape[1] != steps or vision.shape[1] != steps:
            if mode == "require":
                raise ValueError(f"ef_lstm (alignment=require): the batch is not aligned (text {steps}, audio "
                                 f"{audio.shape[1]}, vision {vision.shape[1]} steps)")
            audio, vision = align_to_length(audio, steps, mode), align_to_length(vision, steps, mode)
        return torch.cat([text, audio, vision], dim=-1)

    def forward(self, batch: Batch) -> Output:
        x = self.norm(self.fused_input(batch))
        _, (h_n, _) = self.lstm(x)
        x = self.dropout(h_n[-1])
        x = self.dropout(F.relu(self.linear(x)))
        return Output(pred=self.out(x).squeeze(-1))

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        optimizer = torch.optim.Adam(self.parameters(), lr=float(self.config["lr"]),
                                     weight_decay=float(self.config["weight_decay"]))
        return [optimizer], []
