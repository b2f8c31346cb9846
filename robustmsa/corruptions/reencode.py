"""Text mode ``reencode``: after a corruption, recompute the contextual ``text`` features from the corrupted ids.

In the default ``features`` mode a text corruption edits both representations in place: a dropped token is
``[UNK]`` in ``text_bert`` and a zero row in ``text``, shuffled tokens move their ids and rows together. That is an
approximation, since the neighbours' contextual features still carry the dropped word. In ``reencode`` mode the
corruption still edits the ids (and, through them, ``raw_text``), and then the samples whose ids changed get new
``text`` rows from the local encoder that produced the pickle's clean features. Unchanged samples keep their clean
rows bit for bit; the attention mask, segments, padding, ``[CLS]`` and ``[SEP]`` are never touched.

Re-encoding is only meaningful with the encoder that made the clean features: :func:`check_encoder_matches`
re-encodes a few clean samples and compares them with the pickle's ``text`` before anything is corrupted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..datasets.split import CLS_ID, PAD_ID, SEP_ID, UNK_ID, Split
from .base import realised

if TYPE_CHECKING:  # text_encoding imports nothing heavy, but keep transformers-related types out of import time
    from ..text_encoding import LocalTextEncoder

__all__ = ["TEXT_MODES", "REENCODE_RECORD", "ReencodeError", "EncoderMismatchWarning", "check_text_mode",
           "resolve_encoder", "check_conventions", "check_encoder_matches", "changed_samples", "reencode_text",
           "TextReencoder", "prepare_reencoder", "text_mode_config", "corruption_records"]

TEXT_MODES: tuple[str, ...] = ("features", "reencode")
REENCODE_RECORD = "reencode_text"  # the ``name`` of the record appended to ``Split.corruptions``
CHECK_SAMPLES = 16  # clean samples re-encoded to verify the encoder
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-3  # atol is relative to the RMS of the stored features

TextEncoderArg = Union[str, "LocalTextEncoder", None]


class ReencodeError(ValueError):
    """Re-encoding is impossible or would be wrong; the message says why and what to do instead."""


class EncoderMismatchWarning(UserWarning):
    """The pickle's text features were not produced by the re-encoding encoder (allowed by the caller)."""


def check_text_mode(text_mode: str, text_encoder: TextEncoderArg) -> str:
    """Validate a ``text_mode`` / ``text_encoder`` pair; returns the mode."""
    if text_mode not in TEXT_MODES:
        raise ReencodeError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    if text_mode == "reencode" and text_encoder is None:
        raise ReencodeError("text_mode='reencode' needs a text encoder (--text-encoder hf:PATH or minilm): the one "
                            "that produced the pickle's text features")
    if text_mode == "features" and text_encoder is not None:
        raise ReencodeError("a text encoder is only used with text_mode='reencode' (--text-mode reencode); in "
                            "'features' mode text corruptions edit the precomputed features directly")
    return text_mode


def resolve_encoder(text_encoder: "str | LocalTextEncoder", device: str | None = "auto") -> "LocalTextEncoder":
    """A loaded encoder from ``hf:PATH`` / ``minilm`` (loaded on ``device``), or the encoder object itself."""
    from ..text_encoding import LocalTextEncoder, load_text_encoder

    if isinstance(text_encoder, LocalTextEncoder):
        return text_encoder
    if isinstance(text_encoder, str):
        return load_text_encoder(text_encoder, device=device or "auto")
    raise TypeError(f"text_encoder must be 'hf:PATH', 'minilm' or a LocalTextEncoder, "
                    f"got {type(text_encoder).__name__}")


