"""Read the word-aligned pickle of MAG, MIB and MLCL and convert it to robustmsa's in-memory :class:`Dataset`.

The format (checked against the code that reads it; see ``docs/mag.md``):

- a pickled ``dict`` with keys ``train``, ``dev``, ``test`` (``valid`` is accepted instead of ``dev``);
- each value a list of examples ``((words, visual, acoustic), label, segment)``: ``words`` the word strings
  (n_words), ``visual`` (n_words, D_v) and ``acoustic`` (n_words, D_a) with one row per word, ``label`` the
  sentiment (a number or an array holding one number), ``segment`` the clip id string.

Verified against ``WasifurRahman/BERT_multimodal_transformer`` @ dc7876f: ``multimodal_driver.py``
(``set_up_data_loader`` reads ``data["train"]``, ``data["dev"]``, ``data["test"]``; ``convert_to_features``
unpacks ``(words, visual, acoustic), label_id, segment`` and indexes ``visual[idx, :]`` per word;
``prepare_bert_input``), ``examine.ipynb`` (asserts ``len(words) == len(visual) == len(acoustic)``,
``visual.shape == (len(words), VISUAL_DIM)``), ``global_configs.py`` (MOSI A 74 / V 47, MOSEI A 74 / V 35) and
``datasets/download_datasets.sh``; ``YetZzzzzz/MLCL`` @ 7d79c0a ``MCLC_MSA/main_MLCL.py`` and
``TmacMai/Multimodal-Information-Bottleneck`` @ 4893db6 ``MIB_github/main_mib.py`` (the same
``convert_to_features`` / ``prepare_bert_input`` and the same files, per
``YetZzzzzz/MLCL:datasets/readme.md``).

Conversion, as those ``convert_to_features`` do: every word is tokenised on its own (wordpieces; a word
that yields none is dropped), its visual and acoustic rows are repeated once per wordpiece, the wordpieces
are truncated to ``max_seq_length - 2``, [CLS] and [SEP] are added with all-zero A/V rows, and everything is
padded at the end to ``max_seq_length`` (ids with the tokenizer's pad id, mask and segment ids 0, A/V rows
0). The result is an *aligned* MMSA dataset: ``text_bert`` (N, 3, L), ``text`` (N, L, D_text) the encoder's
last hidden states, ``audio`` / ``vision`` (N, L, D) aligned to the tokens, A/V lengths = the number of
valid tokens ([CLS] and [SEP] included) derived from the attention mask exactly as for MMSA's
``aligned_50.pkl`` (``has_length_keys=False``: written back without lengths keys, read back the same).
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import claim_outputs, write_sidecar
from .errors import DataValidationError, short_repr
from .io import _spec, infer_label_family, read_raw_pickle, write_mmsa_pickle
from .registry import LABEL_RANGES
from .safe_pickle import MEMORY_FACTOR, MEMORY_FLOOR
from .split import Dataset, LabelFamily, Split, content_hash
from .validate import (
    NonFiniteFeaturesWarning,
    ValidationReport,
    _sanitize_features,
    as_array,
    clean_text,
    keys_summary,
    splits_from_mmsa_dict,
)

if TYPE_CHECKING:
    from ..text_encoding import LocalTextEncoder

__all__ = [
    "DEFAULT_MAX_SEQ_LENGTH",
    "EXAMPLE_LAYOUT",
    "convert_hint",
    "convert_mag_to_file",
    "looks_like_mag",
    "read_mag_pickle",
]

EXAMPLE_LAYOUT = "((words, visual, acoustic), label, segment)"
DEFAULT_MAX_SEQ_LENGTH = 50  # MAG, MIB and MLCL's --max_seq_length default
_FILE_SPLITS = {"train": "train", "dev": "valid", "test": "test"}  # file name -> robustmsa name
_TOKENIZE_CHUNK = 4096


def convert_hint(path: str | os.PathLike = "FILE") -> str:
    """The message that points a MAG/MIB pickle given to the MMSA reader at ``robustmsa data convert``."""
    return (f"this looks like a MAG/MIB word-aligned pickle; convert it with "
            f"`robustmsa data convert --format mag {os.fspath(path)} --text-encoder ENC --out OUT.pkl`")


def _is_seq_of(value: Any, size: int) -> bool:
    """Whether ``value`` is a tuple or list of ``size`` items."""
    return isinstance(value, (tuple, list)) and len(value) == size


def looks_like_mag(obj: Any) -> bool:
    """Whether an unpickled object has the MAG/MIB layout: ``train``/``dev``/``test`` lists of examples."""
    if not isinstance(obj, Mapping) or "train" not in obj or "test" not in obj:
        return False
    if "dev" not in obj and "valid" not in obj:
        return False
    splits = [obj[k] for k in ("train", "dev", "valid", "test") if k in obj]
    if not all(isinstance(s, (list, tuple)) for s in splits):
        return False
    first = next((s[0] for s in splits if len(s)), None)
    return first is None or (_is_seq_of(first, 3) and _is_seq_of(first[0], 3))


# ------------------------------------------------------------------------------------------------ parsing
@dataclass
class _Example:
    """One validated example: words, per-word float32 rows, label and id."""

    words: list[str]
    visual: np.ndarray
    acoustic: np.ndarray
    label: float
    segment: str


@dataclass
class _Context:
    """What parsing needs to name problems and check dims across examples."""

    source: str
    report: ValidationReport
    dims: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # key -> (dim, split, index)
    # examples without words: their (0, D) arrays hold no data, so D is checked once rows have set it
    empty: list[tuple[str, str, int, int]] = field(default_factory=list)  # (key, split, index, D)


def _error(ctx: _Context, split: str, index: int, expected: str, found: str) -> DataValidationError:
    """A DataValidationError naming file, split, example index and the expected structure."""
    error = DataValidationError(ctx.source, split, None,
                                f"example {index} as {EXAMPLE_LAYOUT} with {expected}", found)
    error.example = index
    return error


def _describe(value: Any) -> str:
    """Short type/shape description of a value for error messages."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _text(value: Any) -> str | None:
    """``value`` as a str (bytes decoded as UTF-8), or None if it is not text."""
    if isinstance(value, str):
        return clean_text(str(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None


def _words(value: Any, ctx: _Context, split: str, index: int) -> list[str]:
    """The word list of an example (strings only)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _error(ctx, split, index, "words a list of word strings", _describe(value))
    words = [_text(w) for w in value]
    bad = next((i for i, w in enumerate(words) if w is None), None)
    if bad is not None:
        hint = " (word ids? MISA/MMIM-style pickles store ids, MAG stores the words)" if isinstance(
            value[bad], (int, np.integer)) else ""
        raise _error(ctx, split, index, "words a list of word strings",
                     f"word {bad} of type {type(value[bad]).__name__}{hint}")
    return words  # type: ignore[return-value]


def _rows(value: Any, key: str, n_words: int, ctx: _Context, split: str, index: int) -> np.ndarray:
    """A (n_words, D) float32 feature matrix, NaN/inf set to 0 and counted."""
    modality = "vision" if key == "visual" else "audio"
    expected = f"{key} a numeric array of shape (n_words={n_words}, D)"
    try:
        array = as_array(value)
    except Exception as exc:  # ragged nested lists, huge ints and the like
        raise _error(ctx, split, index, expected, f"{short_repr(value)} ({type(exc).__name__})") from exc
    if array.dtype.kind not in "iuf":
        raise _error(ctx, split, index, expected, f"dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != n_words:
        raise _error(ctx, split, index, expected, f"shape {tuple(array.shape)}")
    dim = int(array.shape[1])
    if n_words == 0:
        ctx.empty.append((key, split, index, dim))
    else:
        _check_dim(ctx, key, split, index, dim)
    counts = ctx.report.nonfinite.setdefault(_FILE_SPLITS.get(split, split), {}).setdefault(modality, {})
    return _sanitize_features(array, counts)


def _check_dim(ctx: _Context, key: str, split: str, index: int, dim: int) -> None:
    """``dim`` must equal the feature dimension of the first example with rows."""
    modality = "vision" if key == "visual" else "audio"
    seen = ctx.dims.setdefault(modality, (dim, split, index))
    if seen[0] != dim:
        raise _error(ctx, split, index, f"{key} feature dimension {seen[0]} as in split {seen[1]!r} example "
                     f"{seen[2]}", f"{dim}")


def _label(value: Any, ctx: _Context, split: str, index: int) -> float:
    """The sentiment of an example: a number, or an array of one number ((1,), (1, 1), ...)."""
    expected = "label a finite number (or an array of one number, shape (1,) or (1, 1))"
    if isinstance(value, (bool, np.bool_)):
        raise _error(ctx, split, index, expected, "a bool")
    try:
        array = as_array(value)
    except Exception as exc:  # ragged nested lists, huge ints and the like
        raise _error(ctx, split, index, expected, f"{short_repr(value)} ({type(exc).__name__})") from exc
    if array.dtype.kind not in "iuf":
        raise _error(ctx, split, index, expected,
                     f"{_describe(value)} of dtype {array.dtype} ({short_repr(value, 40)})")
    if array.size != 1:
        raise _error(ctx, split, index, expected, f"shape {tuple(array.shape)}")
    label = float(array.reshape(-1)[0])
    if not np.isfinite(label):
        raise _error(ctx, split, index, expected, f"{label}")
    return label


def _example(value: Any, ctx: _Context, split: str, index: int) -> _Example:
    """Validate one example's nesting, types and lengths."""
    if not _is_seq_of(value, 3):
        raise _error(ctx, split, index, "3 items", _describe(value))
    features, label, segment = value
    if not _is_seq_of(features, 3):
        hint = (" (a 4-item feature tuple is the MISA/MMIM layout (word ids, visual, acoustic, words), "
                "not MAG's)" if _is_seq_of(features, 4) else "")
        raise _error(ctx, split, index, "a (words, visual, acoustic) triple first",
                     _describe(features) + hint)
    words = _words(features[0], ctx, split, index)
    visual = _rows(features[1], "visual", len(words), ctx, split, index)
    acoustic = _rows(features[2], "acoustic", len(words), ctx, split, index)
    segment_text = _text(segment)
    if segment_text is None:
        raise _error(ctx, split, index, "segment a string id (e.g. '03bSnISJMiM[11]')", _describe(segment))
    return _Example(words, visual, acoustic, _label(label, ctx, split, index), segment_text)


def _split_names(raw: Any, ctx: _Context) -> dict[str, str]:
    """File split name -> robustmsa split name (``dev`` or ``valid`` -> ``valid``)."""
    expected = (f"a dict with keys ['train', 'dev', 'test'] ('valid' accepted for 'dev'), each a list of "
                f"{EXAMPLE_LAYOUT}")
    if not isinstance(raw, Mapping):
        raise DataValidationError(ctx.source, None, None, expected, type(raw).__name__)
    keys = keys_summary(raw)
    if "dev" in raw and "valid" in raw:
        raise DataValidationError(ctx.source, "valid", None, expected + ", not both 'dev' and 'valid'", keys)
    dev = "valid" if "valid" in raw else "dev"
    names = {"train": "train", dev: "valid", "test": "test"}
    for name in names:
        if name not in raw:
            raise DataValidationError(ctx.source, name, None, expected, keys)
        if not isinstance(raw[name], (list, tuple)):
            hint = (" (a dict of arrays is the MMSA layout: load it with robustmsa.datasets.load)"
                    if isinstance(raw[name], Mapping) else "")
            raise DataValidationError(ctx.source, name, None, f"a list of {EXAMPLE_LAYOUT}",
                                      _describe(raw[name]) + hint)
    for other in raw:
        if other not in names:
            ctx.report.notes.append(f"ignored top-level key {short_repr(other, 40)} (not a split)")
    if dev == "dev":
        ctx.report.notes.append("split 'dev' of the MAG/MIB file is robustmsa's 'valid'")
    return names


def _parse(raw: Any, ctx: _Context) -> dict[str, tuple[str, list[_Example]]]:
    """robustmsa split name -> (file split name, validated examples)."""
    names = _split_names(raw, ctx)
    parsed = {ours: (theirs, [_example(e, ctx, theirs, i) for i, e in enumerate(raw[theirs])])
              for theirs, ours in names.items()}
    if not any(examples for _, examples in parsed.values()):
        raise DataValidationError(ctx.source, None, None, f"at least one example {EXAMPLE_LAYOUT}",
                                  "empty splits")
    if not ctx.dims:
        raise DataValidationError(ctx.source, None, None, "at least one example with words (its visual and "
                                  "acoustic rows set the feature dimensions)", "none")
    for key, split, index, dim in ctx.empty:
        _check_dim(ctx, key, split, index, dim)
    ctx.report.nonfinite = {s: {k: c for k, c in per.items() if any(c.values())}
                            for s, per in ctx.report.nonfinite.items()}
    ctx.report.nonfinite = {s: per for s, per in ctx.report.nonfinite.items() if per}
    return parsed


# ---------------------------------------------------------------------------------------------- alignment
def _wordpieces(encoder: LocalTextEncoder, words: Sequence[str]) -> dict[str, list[int]]:
    """Wordpiece ids of each distinct word, each word tokenised on its own (as MAG's ``tokenize(word)``)."""
    distinct = list(dict.fromkeys(words))
    out: dict[str, list[int]] = {}
    for start in range(0, len(distinct), _TOKENIZE_CHUNK):
        chunk = distinct[start:start + _TOKENIZE_CHUNK]
        encoded = encoder.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        out.update(zip(chunk, (list(map(int, ids)) for ids in encoded)))
    return out


@dataclass
class _Aligned:
    """Token-aligned arrays of one split before text encoding."""

    text_bert: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    truncated: int
    dropped_words: int


def _align(examples: Sequence[_Example], pieces: Mapping[str, list[int]], special: Mapping[str, int],
           length: int, dims: Mapping[str, int]) -> _Aligned:
    """ids/mask/segments and A/V rows repeated per wordpiece, [CLS]/[SEP] zero rows, end padding."""
    n = len(examples)
    text_bert = np.zeros((n, 3, length), dtype=np.float32)
    text_bert[:, 0, :] = special["pad"]
    audio = np.zeros((n, length, dims["audio"]), dtype=np.float32)
    vision = np.zeros((n, length, dims["vision"]), dtype=np.float32)
    truncated = dropped = 0
    for row, example in enumerate(examples):
        ids: list[int] = []
        owner: list[int] = []
        for index, word in enumerate(example.words):
            word_ids = pieces[word]
            dropped += not word_ids
            ids.extend(word_ids)
            owner.extend([index] * len(word_ids))
        if len(ids) > length - 2:
            ids, owner, truncated = ids[:length - 2], owner[:length - 2], truncated + 1
        k = len(ids)
        text_bert[row, 0, :k + 2] = [special["cls"], *ids, special["sep"]]
        text_bert[row, 1, :k + 2] = 1.0
        audio[row, 1:k + 1] = example.acoustic[owner]
        vision[row, 1:k + 1] = example.visual[owner]
    return _Aligned(text_bert, audio, vision, truncated, dropped)


# ------------------------------------------------------------------------------------------------ reading
def _check_output_size(ctx: _Context, path: Path, n: int) -> None:
    """Refuse feature dimensions the file cannot justify before any aligned array is allocated.

    The aligned audio/vision arrays take ``n x max_seq_length x (D_a + D_v) x 4`` bytes. At 50 positions (MAG's
    default) they must fit the reading budget (:data:`~robustmsa.datasets.safe_pickle.MEMORY_FACTOR` x the
    file's size + ``MEMORY_FLOOR``); they grow linearly with ``max_seq_length`` from there. Real files are far
    inside it (MOSI: 2199 x 50 x 121 x 4 = 53 MB); many empty examples with one huge-dimensional row are not.
    """
    width = sum(dim for dim, _, _ in ctx.dims.values())
    budget = MEMORY_FACTOR * path.stat().st_size + MEMORY_FLOOR
    if n * width * 4 * DEFAULT_MAX_SEQ_LENGTH > budget:
        raise DataValidationError(
            ctx.source, None, None, f"audio/vision dimensions the file's size can justify (N x (D_a + D_v) x 4 "
            f"bytes x {DEFAULT_MAX_SEQ_LENGTH} positions <= {budget})", f"{n} examples x {width} dimensions")


def _resolve_encoder(encoder: LocalTextEncoder | str, device: str) -> LocalTextEncoder:
    """The encoder object: given, or loaded from its spec (``hf:PATH`` / ``minilm``) on ``device``."""
    if not isinstance(encoder, str):
        return encoder
    from ..text_encoding import load_text_encoder

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    elif device not in ("auto", "cpu"):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    return load_text_encoder(encoder, device=device)


def _check_length(max_seq_length: int, encoder: LocalTextEncoder) -> int:
    """``max_seq_length`` if it leaves room for [CLS]/[SEP] and fits the encoder."""
    if int(max_seq_length) != max_seq_length or max_seq_length < 2:
        raise ValueError(f"max_seq_length must be an integer >= 2 ([CLS] and [SEP]), got {max_seq_length!r}")
    if max_seq_length > encoder.max_length:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds what text encoder {encoder.spec} accepts "
                         f"({encoder.max_length} positions)")
    return int(max_seq_length)


def _family(name: str, parsed: Mapping[str, tuple[str, list[_Example]]], label_family: LabelFamily | None,
            ctx: _Context) -> LabelFamily:
    """The label family (given, or inferred as io.py does), after checking every label lies in its range."""
    labels = {ours: np.array([e.label for e in examples], dtype=np.float32)
              for ours, (_, examples) in parsed.items()}
    if label_family is None:
        # infer_label_family reads only .regression_labels; the labels are checked before any encoding
        shims = {k: types.SimpleNamespace(regression_labels=v) for k, v in labels.items()}
        label_family = infer_label_family(name, shims)  # type: ignore[arg-type]
        ctx.report.notes.append(f"label family inferred as {label_family!r} (override with label_family / "
                                f"--label-family)")
    elif label_family not in LABEL_RANGES:
        raise ValueError(f"label_family must be one of {sorted(LABEL_RANGES)}, got {label_family!r}")
    low, high = LABEL_RANGES[label_family]
    for ours, (theirs, _) in parsed.items():
        bad = np.flatnonzero((labels[ours] < low - 1e-6) | (labels[ours] > high + 1e-6))
        if bad.size:
            raise _error(ctx, theirs, int(bad[0]), f"label in [{low:g}, {high:g}] ({label_family} family)",
                         f"{float(labels[ours][bad[0]]):g}")
    return label_family


def _default_name(path: Path) -> str:
    """``mag-<stem>`` (the stem alone if it already starts with ``mag``)."""
    return path.stem if path.stem.lower().startswith("mag") else f"mag-{path.stem}"


@dataclass
class MagConversion:
    """What a conversion did, for provenance: source hash, encoder, counts, truncations, dropped words."""

    source_sha256: str
    encoder: dict[str, Any]
    max_seq_length: int
    counts: dict[str, int]
    truncated: dict[str, int]
    dropped_words: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"source_sha256": self.source_sha256, "encoder": self.encoder,
                "max_seq_length": self.max_seq_length, "counts": self.counts, "truncated": self.truncated,
                "dropped_words": self.dropped_words}


