"""Building blocks shared by the classic MMSA baselines (TFN, LMF, EF-LSTM, MFN).

- :func:`align_to_length`: MMSA's ``AlignSubNet(mode='avg_pool')`` (``models/subNets/AlignNets.py``), which the
  MMSA models with ``need_model_aligned: true`` (EF-LSTM, MFN) apply whenever the audio/vision lengths differ from
  the text length. ``avg_pool`` is ``thuiar/MMSA@a94e65d`` (GitHub HEAD): contiguous windows; ``avg_pool_strided``
  is the PyPI release ``mmsa==2.2.1``, whose reshape averages frames ``dst_len`` apart (fixed upstream in 80995e4).
- :func:`require_aligned`: the ConfigError for ``alignment: require`` on unaligned data, naming the aligned variant.
- :func:`load_mmsa_state_dict`: loads a ``state_dict`` of MMSA's model (``AMIO`` or the bare class) into ours; the
  key map is the identity after stripping the ``Model.`` (AMIO) and ``module.`` (DataParallel) prefixes, because our
  modules keep MMSA's attribute names.
- :func:`choose`: validates a string option and names the valid choices.
- :class:`PooledSubnetMethod`: the pre-fusion half of TFN and LMF (MMSA's ``SubNet`` on time-averaged audio and
  vision, ``TextSubNet`` on the text tokens), with per-modality encoders for the engine's encoding reuse.

Nothing here is copied from MMSA; the behaviour is written from reading it (details in ``docs/methods.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output
from .lf_dnn import SubNet, TextSubNet, time_average
from .text_encoders import build_text_encoder

__all__ = [
    "ALIGNMENTS",
    "AVERAGES",
    "PooledSubnetMethod",
    "align_to_length",
    "aligned_variant",
    "choose",
    "load_mmsa_state_dict",
    "mmsa_key",
    "require_aligned",
]

ALIGNMENTS = ("avg_pool", "avg_pool_strided", "require")
AVERAGES = ("padded", "valid")
MMSA_PREFIXES = ("module.", "Model.")


def choose(config: Mapping[str, Any], key: str, options: Sequence[str], method: str) -> str:
    """``config[key]`` if it is one of ``options``, else a ConfigError naming them."""
    value = config[key]
    if value not in options:
        raise ConfigError(f"{method}: {key} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)


def align_to_length(x: torch.Tensor, dst_len: int, mode: str) -> torch.Tensor:
    """(B, L, D) -> (B, dst_len, D) by MMSA's average pooling over the padded time axis.

    ``L == dst_len`` is returned unchanged. Otherwise the sequence is padded at the end with copies of its last
    (padded) frame to ``p * dst_len`` frames, ``p = ceil(L / dst_len)``, and averaged in groups of ``p``: contiguous
    windows ``[j p, (j + 1) p)`` (``avg_pool``, MMSA HEAD) or the frames ``j, j + dst_len, ...`` (``avg_pool_strided``,
    mmsa 2.2.1). Valid lengths are not used, as in MMSA.
    """
    batch, length, dim = x.shape
    if length == dst_len:
        return x
    pool = -(-length // dst_len)
    pad = pool * dst_len - length
    if pad:
        x = torch.cat([x, x[:, -1:, :].expand(batch, pad, dim)], dim=1)
    if mode == "avg_pool":
        return x.reshape(batch, dst_len, pool, dim).mean(dim=2)
    if mode == "avg_pool_strided":
        return x.reshape(batch, pool, dst_len, dim).mean(dim=1)
    raise ConfigError(f"alignment must be 'avg_pool' or 'avg_pool_strided' to align, got {mode!r}")


def aligned_variant(spec: DatasetSpec) -> str | None:
    """The registered word-aligned variant of ``spec``'s dataset (``mosi`` -> ``mosi-aligned``), if any."""
    from ..datasets.registry import list_datasets

    base = spec.name.removesuffix("-aligned")
    candidate = f"{base}-aligned"
    return candidate if candidate in list_datasets() else None


