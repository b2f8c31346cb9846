"""The synthetic benchmark: determinism, MMSA format and conventions, and its documented causal structure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robustmsa.datasets import load
from robustmsa.datasets.split import CLS_ID, PAD_ID, SEP_ID, SPLIT_NAMES, UNK_ID, content_hash
from robustmsa.datasets.synth import (FILLERS, INTENSIFIERS, NEGATORS, PROFILES, SENTIMENT_WORDS,
                                      SynthProfile, generate, list_profiles, sarcasm_mask)
from robustmsa.datasets.validate import splits_from_mmsa_dict

WORD_IDS = {w: i for _, words in SENTIMENT_WORDS for w, i in words}
WORD_IDS |= {w: i for w, i, _ in INTENSIFIERS} | dict(NEGATORS) | dict(FILLERS)


@pytest.fixture(scope="module")
def synth():
    return generate("synth", seed=0)


@pytest.fixture(scope="module")
def synth_mosi():
    return generate("synth-mosi", seed=0)


# ------------------------------------------------------------------------------------------ API
def test_profiles_and_errors():
    assert list_profiles() == ["synth", "synth-mosi"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["synth"].n_train = 5
    with pytest.raises(KeyError, match=r"unknown synth profile 'mosi'.*'synth', 'synth-mosi'"):
        generate("mosi")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate("synth", seed=-1)
    with pytest.raises(ValueError, match="text_len must be >= 6"):
        dataclasses.replace(PROFILES["synth"], text_len=5)


def test_custom_profile_and_load(synth):
    tiny = dataclasses.replace(PROFILES["synth"], name="tiny", n_train=7, n_valid=3, n_test=5)
    data = generate(tiny, seed=0)
    assert [len(s) for s in data] == [7, 3, 5]
    assert data.spec.name == "tiny" and data.spec.source == "synth:tiny:seed=0"
    assert content_hash(load("synth", seed=0)) == content_hash(synth)


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_in_seed(synth):
    again = generate("synth", seed=0)
    other = generate("synth", seed=1)
    assert again.spec == synth.spec
    assert synth.spec.fingerprint == f"synth:{content_hash(synth)}"
    for key, value in synth.test.to_mmsa_dict().items():
        np.testing.assert_array_equal(again.test.to_mmsa_dict()[key], value)
    assert content_hash(other) != content_hash(synth)
    assert other.spec.fingerprint != synth.spec.fingerprint
    assert not np.array_equal(other.train.regression_labels, synth.train.regression_labels)
    # the word-embedding table is fixed (independent of the seed): [SEP] rows agree across seeds
    sep = synth.train.text[0, synth.train.text_lengths[0] - 1]
    np.testing.assert_array_equal(other.train.text[0, other.train.text_lengths[0] - 1], sep)


# ------------------------------------------------------------------------------------------ format
@pytest.mark.parametrize("name", ["synth", "synth-mosi"])
def test_shapes_and_dtypes(name, request):
    data = request.getfixturevalue(name.replace("-", "_"))
    profile = PROFILES[name]
    assert data.spec.dims == profile.dims == {"text": profile.text_dim, "audio": profile.audio_dim,
                                              "vision": profile.vision_dim}
    assert data.spec.seq_lens == profile.seq_lens == {"text": profile.text_len, "audio": profile.audio_len,
                                                      "vision": profile.vision_len}
    assert data.spec.label_family == "mosi" and data.spec.label_range == (-3.0, 3.0) and not data.spec.aligned
    assert data.spec.source == f"synth:{name}:seed=0"
    for split in data:
        n = profile.split_sizes[split.name]
        assert split.text.shape == (n, profile.text_len, profile.text_dim)
        assert split.text_bert.shape == (n, 3, profile.text_len)
        assert split.audio.shape == (n, profile.audio_len, profile.audio_dim)
        assert split.vision.shape == (n, profile.vision_len, profile.vision_dim)
        for key in ("text", "text_bert", "audio", "vision", "regression_labels"):
            assert getattr(split, key).dtype == np.float32, key
        assert split.audio_lengths.dtype == split.vision_lengths.dtype == np.int64
        assert split.raw_text.dtype == split.id.dtype == object and split.has_length_keys
        assert set(split.extras) == {"regression_labels_T", "regression_labels_A", "regression_labels_V",
                                     "annotations"}


def test_mosi_profile_matches_mosi():
    p = PROFILES["synth-mosi"]
    assert (p.n_train, p.n_valid, p.n_test) == (1284, 229, 686)
    shapes = (p.text_len, p.text_dim, p.audio_len, p.audio_dim, p.vision_len, p.vision_dim)
    assert shapes == (50, 768, 375, 5, 500, 20)


@pytest.mark.parametrize("name", ["synth", "synth-mosi"])
def test_mmsa_conventions(name, request):
    data = request.getfixturevalue(name.replace("-", "_"))
    profile = PROFILES[name]
    for split in data:
        ids, mask, segments = split.text_bert[:, 0], split.text_bert[:, 1], split.text_bert[:, 2]
        lengths = split.text_lengths
        rows = np.arange(len(split))
        assert np.all((mask == 0) | (mask == 1)) and np.all(mask[:, 1:] <= mask[:, :-1])  # prefix form
        assert np.all(segments == 0)
        assert np.all(ids[:, 0] == CLS_ID) and np.all(ids[rows, lengths - 1] == SEP_ID)
        assert np.array_equal(ids != PAD_ID, mask == 1) and not np.any(ids == UNK_ID)
        assert lengths.min() >= 6 and lengths.max() <= profile.text_len
        assert split.audio_lengths.min() >= profile.min_audio_len
        assert split.audio_lengths.max() <= profile.audio_len
        assert split.vision_lengths.min() >= profile.min_vision_len
        assert split.vision_lengths.max() <= profile.vision_len
        for modality in ("text", "audio", "vision"):
            features, valid = getattr(split, modality), split.valid_mask(modality)
            assert not np.any(features[~valid]), f"{modality} padding rows must be 0"
            assert np.all(np.abs(features[valid]).max(axis=-1) > 0)
        assert np.corrcoef(lengths, split.audio_lengths)[0, 1] > 0.5
        assert np.corrcoef(lengths, split.vision_lengths)[0, 1] > 0.5
        assert len(set(split.id)) == len(split) and split.id[0].startswith("synth") and "$_$" in split.id[0]
    all_ids = np.concatenate([s.id for s in data])
    assert len(set(all_ids)) == len(all_ids)
    videos = [{i.split("$_$")[0] for i in s.id} for s in data]
    assert not (videos[0] & videos[1] or videos[0] & videos[2] or videos[1] & videos[2])  # video-level splits


def test_raw_text_matches_ids(synth):
    assert WORD_IDS["good"] == 2204 and WORD_IDS["bad"] == 2919 and WORD_IDS["not"] == 2025
    assert WORD_IDS["very"] == 2200 and WORD_IDS["the"] == 1996
    assert len(set(WORD_IDS.values())) == len(WORD_IDS)  # one id per word
    assert all(w.islower() and w.isalpha() for w in WORD_IDS)
    for split in synth:
        for text, ids, length in zip(split.raw_text, split.text_ids, split.text_lengths):
            assert [WORD_IDS[w] for w in text.split(" ")] == ids[1:length - 1].tolist()


def test_passes_validation_unchanged(synth):
    splits, report = splits_from_mmsa_dict(synth.to_mmsa_dict(), source="synth", label_range=(-3, 3))
    assert report.total_nonfinite == 0 and report.notes == []
    assert content_hash(splits) == content_hash(synth)


# ------------------------------------------------------------------------------------------ labels, structure
def test_labels(synth):
    for split in synth:
        y = split.regression_labels
        assert np.all(np.abs(y) <= 3.0)
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            truth = split.extras[key]
            assert truth.shape == y.shape and truth.dtype == np.float32 and np.all(np.abs(truth) <= 3.0)
        expected = np.where(y > 0, "Positive", np.where(y < 0, "Negative", "Neutral"))
        assert np.array_equal(split.extras["annotations"], expected)
    y = np.concatenate([s.regression_labels for s in synth])
    assert 0.4 < np.mean(y > 0) < 0.6 and 0.4 < np.mean(y < 0) < 0.6  # both signs common
    assert np.mean(np.abs(y) <= 0.5) > 0.05 and np.mean(y == 0) > 0.0  # some near 0, some exactly 0
    assert 1.2 < y.std() < 1.9 and np.mean(np.abs(y) >= 2.5) > 0.05  # spread over [-3, 3] like MOSI


def _text_sentiment(sentence: str, profile: SynthProfile) -> float:
    """Reference s_T from the words alone: the documented phrase rule, written independently."""
    polarity = {w: pol for pol, words in SENTIMENT_WORDS for w, _ in words}
    factor = {w: f for w, _, f in INTENSIFIERS}
    negators = {w for w, _ in NEGATORS}
    words = sentence.split(" ")
    values = []
    for i, word in enumerate(words):
        if word in polarity:
            value, j = polarity[word], i - 1
            if j >= 0 and words[j] in factor:
                value, j = value * factor[words[j]], j - 1
            if j >= 0 and words[j] in negators:
                value *= profile.negation_factor
            values.append(value)
    return float(np.clip(profile.text_gain * np.mean(values), -3, 3)) if values else 0.0


def test_text_sentiment_follows_word_order(synth):
    profile = PROFILES["synth"]
    split = synth.train
    reference = np.array([_text_sentiment(s, profile) for s in split.raw_text])
    np.testing.assert_allclose(split.extras["regression_labels_T"], reference, atol=1e-5)
    negated = np.array([any(f"{n} " in s for n, _ in NEGATORS) for s in split.raw_text])
    assert 0.2 < negated.mean() < 0.7  # negation is common, so word order matters
    # a bag of words (order ignored) cannot recover s_T: shuffled sentences give other values
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(s.split(" "))) for s in split.raw_text[negated][:200]]
    changed = np.array([_text_sentiment(s, profile) for s in shuffled]) != reference[negated][:200]
    assert changed.mean() > 0.3


def test_oracle_fusion_beats_every_single_modality(synth):
    def design(split, which):
        s_t, s_a, s_v = (split.extras[f"regression_labels_{m}"].astype(np.float64) for m in "TAV")
        columns = {"T": [s_t], "A": [s_a], "V": [s_v],
                   "TAV": [s_t, s_a, s_v, s_t * sarcasm_mask(s_t, s_v, "synth")]}[which]
        return np.column_stack([np.ones_like(s_t), *columns])

    corr = {}
    for which in ("T", "A", "V", "TAV"):
        beta, *_ = np.linalg.lstsq(design(synth.train, which), synth.train.regression_labels, rcond=None)
        corr[which] = np.corrcoef(design(synth.test, which) @ beta, synth.test.regression_labels)[0, 1]
    assert corr["TAV"] > 0.95
    assert corr["TAV"] > max(corr["T"], corr["A"], corr["V"]) + 0.1
    assert corr["T"] > max(corr["A"], corr["V"])  # text is the strongest modality
    assert min(corr["A"], corr["V"]) > 0.3  # and no modality is useless
    truths = synth.train.extras
    sarcastic = sarcasm_mask(truths["regression_labels_T"], truths["regression_labels_V"])
    assert 0.02 < sarcastic.mean() < 0.1


def test_vision_evidence_is_frame_level_coactivation(synth):
    """Smile frames (dims 0 and 1 both high) track s_V; summed activity is diluted by one-dim distractors."""
    split = synth.train
    v = split.vision
    threshold = 0.5
    smile = ((v[..., 0] > threshold) & (v[..., 1] > threshold)).sum(1)
    frown = ((v[..., 2] > threshold) & (v[..., 3] > threshold)).sum(1)
    s_v = split.extras["regression_labels_V"]
    coactivation = np.corrcoef(smile - frown, s_v)[0, 1]
    single = np.corrcoef((v[..., 0] + v[..., 1] - v[..., 2] - v[..., 3]).sum(1), s_v)[0, 1]
    assert coactivation > 0.6 and coactivation > single + 0.1


def test_audio_bump_sign_encodes_audio_sentiment(synth):
    split = synth.train
    valid = split.valid_mask("audio")
    pattern = np.zeros(split.audio.shape[-1])
    pattern[:len(PROFILES["synth"].audio_cue_pattern)] = PROFILES["synth"].audio_cue_pattern
    projected = split.audio @ pattern.astype(np.float32)  # (N, L_a)
    centred = np.where(valid, projected - projected.sum(1, keepdims=True) / valid.sum(1, keepdims=True), 0.0)
    peak = np.where(np.abs(centred.max(1)) > np.abs(centred.min(1)), centred.max(1), centred.min(1))
    assert np.corrcoef(peak, split.extras["regression_labels_A"])[0, 1] > 0.5


def test_every_split_generated(synth):
    assert tuple(synth.splits) == SPLIT_NAMES