def check_conventions(encoder: "LocalTextEncoder", split: Split) -> None:
    """The encoder uses BERT's special ids (what the corruptions write) and the split's text width."""
    expected = {"pad": PAD_ID, "unk": UNK_ID, "cls": CLS_ID, "sep": SEP_ID}
    found = encoder.special_ids()
    if found != expected:
        raise ReencodeError(
            f"text encoder {encoder.spec} has special ids {found}, but robustmsa's text corruptions write BERT "
            f"WordPiece ids {expected} (a dropped token becomes [UNK]={UNK_ID}); re-encoding supports only "
            f"BERT-WordPiece-style vocabularies (bert-base-uncased, bert-base-chinese, all-MiniLM-L6-v2, ...). "
            f"Use --text-mode features")
    dim = int(split.text.shape[2])
    if encoder.dim != dim:
        raise ReencodeError(f"text encoder {encoder.spec} has hidden size {encoder.dim}, but the split's text features "
                            f"are {dim}-d: they were made by another encoder. Pass the encoder that built the pickle "
                            f"or use --text-mode features")


def _check_indices(split: Split, count: int) -> np.ndarray:
    """The first ``count`` samples with at least one word token (deterministic)."""
    return np.flatnonzero(split.text_lengths > 2)[:count]


def check_encoder_matches(clean: Split, encoder: "LocalTextEncoder", *, source: str = "the dataset",
                          allow_mismatch: bool = False, samples: int = CHECK_SAMPLES) -> dict[str, Any]:
    """Re-encode up to ``samples`` clean samples and compare with the stored ``text``; a clear error if they differ.

    Tolerance: ``|new - stored| <= rtol * |stored| + atol * rms(stored)`` element-wise (rtol = atol = 1e-3), which
    accepts float noise and CPU vs GPU kernels but not another encoder. With ``allow_mismatch`` a mismatch is an
    :class:`EncoderMismatchWarning` instead, and the returned record says so.
    """
    check_conventions(encoder, clean)
    index = _check_indices(clean, samples)
    result: dict[str, Any] = {"samples": int(index.size), "rtol": CHECK_RTOL, "atol_relative": CHECK_ATOL}
    if index.size == 0:
        return {**result, "match": None, "note": "no sample with word tokens to compare"}
    stored = np.asarray(clean.text[index], dtype=np.float32)
    fresh = encoder.encode(np.asarray(clean.text_bert[index]))
    valid = clean.text_mask[index]
    a, b = fresh[valid].astype(np.float64), stored[valid].astype(np.float64)
    scale = float(np.sqrt(np.mean(b * b))) if b.size else 0.0
    atol = CHECK_ATOL * max(scale, 1e-6)
    diff = np.abs(a - b)
    match = bool(np.all(diff <= atol + CHECK_RTOL * np.abs(b)))
    result.update({"match": match, "max_abs_diff": float(diff.max()), "feature_rms": scale,
                   "relative_rms_diff": float(np.sqrt(np.mean((a - b) ** 2)) / max(scale, 1e-12))})
    if not match:
        message = (f"the text features of {source} were not produced by {encoder.spec} (re-encoding {index.size} clean "
                   f"samples differs by up to {result['max_abs_diff']:.3g}, relative RMS "
                   f"{result['relative_rms_diff']:.3g}); re-encoding would mix two encoders. Build the pickle with "
                   f"robustmsa data build --text-encoder {encoder.spec}, or use --text-mode features")
        if not allow_mismatch:
            raise ReencodeError(message + " (or pass --allow-encoder-mismatch to go on anyway)")
        warnings.warn(message + "; going on because of --allow-encoder-mismatch", EncoderMismatchWarning, stacklevel=2)
        result["allowed_mismatch"] = True
    return result


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Two views of the same memory with the same layout (splits hold views, so ``is`` does not survive)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides and a.dtype == b.dtype)


def changed_samples(corrupted: Split, clean: Split) -> np.ndarray:
    """Bool (N,): samples whose ``text_bert`` ids differ from the clean split's."""
    if len(corrupted) != len(clean) or corrupted.text_bert.shape != clean.text_bert.shape:
        raise ReencodeError(f"re-encoding needs the corrupted split and its clean split to hold the same samples; got "
                            f"text_bert {corrupted.text_bert.shape} and {clean.text_bert.shape}")
    if _same_view(corrupted.text_bert, clean.text_bert):  # untouched by the corruption: nothing to compare
        return np.zeros(len(clean), dtype=bool)
    if not np.array_equal(corrupted.text_bert[:, 1:], clean.text_bert[:, 1:]):
        raise ReencodeError("re-encoding keeps the attention mask and segment ids, but the corruption changed them")
    return np.any(corrupted.text_bert[:, 0] != clean.text_bert[:, 0], axis=1)