def _convert(path: str | os.PathLike, encoder: LocalTextEncoder | str, *, max_seq_length: int,
             name: str | None, label_family: LabelFamily | None, device: str, warn: bool,
             progress: Callable[[int], None] | None
             ) -> tuple[Dataset, MagConversion]:
    """Read, validate, align and encode a MAG/MIB pickle; also returns what was done."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    ctx = _Context(source=str(path), report=ValidationReport(source=str(path)))
    raw, sha256 = read_raw_pickle(path)
    parsed = _parse(raw, ctx)
    del raw
    _check_output_size(ctx, path, sum(len(examples) for _, examples in parsed.values()))
    name = name or _default_name(path)
    family = _family(name, parsed, label_family, ctx)
    model = _resolve_encoder(encoder, device)
    length = _check_length(max_seq_length, model)
    pieces = _wordpieces(model, [w for _, examples in parsed.values() for e in examples for w in e.words])
    special = model.special_ids()
    dims = {k: v[0] for k, v in ctx.dims.items()}
    splits: dict[str, Split] = {}
    truncated, dropped = {}, {}
    for ours, (_, examples) in parsed.items():
        aligned = _align(examples, pieces, special, length, dims)
        truncated[ours], dropped[ours] = aligned.truncated, aligned.dropped_words
        text = model.encode(aligned.text_bert, progress=progress)
        lengths = aligned.text_bert[:, 1, :].sum(axis=1).astype(np.int64)
        splits[ours] = Split(
            name=ours, raw_text=np.array([" ".join(e.words) for e in examples], dtype=object),
            id=np.array([e.segment for e in examples], dtype=object), text=text, text_bert=aligned.text_bert,
            audio=aligned.audio, vision=aligned.vision, audio_lengths=lengths, vision_lengths=lengths.copy(),
            regression_labels=np.array([e.label for e in examples], dtype=np.float32), has_length_keys=False)
    # what robustmsa writes must load: the MMSA validator on the converted splits (float32: no copies)
    splits_from_mmsa_dict({k: s.to_mmsa_dict() for k, s in splits.items()}, source=f"{path} (converted)",
                          label_range=LABEL_RANGES[family], warn=False)
    info = MagConversion(sha256, {**model.describe(), "device": str(model.device)}, length,
                         {k: len(s) for k, s in splits.items()}, truncated, dropped)
    _add_notes(ctx.report, info, warn)
    spec = _spec(name, family, splits, f"mag:{content_hash(splits)}", str(path))
    return Dataset(spec, splits, ctx.report), info


def _add_notes(report: ValidationReport, info: MagConversion, warn: bool) -> None:
    """Conversion notes (source hash, encoder, truncations) and the non-finite warning."""
    report.notes.insert(0, f"converted from a MAG/MIB word-aligned pickle (sha256 {info.source_sha256}) with "
                           f"text encoder {info.encoder['spec']}, max_seq_length {info.max_seq_length}")
    for split, count in info.truncated.items():
        if count:
            report.notes.append(f"split {split!r}: {count} of {info.counts[split]} examples had more than "
                                f"{info.max_seq_length - 2} wordpieces and were truncated")
    for split, count in info.dropped_words.items():
        if count:
            report.notes.append(f"split {split!r}: {count} words produced no wordpiece and were dropped "
                                f"(as MAG does)")
    if warn and report.total_nonfinite:
        warnings.warn(f"{report.source}: set {report.total_nonfinite} non-finite feature values to 0 "
                      f"({report.nonfinite_summary()})", NonFiniteFeaturesWarning, stacklevel=4)


def read_mag_pickle(path: str | os.PathLike, encoder: LocalTextEncoder | str, *,
                    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, name: str | None = None,
                    label_family: LabelFamily | None = None, device: str = "auto", warn: bool = True,
                    progress: Callable[[int], None] | None = None) -> Dataset:
    """Read a MAG/MIB/MLCL word-aligned pickle and convert it to an aligned MMSA :class:`Dataset`.

    Args:
        path: the ``.pkl`` file: ``{train, dev, test}`` lists of ``((words, visual, acoustic), label,
            segment)``.
        encoder: a :class:`~robustmsa.text_encoding.LocalTextEncoder`, or its spec (``hf:PATH`` / ``minilm``).
        max_seq_length: padded token length; ``max_seq_length - 2`` wordpieces are kept (MAG: 50).
        name: dataset name (default ``mag-<file stem>``).
        label_family: ``"mosi"`` or ``"sims"``; inferred as :func:`robustmsa.datasets.load` does if not given.
        device: where an encoder given as a spec is loaded (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        warn: emit a :class:`NonFiniteFeaturesWarning` when NaN/inf features were set to 0.
        progress: called with the number of samples after each encoder batch.

    Raises:
        DataValidationError: malformed input; names the file, split, example index and expected structure.
        UnsafePickleError: the file references a global outside the allow-list (nothing from it ran).
    """
    return _convert(path, encoder, max_seq_length=max_seq_length, name=name, label_family=label_family,
                    device=device, warn=warn, progress=progress)[0]


def convert_mag_to_file(source: str | os.PathLike, encoder: LocalTextEncoder | str, out: str | os.PathLike, *,
                        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, name: str | None = None,
                        label_family: LabelFamily | None = None, device: str = "auto", force: bool = False,
                        command: str | None = None, progress: Callable[[int], None] | None = None
                        ) -> dict[str, Any]:
    """Convert a MAG/MIB pickle and write an MMSA pickle to ``out`` plus ``<out>.json`` provenance.

    Both outputs are checked before anything is computed and kept unless ``force``; nothing is written unless
    the conversion succeeds. Returns the provenance record (the sidecar's content).
    """
    from ..provenance import environment, utc_now

    out = Path(out)
    claim_outputs(out, force=force)
    if Path(source).exists() and out.resolve() == Path(source).resolve():
        raise ValueError(f"--out {out} is the input file; write the converted pickle elsewhere")
    dataset, info = _convert(source, encoder, max_seq_length=max_seq_length, name=name,
                             label_family=label_family, device=device, warn=True, progress=progress)
    out_sha = write_mmsa_pickle(dataset, out, force=force)
    record = {
        "kind": "robustmsa.converted_pickle",
        "created": utc_now(),
        "command": command,
        "input": {"path": os.fspath(source), "format": "mag", "sha256": info.source_sha256},
        "conversion": info.to_dict(),
        "notes": list(dataset.report.notes),
        "nonfinite": dataset.report.nonfinite,
        "output": {"path": str(out), "sha256": out_sha, "spec": dataset.spec.to_dict()},
        "environment": environment(),
    }
    write_sidecar(out, record)
    return record
