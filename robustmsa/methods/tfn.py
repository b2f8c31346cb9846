"""TFN: Tensor Fusion Network, as benchmarked in MMSA.

Paper: Zadeh, Chen, Poria, Cambria, Morency, "Tensor Fusion Network for Multimodal Sentiment Analysis", EMNLP 2017.
Reference: ``thuiar/MMSA@a94e65d`` (MIT; identical in ``mmsa==2.2.1``): ``src/MMSA/models/singleTask/TFN.py``,
``models/subNets/FeatureNets.py`` (``SubNet``, ``TextSubNet``), trainer ``trains/singleTask/TFN.py``; per-dataset
hyper-parameters from ``config/config_regression.json`` (``tfn``) in ``tfn.yaml`` beside this file. Written from
MMSA's behaviour, not copied; outputs equal MMSA's (``tests/test_mmsa_parity_classic.py``).

1. audio and vision averaged over time (MMSA's ``need_normalized``: over the **padded** axis by default), each
   through ``SubNet`` (BatchNorm, dropout, three ReLU layers); text tokens through ``TextSubNet`` (one-layer LSTM,
   final hidden state, linear to ``text_out``; its dropout is 0 with one layer, so the configured text dropout is
   unused, as in MMSA);
2. tensor fusion: a 1 is prepended to each vector and the outer product ``audio x video x text`` is flattened
   (audio index slowest, text fastest, as MMSA's two ``bmm`` calls), size ``(a+1)(v+1)(t+1)``;
3. dropout, ``Linear -> ReLU -> Linear -> ReLU -> Linear(1)``;
4. ``sigmoid(y) * 6 - 3``: MMSA's constant output range (-3, 3), kept for SIMS (labels in [-1, 1]) too.

Training as MMSA's trainer: L1 loss, Adam at ``lr`` without weight decay over every parameter except the two
output-range constants (here buffers, ``output_range`` and ``output_shift``), early stopping 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import ConfigError, register_method
from .classic_blocks import PooledSubnetMethod

__all__ = ["TFN", "tensor_fusion"]


def tensor_fusion(audio_h: torch.Tensor, video_h: torch.Tensor, text_h: torch.Tensor) -> torch.Tensor:
    """Flattened outer product of ``[1, audio]``, ``[1, video]``, ``[1, text]``: (B, (a+1)(v+1)(t+1))."""
    one = audio_h.new_ones(audio_h.shape[0], 1)
    a, v, t = (torch.cat([one, h], dim=1) for h in (audio_h, video_h, text_h))
    return torch.einsum("ba,bv,bt->bavt", a, v, t).reshape(audio_h.shape[0], -1)


@register_method
class TFN(PooledSubnetMethod):
    """Tensor Fusion Network (MMSA ``TFN``)."""

    name = "tfn"
    paper = "Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP 2017"
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/TFN.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config, text_out=int(config["text_out"]))
        c = self.config
        _, audio_hidden, video_hidden = (int(h) for h in c["hidden_dims"])
        fused = (int(c["text_out"]) + 1) * (video_hidden + 1) * (audio_hidden + 1)
        post = int(c["post_fusion_dim"])
        self.post_fusion_dropout = nn.Dropout(float(c["dropouts"][3]))
        self.post_fusion_layer_1 = nn.Linear(fused, post)
        self.post_fusion_layer_2 = nn.Linear(post, post)
        self.post_fusion_layer_3 = nn.Linear(post, 1)
        low, high = (float(x) for x in c["output_range"])
        if not high > low:
            raise ConfigError(f"tfn: output_range must be [low, high] with high > low, got {c['output_range']!r}")
        self.register_buffer("output_range", torch.tensor([high - low]))
        self.register_buffer("output_shift", torch.tensor([low]))

    def fuse(self, text_h: torch.Tensor, audio_h: torch.Tensor, video_h: torch.Tensor) -> torch.Tensor:
        x = self.post_fusion_dropout(tensor_fusion(audio_h, video_h, text_h))
        x = F.relu(self.post_fusion_layer_1(x))
        x = F.relu(self.post_fusion_layer_2(x))
        y = torch.sigmoid(self.post_fusion_layer_3(x)) * self.output_range + self.output_shift
        return y.squeeze(-1)

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=float(self.config["lr"]),
                                     weight_decay=float(self.config["weight_decay"]))
        return [optimizer], []