def reencode_text(corrupted: Split, clean: Split, encoder: "LocalTextEncoder", *,
                  check: dict[str, Any] | None = None) -> Split:
    """``corrupted`` with ``text`` recomputed by ``encoder`` for the samples whose ids differ from ``clean``.

    Changed samples get the encoder's states of their corrupted ids (zero at padding) and a ``raw_text`` decoded from
    those ids (special tokens dropped, so dropped words disappear); the other samples keep the clean ``text`` rows and
    ``raw_text`` bit for bit. A record (``name="reencode_text"``) is appended to ``corruptions``.
    """
    check_conventions(encoder, clean)
    changed = changed_samples(corrupted, clean)
    index = np.flatnonzero(changed)
    text, raw_text = clean.text, corrupted.raw_text
    if index.size:
        encoded = encoder.encode(np.asarray(corrupted.text_bert[index]))
        text = np.array(clean.text, copy=True)
        text[index] = encoded.astype(text.dtype, copy=False)
        raw_text = np.array(corrupted.raw_text, dtype=object, copy=True)
        ids, mask = corrupted.text_ids, corrupted.text_mask
        for i in index:
            raw_text[i] = encoder.decode(ids[i][mask[i]])
    record: dict[str, Any] = {
        "name": REENCODE_RECORD, "version": 1, "text_mode": "reencode", "encoder": encoder.describe(),
        "samples_reencoded": int(index.size), "samples": len(clean),
        "realised": {"text": realised(int(index.size), len(clean), "samples")},
    }
    if check is not None:
        record["encoder_check"] = dict(check)
    return corrupted.replace(text=text, raw_text=raw_text, corruptions=(*corrupted.corruptions, record))


@dataclass
class TextReencoder:
    """A checked encoder ready to re-encode corrupted copies of splits of one dataset."""

    encoder: "LocalTextEncoder"
    check: dict[str, Any] = field(default_factory=dict)

    def __call__(self, corrupted: Split, clean: Split) -> Split:
        """Re-encode ``corrupted`` against ``clean`` (see :func:`reencode_text`)."""
        return reencode_text(corrupted, clean, self.encoder, check=self.check)

    @property
    def spec(self) -> str:
        """The encoder's spec string (``hf:PATH`` or ``minilm``)."""
        return self.encoder.spec

    def describe(self) -> dict[str, Any]:
        """What a results record says about the text mode."""
        return {"text_mode": "reencode", "text_encoder": self.encoder.describe(), "encoder_check": dict(self.check)}


def prepare_reencoder(text_mode: str, text_encoder: TextEncoderArg, clean: Split, *, source: str = "the dataset",
                      allow_mismatch: bool = False, device: str | None = "auto") -> TextReencoder | None:
    """``None`` in ``features`` mode; in ``reencode`` mode the loaded encoder, checked against ``clean``."""
    if check_text_mode(text_mode, text_encoder) == "features":
        return None
    encoder = resolve_encoder(text_encoder, device)  # type: ignore[arg-type]
    check = check_encoder_matches(clean, encoder, source=source, allow_mismatch=allow_mismatch)
    return TextReencoder(encoder, check)


def text_mode_config(reencoder: TextReencoder | None) -> dict[str, Any]:
    """The text-mode entries of a results record or manifest."""
    if reencoder is None:
        return {"text_mode": "features", "text_encoder": None}
    return reencoder.describe()


def corruption_records(split: Split) -> list[dict[str, Any]]:
    """The split's corruption records without the re-encoding record(s)."""
    return [dict(r) for r in split.corruptions if r.get("name") != REENCODE_RECORD]
