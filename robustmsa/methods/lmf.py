"""LMF: Low-rank Multimodal Fusion, as benchmarked in MMSA, with its fusion weights trained.

Paper: Liu, Shen, Lakshminarasimhan, Liang, Zadeh, Morency, "Efficient Low-rank Multimodal Fusion with
Modality-Specific Factors", ACL 2018. Reference: ``thuiar/MMSA@a94e65d`` (MIT; identical in ``mmsa==2.2.1``):
``src/MMSA/models/singleTask/LMF.py``, ``models/subNets/FeatureNets.py``, trainer ``trains/singleTask/LMF.py``;
per-dataset hyper-parameters from ``config/config_regression.json`` (``lmf``) in ``lmf.yaml``. Written from MMSA's
behaviour, not copied; outputs equal MMSA's (``tests/test_mmsa_parity_classic.py``).

1. the encoders of TFN (:class:`~robustmsa.methods.classic_blocks.PooledSubnetMethod`), with ``text_out`` fixed to
   ``hidden_dims[0] // 2`` as in MMSA;
2. low-rank fusion: with ``z_m = [1, h_m]``, ``f_m = z_m W_m`` for rank-many factors ``W_m`` (rank, d_m + 1, 1),
   ``y = sum_r w_r prod_m f_m[r] + b`` (``fusion_weights`` w (1, rank), ``fusion_bias`` b); factors and ``w`` are
   Xavier-normal, ``b`` is 0. MMSA's ``post_fusion_dropout`` is built but never applied; ours is not built (the
   fourth ``dropouts`` entry is unused).

**Training deviation (documented in docs/methods.md).** MMSA's trainer builds
``Adam([{params: parameters()[:3], lr: factor_lr}, {params: parameters()[5:], lr: learning_rate}], weight_decay)``:
positions 0-2 are the three factors, but positions 3 and 4, ``fusion_weights`` and ``fusion_bias``, are in no
group, so they keep their initial values for the whole run (the same slicing is in the authors' release,
``Justin1904/Low-rank-Multimodal-Fusion:train_mosi.py``). Here they are trained with the factors at ``factor_lr``
(``train_fusion_weights: true``, default); ``train_fusion_weights: false`` reproduces MMSA's optimiser exactly.
Loss L1, Adam with ``weight_decay`` on both groups, early stopping 8, as MMSA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.init import xavier_normal_

from ..datasets.split import DatasetSpec
from .base import register_method
from .classic_blocks import PooledSubnetMethod

__all__ = ["LMF", "low_rank_fusion"]


def low_rank_fusion(hs: list[torch.Tensor], factors: list[torch.Tensor], weights: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
    """``sum_r weights[r] * prod_m ([1, h_m] @ factors_m[r]) + bias``: (B, out)."""
    product = None
    for h, factor in zip(hs, factors):
        z = torch.cat([h.new_ones(h.shape[0], 1), h], dim=1)
        f = torch.einsum("bd,rdo->bro", z, factor)
        product = f if product is None else product * f
    return torch.einsum("r,bro->bo", weights[0], product) + bias


@register_method
class LMF(PooledSubnetMethod):
    """Low-rank Multimodal Fusion (MMSA ``LMF``; fusion weights trained, see the module docstring)."""

    name = "lmf"
    paper = "Liu et al., Efficient Low-rank Multimodal Fusion with Modality-Specific Factors, ACL 2018"
    reference = "thuiar/MMSA@a94e65d src/MMSA/models/singleTask/LMF.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        text_hidden, audio_hidden, video_hidden = (int(h) for h in config["hidden_dims"])
        super().__init__(spec, config, text_out=text_hidden // 2)
        rank = int(self.config["rank"])
        # created and initialised in MMSA's order, so that a seed gives MMSA's initial weights
        self.audio_factor = nn.Parameter(torch.empty(rank, audio_hidden + 1, 1))
        self.video_factor = nn.Parameter(torch.empty(rank, video_hidden + 1, 1))
        self.text_factor = nn.Parameter(torch.empty(rank, text_hidden // 2 + 1, 1))
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, 1))
        for parameter in (self.audio_factor, self.video_factor, self.text_factor, self.fusion_weights):
            xavier_normal_(parameter)

    def fuse(self, text_h: torch.Tensor, audio_h: torch.Tensor, video_h: torch.Tensor) -> torch.Tensor:
        out = low_rank_fusion([audio_h, video_h, text_h], [self.audio_factor, self.video_factor, self.text_factor],
                              self.fusion_weights, self.fusion_bias)
        return out.squeeze(-1)

    def factor_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at ``factor_lr``: the factors, and the fusion weights unless reproducing MMSA."""
        params = [self.audio_factor, self.video_factor, self.text_factor]
        if self.config["train_fusion_weights"]:
            params += [self.fusion_weights, self.fusion_bias]
        return params

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        fusion = {id(p) for p in (self.audio_factor, self.video_factor, self.text_factor, self.fusion_weights,
                                  self.fusion_bias)}
        others = [p for p in self.parameters() if id(p) not in fusion and p.requires_grad]
        optimizer = torch.optim.Adam([{"params": self.factor_parameters(), "lr": float(self.config["factor_lr"])},
                                      {"params": others, "lr": float(self.config["lr"])}],
                                     weight_decay=float(self.config["weight_decay"]))
        return [optimizer], []
