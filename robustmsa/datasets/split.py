"""In-memory types for MMSA data: one :class:`Split` of arrays, a :class:`Dataset` of three splits.

Arrays follow the MMSA feature-pickle conventions (see ``docs/data.md``): ``text`` (N, L_t, D_t),
``text_bert`` (N, 3, L_t) holding ids / attention mask / segment ids, ``audio`` (N, L_a, D_a),
``vision`` (N, L_v, D_v), per-sample ``audio_lengths`` / ``vision_lengths``, and
``regression_labels``. Features and ``text_bert`` are float32 as every MMSA loader casts them.

Every array a :class:`Split` holds is a read-only view, so nothing downstream can change a split in
place; a corruption builds a new split and shares the arrays it did not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping

import numpy as np

__all__ = [
    "MODALITIES", "SPLIT_NAMES", "PAD_ID", "UNK_ID", "CLS_ID", "SEP_ID", "OPTIONAL_KEYS",
    "Split", "Dataset", "DatasetSpec", "LabelFamily", "content_hash",
]

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102  # BERT conventions (bert-base-uncased and -chinese)

# Keys a source file may carry besides the required ones; they are kept and written back.
OPTIONAL_KEYS: tuple[str, ...] = (
    "regression_labels_T", "regression_labels_A", "regression_labels_V",
    "classification_labels", "annotations",
)

LabelFamily = Literal["mosi", "sims"]


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the caller's array itself stays writable)."""
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Split:
    """One split (train, valid or test) of an MMSA dataset.

    ``extras`` holds the optional keys of the source file (unimodal labels, annotations, ...) so that
    a split written back has the keys it was read with. ``has_length_keys`` is false for aligned
    files, whose A/V lengths were derived from the text attention mask (as MMSA does) and are not
    written back. ``corruptions`` lists the records of every corruption applied, oldest first.
    """

    name: str
    raw_text: np.ndarray
    id: np.ndarray
    text: np.ndarray
    text_bert: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    audio_lengths: np.ndarray
    vision_lengths: np.ndarray
    regression_labels: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    has_length_keys: bool = True
    corruptions: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for key in self.array_keys():
            object.__setattr__(self, key, _frozen(np.asarray(getattr(self, key))))
        object.__setattr__(self, "extras", {k: _frozen(np.asarray(v)) for k, v in self.extras.items()})

    # ----------------------------------------------------------------- views
    @staticmethod
    def array_keys() -> tuple[str, ...]:
        """Names of the array fields every split has."""
        return ("raw_text", "id", "text", "text_bert", "audio", "vision",
                "audio_lengths", "vision_lengths", "regression_labels")

    def __len__(self) -> int:
        return int(self.regression_labels.shape[0])

    @property
    def text_mask(self) -> np.ndarray:
        """Attention mask (N, L_t) as bool."""
        return self.text_bert[:, 1, :] > 0

    @property
    def text_ids(self) -> np.ndarray:
        """Token ids (N, L_t) as int64."""
        return self.text_bert[:, 0, :].astype(np.int64)

    @property
    def text_lengths(self) -> np.ndarray:
        """Valid text length per sample, [CLS] and [SEP] included (sum of the attention mask)."""
        return self.text_mask.sum(axis=1).astype(np.int64)

    def lengths(self, modality: str) -> np.ndarray:
        """Valid length per sample of ``modality``."""
        if modality == "text":
            return self.text_lengths
        if modality in ("audio", "vision"):
            return getattr(self, f"{modality}_lengths")
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

    def valid_mask(self, modality: str) -> np.ndarray:
        """Bool (N, L) mask of the valid (non-padding) positions of ``modality``."""
        if modality == "text":
            return self.text_mask
        features = getattr(self, modality)
        return np.arange(features.shape[1])[None, :] < self.lengths(modality)[:, None]

    # ------------------------------------------------------------ changes
    def replace(self, **changes: Any) -> "Split":
        """A new split with some fields replaced; unchanged arrays are shared, not copied."""
        return dataclasses.replace(self, **changes)

    def select(self, indices: np.ndarray | slice) -> "Split":
        """A new split holding the samples at ``indices`` (copies)."""
        fields = {key: np.ascontiguousarray(getattr(self, key)[indices]) for key in self.array_keys()}
        extras = {k: np.ascontiguousarray(v[indices]) for k, v in self.extras.items()}
        return dataclasses.replace(self, extras=extras, **fields)

    def to_mmsa_dict(self) -> dict[str, np.ndarray]:
        """The split as an MMSA pickle dict: the source's keys, float32 features."""
        out: dict[str, np.ndarray] = {
            "raw_text": np.asarray(self.raw_text),
            "id": np.asarray(self.id),
            "text": np.asarray(self.text, dtype=np.float32),
            "text_bert": np.asarray(self.text_bert, dtype=np.float32),
            "audio": np.asarray(self.audio, dtype=np.float32),
            "vision": np.asarray(self.vision, dtype=np.float32),
            "regression_labels": np.asarray(self.regression_labels),
        }
        if self.has_length_keys:
            out["audio_lengths"] = np.asarray(self.audio_lengths)
            out["vision_lengths"] = np.asarray(self.vision_lengths)
        for key, value in self.extras.items():
            out[key] = np.asarray(value)
        return out

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{m}={getattr(self, m).shape[1]}x{getattr(self, m).shape[2]}" for m in MODALITIES
        )
        tags = f", corrupted by {[c['name'] for c in self.corruptions]}" if self.corruptions else ""
        return f"Split({self.name!r}, n={len(self)}, {shapes}{tags})"


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: name, label family, dimensions, padded lengths and fingerprint.

    ``fingerprint`` is ``sha256:<hex>`` of the source file's bytes (comparable with the checksums
    MMSA publishes) or, for generated data, ``synth:<hex>`` of the generator's content hash.
    """

    name: str
    label_family: LabelFamily
    label_range: tuple[float, float]
    dims: Mapping[str, int]
    seq_lens: Mapping[str, int]
    aligned: bool
    fingerprint: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "name": self.name, "label_family": self.label_family, "label_range": list(self.label_range),
            "dims": dict(self.dims), "seq_lens": dict(self.seq_lens), "aligned": self.aligned,
            "fingerprint": self.fingerprint, "source": self.source,
        }


@dataclass(frozen=True)
class Dataset:
    """A dataset: its :class:`DatasetSpec` and its train/valid/test :class:`Split` objects."""

    spec: DatasetSpec
    splits: Mapping[str, Split]
    report: Any = field(default=None, compare=False, repr=False)  # ValidationReport of a file load

    def __post_init__(self) -> None:
        missing = [name for name in SPLIT_NAMES if name not in self.splits]
        if missing:
            raise ValueError(f"dataset {self.spec.name!r} lacks split(s) {missing}; expected {SPLIT_NAMES}")

    def __getitem__(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise KeyError(f"unknown split {name!r}; valid values are {tuple(self.splits)}") from None

    def __iter__(self) -> Iterator[Split]:
        return iter(self.splits[name] for name in SPLIT_NAMES)

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def valid(self) -> Split:
        return self.splits["valid"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    def with_split(self, split: Split) -> "Dataset":
        """A new dataset with ``split`` replacing the split of the same name."""
        return Dataset(self.spec, {**self.splits, split.name: split})

    def to_mmsa_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """The whole dataset as the MMSA pickle structure ``{train, valid, test}``."""
        return {name: self.splits[name].to_mmsa_dict() for name in SPLIT_NAMES}

    def __repr__(self) -> str:
        sizes = "/".join(str(len(self.splits[n])) for n in SPLIT_NAMES)
        return (f"Dataset({self.spec.name!r}, train/valid/test={sizes}, family={self.spec.label_family}, "
                f"dims={dict(self.spec.dims)}, seq_lens={dict(self.spec.seq_lens)})")


def content_hash(splits: Mapping[str, Split] | Dataset) -> str:
    """SHA-256 over every key, shape, dtype and byte of the splits, in a fixed order.

    Independent of how the data was stored (pickle protocol, key order), so two loads of the same
    content hash equal. Used for generated data and for corrupted outputs' provenance.
    """
    splits = splits.splits if isinstance(splits, Dataset) else splits
    digest = hashlib.sha256()
    for name in sorted(splits):
        for key, value in sorted(splits[name].to_mmsa_dict().items()):
            array = np.asarray(value)
            digest.update(f"{name}/{key}/{array.shape}/{array.dtype.str}".encode())
            if array.dtype == object:
                for item in array.ravel():
                    digest.update(str(item).encode("utf-8") + b"\x00")
            else:
                digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
