"""Input-coverage audit: which valid input positions actually influence a method's prediction.

A method that never looks at part of its input looks "robust" to corrupting that part (MMSA's MISA on unaligned
data packs audio and vision with the text length, so every frame past it is ignored). The audit measures, per
modality, the fraction of valid tokens/frames whose value changes the prediction, overall and per relative
position bucket (first quarter of each valid length, second quarter, ...), on a sample of test items.

Two probes:

- ``gradient`` (default): the prediction's gradient with respect to each valid input row; a position is used when
  the gradient is not exactly zero. An input a model never reads has an exactly zero gradient, so this finds
  structural blindness without false alarms, in one backward pass per batch. It needs float inputs: for a text
  backbone that reads ids (``hf:``, ``embedding``) the text probe falls back to occlusion.
- ``occlusion``: each valid position is changed (features: plus Gaussian noise of the split's per-feature std;
  ids: a different token id) and a position is used when the prediction moves by more than ``atol``.

Samples are chosen by an explicit seed; the model is evaluated in eval mode (per-sample predictions, which the
contract tests check for every method), so the gradient of the batch's summed prediction with respect to a
sample's input is that sample's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .datasets.split import MODALITIES, UNK_ID, Split

__all__ = ["ModalityCoverage", "CoverageReport", "input_coverage", "COVERAGE_THRESHOLD", "PROBES"]

COVERAGE_THRESHOLD = 0.9  # below this, robustness to corrupting the modality may reflect ignored input
PROBES = ("gradient", "occlusion")
_FEATURE_OF = {"text": "text", "audio": "audio", "vision": "vision"}


@dataclass
class ModalityCoverage:
    """Coverage of one modality: used / valid positions, overall and per relative position bucket."""

    modality: str
    probe: str
    valid: int
    used: int
    bucket_valid: list[int]
    bucket_used: list[int]

    @property
    def fraction(self) -> float:
        """Used valid positions / valid positions (NaN when the sample has no valid position)."""
        return self.used / self.valid if self.valid else float("nan")

    @property
    def bucket_fractions(self) -> list[float]:
        return [u / v if v else float("nan") for u, v in zip(self.bucket_used, self.bucket_valid)]

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "probe": self.probe, "valid": self.valid, "used": self.used,
                "fraction": self.fraction, "bucket_fractions": self.bucket_fractions,
                "bucket_valid": self.bucket_valid, "bucket_used": self.bucket_used}


@dataclass
class CoverageReport:
    """The audit of one model: per-modality coverage on ``samples`` test items."""

    method: str
    samples: list[int]
    buckets: int
    probe: str
    modalities: dict[str, ModalityCoverage] = field(default_factory=dict)

    def flagged(self, threshold: float = COVERAGE_THRESHOLD) -> list[str]:
        """Modalities whose coverage is below ``threshold`` (robustness to them may reflect ignored input)."""
        return [m for m, c in self.modalities.items() if c.valid and c.fraction < threshold]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "robustmsa.coverage", "method": self.method, "probe": self.probe, "buckets": self.buckets,
                "samples": self.samples, "threshold": COVERAGE_THRESHOLD, "flagged": self.flagged(),
                "modalities": {m: c.to_dict() for m, c in self.modalities.items()}}


def _bucket_of(positions: np.ndarray, lengths: np.ndarray, buckets: int) -> np.ndarray:
    """Relative position bucket of each (sample, position): floor(buckets * p / length)."""
    return np.minimum((buckets * positions) // np.maximum(lengths, 1), buckets - 1)


def _reads_text_features(model) -> bool:
    """Whether the method's text backbone reads the float ``text`` features (else ids: no input gradient)."""
    encoder = getattr(model, "text_encoder", None)
    return encoder is None or getattr(encoder, "kind", "features") == "features"


def _valid(split: Split, modality: str) -> np.ndarray:
    return split.valid_mask(modality)


