"""Corrupt whole datasets and write the result as an MMSA pickle with a provenance sidecar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .._io import claim_outputs, sidecar_path, write_sidecar
from ..datasets.io import load, write_mmsa_pickle
from ..datasets.split import SPLIT_NAMES, Dataset
from ..provenance import environment, utc_now
from .base import Compose, Corruption, Seeding, create_corruption
from .reencode import TextReencoder, check_text_mode, prepare_reencoder, text_mode_config

if TYPE_CHECKING:
    from ..text_encoding import LocalTextEncoder

__all__ = ["corrupt_dataset", "corrupt_to_file", "sidecar_path"]


def _check_splits(splits: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(splits))
    unknown = [s for s in chosen if s not in SPLIT_NAMES]
    if unknown or not chosen:
        raise ValueError(f"unknown split(s) {unknown or '[]'}; valid values are {SPLIT_NAMES}")
    return chosen


def corrupt_dataset(dataset: Dataset, corruption: Corruption | Compose, seed: int,
                    splits: Sequence[str] = ("test",), *, text_mode: str = "features",
                    text_encoder: "str | LocalTextEncoder | TextReencoder | None" = None,
                    allow_encoder_mismatch: bool = False, device: str | None = "auto") -> Dataset:
    """A new dataset whose ``splits`` are corrupted (each with its own streams); the others are shared.

    ``text_mode="reencode"`` recomputes the ``text`` features of samples whose ids changed with ``text_encoder``
    (checked first against the clean features of the first corrupted split; see :mod:`.reencode`).
    """
    chosen = _check_splits(splits)
    reencoder = _reencoder(dataset, chosen[0], text_mode, text_encoder, allow_encoder_mismatch, device)
    result = dataset
    for name in chosen:
        corrupted = corruption(dataset[name], seed)
        if reencoder is not None:
            corrupted = reencoder(corrupted, dataset[name])
        result = result.with_split(corrupted)
    return result


def _reencoder(dataset: Dataset, split: str, text_mode: str, text_encoder, allow_mismatch: bool,
               device: str | None) -> TextReencoder | None:
    """The checked re-encoder for ``text_mode`` (``None`` in features mode); a ready one is used as it is."""
    if isinstance(text_encoder, TextReencoder):
        check_text_mode(text_mode, text_encoder)
        return text_encoder if text_mode == "reencode" else None
    return prepare_reencoder(text_mode, text_encoder, dataset[split], source=dataset.spec.source,
                             allow_mismatch=allow_mismatch, device=device)


def corrupt_to_file(data: str | os.PathLike, corruption: str, severity: float, seed: int, out: str | os.PathLike, *,
                    modalities: str | Sequence[str] | None = None, seeding: Seeding = "independent",
                    splits: Sequence[str] = ("test",), force: bool = False, data_root: str | os.PathLike | None = None,
                    label_family: str | None = None, params: dict[str, Any] | None = None,
                    command: str | None = None, text_mode: str = "features",
                    text_encoder: "str | LocalTextEncoder | None" = None, allow_encoder_mismatch: bool = False,
                    device: str | None = "auto") -> dict[str, Any]:
    """Load ``data``, corrupt ``splits`` and write an MMSA pickle to ``out`` plus ``<out>.json`` provenance.

    Nothing is written unless everything succeeds; existing outputs are kept unless ``force``.
    ``text_mode="reencode"`` re-encodes corrupted text with ``text_encoder`` (see :func:`corrupt_dataset`).
    Returns the provenance record (also written as the sidecar).
    """
    out = Path(out)
    claim_outputs(out, force=force)
    if out.resolve() == Path(os.fspath(data)).resolve():
        raise ValueError(f"--out {out} is the input file; write the corrupted copy elsewhere")
    chosen_splits = _check_splits(splits)
    check_text_mode(text_mode, text_encoder)
    built = create_corruption(corruption, severity, modalities=modalities, seeding=seeding, **(params or {}))
    dataset = load(data, data_root=data_root, label_family=label_family)
    reencoder = _reencoder(dataset, chosen_splits[0], text_mode, text_encoder, allow_encoder_mismatch, device)
    corrupted = corrupt_dataset(dataset, built, seed, chosen_splits, text_mode=text_mode, text_encoder=reencoder)
    out_sha = write_mmsa_pickle(corrupted, out, force=force)
    record = {
        "kind": "robustmsa.corrupted_pickle",
        "created": utc_now(),
        "command": command,
        "input": {"data": os.fspath(data), "source": dataset.spec.source, "name": dataset.spec.name,
                  "fingerprint": dataset.spec.fingerprint, "label_family": dataset.spec.label_family},
        "output": {"path": str(out), "sha256": out_sha},
        "corruption": {"spec": corruption, "repr": repr(built), "severity": severity,
                       "modalities": None if modalities is None else list(
                           (modalities,) if isinstance(modalities, str) else modalities),
                       "seeding": seeding, "seed": seed, "params": params or {}},
        **text_mode_config(reencoder),
        "splits": {name: list(corrupted[name].corruptions) for name in chosen_splits},
        "untouched_splits": [name for name in SPLIT_NAMES if name not in chosen_splits],
        "environment": environment(),
    }
    write_sidecar(out, record)
    return record