def require_aligned(method: str, spec: DatasetSpec) -> None:
    """Raise a ConfigError unless ``spec`` is word-aligned (``alignment: require``)."""
    lengths = spec.seq_lens
    if spec.aligned and lengths["audio"] == lengths["text"] == lengths["vision"]:
        return
    shape = f"text {lengths['text']}, audio {lengths['audio']}, vision {lengths['vision']} steps"
    variant = aligned_variant(spec)
    where = (f"use {variant!r} (MMSA's aligned_50.pkl)" if variant else
             f"no word-aligned variant of {spec.name!r} is registered (MMSA has none for SIMS and aligns it "
             f"with avg_pool)")
    raise ConfigError(f"{method} with alignment=require needs word-aligned data, but dataset {spec.name!r} is "
                      f"unaligned ({shape}): {where}; or set alignment=avg_pool to apply MMSA's AlignSubNet "
                      f"average pooling to the text length")


def mmsa_key(key: str) -> str:
    """An MMSA state-dict key in our naming: the ``module.`` / ``Model.`` prefixes stripped."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in MMSA_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_mmsa_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load an MMSA ``state_dict`` (AMIO or bare model) into ``model``; every mismatch is one ValueError."""
    mapped = {mmsa_key(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    ours = {k for k in own if not k.startswith("text_encoder.")}
    missing = sorted(ours - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)}, model {tuple(own[k].shape)}"
                    for k in ours & set(mapped) if tuple(mapped[k].shape) != tuple(own[k].shape))
    problems = [f"{label}: {', '.join(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
    if problems:
        raise ValueError(f"cannot load the MMSA state dict into {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({**own, **mapped})


class PooledSubnetMethod(Method):
    """TFN / LMF's shared encoders: ``SubNet`` on time-averaged audio and vision, an LSTM ``TextSubNet`` on text.

    Audio and vision are averaged over time as MMSA's ``need_normalized`` does (``average: padded``: over the padded
    axis; ``valid``: over the valid frames, 0 when absent). Modules are created in MMSA's order (audio, video, text),
    so a seed gives MMSA's initial weights. Subclasses build their fusion and implement :meth:`fuse`.
    """

    unimodal_encoders = ("text", "audio", "vision")

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any], text_out: int) -> None:
        super().__init__(spec, config)
        c = self.config
        choose(c, "average", AVERAGES, self.name)
        self.text_encoder = build_text_encoder(c["text_backbone"], spec, finetune=bool(c.get("finetune_text", True)))
        text_hidden, audio_hidden, video_hidden = (int(h) for h in c["hidden_dims"])
        audio_drop, video_drop, _text_drop_unused, _fusion_drop = c["dropouts"]
        self.audio_subnet = SubNet(spec.dims["audio"], audio_hidden, float(audio_drop))
        self.video_subnet = SubNet(spec.dims["vision"], video_hidden, float(video_drop))
        self.text_subnet = TextSubNet(self.text_encoder.out_dim, text_hidden, text_out)

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """The pre-fusion vector of one modality: ``text_subnet``, ``audio_subnet`` or ``video_subnet`` output."""
        if modality == "text":
            return self.text_subnet(self.text_encoder(batch))
        if modality == "audio":
            return self.audio_subnet(time_average(batch.audio, batch.audio_lengths, self.config["average"]))
        if modality == "vision":
            return self.video_subnet(time_average(batch.vision, batch.vision_lengths, self.config["average"]))
        raise ValueError(f"{self.name}: unknown modality {modality!r}")

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        """The fusion head on precomputed encodings."""
        return Output(pred=self.fuse(encoded["text"], encoded["audio"], encoded["vision"]))

    def forward(self, batch: Batch) -> Output:
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in self.unimodal_encoders})

    def fuse(self, text_h: torch.Tensor, audio_h: torch.Tensor, video_h: torch.Tensor) -> torch.Tensor:
        """(B,) predictions from the three pre-fusion vectors."""
        raise NotImplementedError