def _coverage(modality: str, probe: str, used: np.ndarray, valid: np.ndarray, buckets: int) -> ModalityCoverage:
    lengths = valid.sum(axis=1)
    positions = np.broadcast_to(np.arange(valid.shape[1]), valid.shape)
    bucket = _bucket_of(positions, lengths[:, None], buckets)
    bucket_valid = [int((valid & (bucket == b)).sum()) for b in range(buckets)]
    bucket_used = [int((used & valid & (bucket == b)).sum()) for b in range(buckets)]
    return ModalityCoverage(modality, probe, int(valid.sum()), int((used & valid).sum()), bucket_valid, bucket_used)


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _gradient_used(model, tensors, modalities: Sequence[str], device, batch_size: int) -> dict[str, np.ndarray]:
    """Per modality (N, L) bool: the prediction's gradient w.r.t. that input row is non-zero."""
    import torch

    used = {m: [] for m in modalities}
    cudnn_off = torch.backends.cudnn.flags(enabled=False)  # cuDNN RNNs refuse backward in eval mode
    with cudnn_off:
        for part in _batches(len(tensors), batch_size):
            batch = tensors.batch(torch.arange(part.start, part.stop)).to(device)
            leaves = {}
            for modality in modalities:
                leaf = getattr(batch, _FEATURE_OF[modality]).detach().clone().requires_grad_(True)
                setattr(batch, _FEATURE_OF[modality], leaf)
                leaves[modality] = leaf
            with torch.enable_grad():
                pred = model(batch).pred.float()
                grads = torch.autograd.grad(pred.sum(), list(leaves.values()), allow_unused=True)
            for modality, grad in zip(leaves, grads):
                shape = leaves[modality].shape[:2]
                nonzero = torch.zeros(shape, dtype=torch.bool) if grad is None else (grad != 0).any(dim=-1).cpu()
                used[modality].append(nonzero.numpy())
    return {m: np.concatenate(v) for m, v in used.items()}


def _occlusion_used(model, tensors, split: Split, modalities: Sequence[str], device, batch_size: int,
                    rng: np.random.Generator, atol: float) -> dict[str, np.ndarray]:
    """Per modality (N, L) bool: changing that input row moves the prediction by more than ``atol``."""
    import torch

    from .corruptions.functional import feature_std

    with torch.no_grad():
        base = np.concatenate([model(tensors.batch(torch.arange(p.start, p.stop)).to(device)).pred.float().cpu()
                               .numpy() for p in _batches(len(tensors), batch_size)])
    out: dict[str, np.ndarray] = {}
    for modality in modalities:
        valid = _valid(split, modality)
        used = np.zeros(valid.shape, dtype=bool)
        if modality == "text" and not _reads_text_features(model):
            ids = np.asarray(split.text_bert[:, 0]).astype(np.int64)
            std = None
        else:
            features = np.asarray(getattr(split, modality))
            std = feature_std(features, valid).astype(np.float32)
            std[std == 0] = 1.0
        for i in range(len(split)):
            positions = np.flatnonzero(valid[i])
            for chunk in np.array_split(positions, max(1, int(np.ceil(len(positions) / batch_size)))):
                if chunk.size == 0:
                    continue
                copies = tensors.batch(torch.full((chunk.size,), i, dtype=torch.long))
                rows = torch.arange(chunk.size)
                cols = torch.from_numpy(chunk)
                if std is None:
                    current = torch.from_numpy(ids[i, chunk])
                    copies.text_ids = copies.text_ids.clone()
                    copies.text_ids[rows, cols] = torch.where(current == UNK_ID, UNK_ID + 3, UNK_ID)
                else:
                    name = _FEATURE_OF[modality]
                    value = getattr(copies, name).clone()
                    noise = rng.standard_normal((chunk.size, value.shape[-1])).astype(np.float32) * std
                    value[rows, cols] += torch.from_numpy(noise)
                    setattr(copies, name, value)
                with torch.no_grad():
                    moved = model(copies.to(device)).pred.float().cpu().numpy()
                used[i, chunk] = np.abs(moved - base[i]) > atol
        out[modality] = used
    return out


def input_coverage(model, split: Split, *, modalities: Sequence[str] = MODALITIES, samples: int = 64,
                   buckets: int = 4, probe: str = "gradient", seed: int = 0, device: str = "cpu",
                   batch_size: int = 32, atol: float = 1e-6) -> CoverageReport:
    """Audit ``model`` (a :class:`~robustmsa.methods.base.Method`) on ``samples`` items of ``split``."""
    import torch

    from .engine.batches import SplitTensors

    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if buckets < 1 or samples < 1:
        raise ValueError(f"buckets and samples must be >= 1, got {buckets} and {samples}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {', '.join(MODALITIES)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(split), size=min(samples, len(split)), replace=False))
    subset = split.select(chosen)
    tensors = SplitTensors.from_split(subset)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        gradient = [m for m in modalities if m != "text" or _reads_text_features(model)] if probe == "gradient" else []
        occluded = [m for m in modalities if m not in gradient]
        used = _gradient_used(model, tensors, gradient, device, batch_size) if gradient else {}
        if occluded:
            used.update(_occlusion_used(model, tensors, subset, occluded, device, batch_size, rng, atol))
    finally:
        model.train(was_training)
    report = CoverageReport(model.name, [int(i) for i in chosen], buckets, probe)
    for modality in modalities:
        how = "gradient" if modality in gradient else "occlusion"
        report.modalities[modality] = _coverage(modality, how, used[modality], _valid(subset, modality), buckets)
    return report
