"""LF-DNN: MMSA's late-fusion DNN on time-averaged audio/vision features and an LSTM over text.

Paper: Williams et al., "Recognizing Emotions in Video Using Multimodal DNN Feature Fusion" (ACL 2018 workshop);
benchmarked in MMSA. Reference: ``thuiar/MMSA@a94e65d:src/MMSA/models/singleTask/LF_DNN.py`` and
``models/subNets/FeatureNets.py`` (SubNet, TextSubNet), trainer ``trains/singleTask/LF_DNN.py``; hyper-parameters
from ``config/config_regression.json`` (``lf_dnn``), in ``lf_dnn.yaml`` beside this file.

It is the baseline robustness summaries normalise against (ImageNet-C style CE / relative CE).

Faithful to MMSA, including two quirks worth knowing:
- audio and vision are averaged over the **padded** time axis (MMSA's ``need_normalized``), so a sample's averages
  scale with its valid length; ``average: valid`` averages over valid frames instead (a documented option, off by default);
- the text LSTM has one layer, so MMSA's ``TextSubNet`` sets its dropout to 0: the configured text dropout is unused.
Training as MMSA: L1 loss, Adam with L2 weight decay, selection on validation loss, early stopping 8.

Absent modalities (length 0, zero frames; or ``data build``'s (N, 1, 1) zeros) average to 0, as in MMSA; nothing is
repaired. Encoding reuse: the three sub-networks are the ``unimodal_encoders`` (``encode_modality``), the post-fusion
layers ``forward_encoded``; ``forward`` runs them in MMSA's order (audio, video, text).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .text_encoders import build_text_encoder

__all__ = ["LFDNN"]


class SubNet(nn.Module):
    """BatchNorm -> dropout -> three ReLU layers (MMSA ``SubNet``)."""

    def __init__(self, in_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_size)
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(x))
        return F.relu(self.linear_3(F.relu(self.linear_2(F.relu(self.linear_1(x))))))


class TextSubNet(nn.Module):
    """One-layer LSTM over the token states, final hidden state -> linear (MMSA ``TextSubNet``; dropout 0)."""

    def __init__(self, in_size: int, hidden: int, out_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden, num_layers=1, batch_first=True)
        self.linear_1 = nn.Linear(hidden, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.rnn(x)
        return self.linear_1(h_n[0])


def time_average(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean over time: over the padded axis (MMSA) or over each sample's valid frames (0 when absent)."""
    if mode == "padded":
        return x.mean(dim=1)
    if mode == "valid":
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        return (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    raise ConfigError(f"lf_dnn: average must be 'padded' or 'valid', got {mode!r}")


@register_method
class LFDNN(Method):
    """Late-fusion DNN (MMSA ``LF_DNN``)."""

    name = "lf_dnn"
    paper = "Williams et al., ACL 2018 Grand Challenge and Workshop on Human Multimodal Language"
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/LF_DNN.py"

    def __init__(self, spec: DatasetSpec, config: dict) -> None:
        super().__init__(spec, config)
        c = self.config
        self.text_encoder = build_text_encoder(c["text_backbone"], spec, finetune=bool(c.get("finetune_text", True)))
        text_hidden, audio_hidden, video_hidden = c["hidden_dims"]
        audio_drop, video_drop, _text_drop_unused, fusion_drop = c["dropouts"]
        self.audio_subnet = SubNet(spec.dims["audio"], audio_hidden, audio_drop)
        self.video_subnet = SubNet(spec.dims["vision"], video_hidden, video_drop)
        self.text_subnet = TextSubNet(self.text_encoder.out_dim, text_hidden, c["text_out"])
        self.post_fusion_dropout = nn.Dropout(fusion_drop)
        fused = c["text_out"] + video_hidden + audio_hidden
        self.post_fusion_layer_1 = nn.Linear(fused, c["post_fusion_dim"])
        self.post_fusion_layer_2 = nn.Linear(c["post_fusion_dim"], c["post_fusion_dim"])
        self.post_fusion_layer_3 = nn.Linear(c["post_fusion_dim"], 1)

    #: The three sub-networks read one modality each (BatchNorm uses its running statistics in eval mode).
    unimodal_encoders = ("text", "audio", "vision")

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """A sub-network's output: ``audio_subnet`` / ``video_subnet`` on the time average, ``text_subnet``."""
        if modality == "audio":
            return self.audio_subnet(time_average(batch.audio, batch.audio_lengths, self._average))
        if modality == "vision":
            return self.video_subnet(time_average(batch.vision, batch.vision_lengths, self._average))
        if modality == "text":
            return self.text_subnet(self.text_encoder(batch))
        raise ValueError(f"lf_dnn: unknown modality {modality!r}")

    @property
    def _average(self) -> str:
        return self.config.get("average", "padded")

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        x = self.post_fusion_dropout(torch.cat([encoded["audio"], encoded["vision"], encoded["text"]], dim=-1))
        x = F.relu(self.post_fusion_layer_1(x))
        x = F.relu(self.post_fusion_layer_2(x))
        return Output(pred=self.post_fusion_layer_3(x).squeeze(-1))

    def forward(self, batch: Batch) -> Output:
        # MMSA's order (audio, video, text): the same dropout draws in training
        encoded = {m: self.encode_modality(batch, m) for m in ("audio", "vision", "text")}
        return self.forward_encoded(batch, encoded)

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        optimizer = torch.optim.Adam(self.parameters(), lr=float(self.config["lr"]),
                                     weight_decay=float(self.config["weight_decay"]))
        return [optimizer], []
