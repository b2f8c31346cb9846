"""Corruption engine: registered, composable, deterministic corruptions of MMSA splits.

>>> from robustmsa.corruptions import create_corruption, list_corruptions
>>> corrupted = create_corruption("word_drop+frame_drop", 0.3)(split, seed=1111)  # doctest: +SKIP
"""

from .base import (CORRUPTIONS, Compose, Corruption, create_corruption, get_corruption, list_corruptions,
                   modality_stream, register_corruption)
from .missing import FrameDrop, ModalityMissing, RandomMissing, TemporalMissing, WordDrop
from .noise import GaussianNoise
from .reencode import TEXT_MODES, ReencodeError, TextReencoder, prepare_reencoder, reencode_text
from .temporal import Blur, Misalign
from .text import WordShuffle

__all__ = [
    "CORRUPTIONS", "Compose", "Corruption", "create_corruption", "get_corruption", "list_corruptions",
    "modality_stream", "register_corruption", "RandomMissing", "WordDrop", "FrameDrop", "ModalityMissing",
    "TemporalMissing", "WordShuffle", "Blur", "Misalign", "GaussianNoise", "TEXT_MODES", "ReencodeError",
    "TextReencoder", "prepare_reencoder", "reencode_text",
]
