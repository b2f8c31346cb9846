"""MAG/MIB/MLCL word-aligned pickles: conversion to an aligned MMSA dataset, validation, safety, the CLI."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest

pytest.importorskip("torch", reason="MAG conversion encodes text with a tiny BERT: torch is not installed")
pytest.importorskip("transformers", reason="MAG conversion needs transformers (pip install 'robustmsa[hf]')")

from conftest import make_raw_dataset
from hf_fixtures import make_tiny_bert_dir
from typer.testing import CliRunner

from robustmsa.cli import app
from robustmsa.datasets import (
    DataValidationError,
    NonFiniteFeaturesWarning,
    UnsafePickleError,
    content_hash,
    load,
    looks_like_mag,
    read_mag_pickle,
)
from robustmsa.datasets.mag import EXAMPLE_LAYOUT
from robustmsa.text_encoding import load_text_encoder

DV, DA, L = 6, 5, 12
runner = CliRunner()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def encoder(bert_dir):
    return load_text_encoder(f"hf:{bert_dir}", device="cpu")


def example(words, label, segment, seed, dv=DV, da=DA):
    """One MAG example ((words, visual, acoustic), label, segment) with random per-word rows."""
    rng = np.random.default_rng(seed)
    n = len(words)
    return ((list(words), rng.normal(size=(n, dv)), rng.normal(size=(n, da))), label, segment)


LONG = ["the", "movie", "was", "really", "good", "but", "the", "plot", "was", "boring", "and", "the",
        "acting", "was", "awful", "so", "i", "hated", "it"]  # 19 in-vocabulary words: truncated at L = 12


def make_mag() -> dict:
    """A tiny MAG-format dict: labels as (1,1) arrays, (1,) arrays and floats; one out-of-vocabulary word."""
    return {
        "train": [
            example(["the", "movie", "was", "great"], np.array([[2.4]], dtype=np.float32), "03bSnISJMiM[11]",
                    0),
            example(["i", "hated", "zork", "plot"], -1.8, "03bSnISJMiM_12", 1),
            example(LONG, np.array([3.0]), "long[0]", 2),
        ],
        "dev": [
            example(["fun", "film"], np.array([[0.0]]), "dev[0]", 3),
            example(["not", "very", "good"], np.array([[-0.6]]), "dev[1]", 4),
        ],
        "test": [
            example(["awful"], np.array([[-3.0]]), "test[0]", 5),
            example(["loved", "this", "story"], 1.2, "test[1]", 6),
        ],
    }


def dump(raw, path, protocol=4):
    with open(path, "wb") as handle:
        pickle.dump(raw, handle, protocol=protocol)
    return path


def reference_tokens(tokenizer, words, keep):
    """MAG's convert_to_features, written out: tokenize each word, remember its owner, truncate."""
    tokens, owner = [], []
    for index, word in enumerate(words):
        pieces = tokenizer.tokenize(word)
        tokens += pieces
        owner += [index] * len(pieces)
    return tokenizer.convert_tokens_to_ids(tokens)[:keep], owner[:keep]


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_matches_mag_conversion(tmp_path, encoder):
    raw = make_mag()
    path = dump(raw, tmp_path / "mosi.pkl")
    data = read_mag_pickle(path, encoder, max_seq_length=L)
    tokenizer, special = encoder.tokenizer, encoder.special_ids()
    assert len(tokenizer.tokenize("zork")) == 4  # out of the tiny vocabulary: letter wordpieces

    assert data.spec.name == "mag-mosi" and data.spec.label_family == "mosi" and data.spec.aligned
    assert data.spec.fingerprint.startswith("mag:") and data.spec.fingerprint == f"mag:{content_hash(data)}"
    assert dict(data.spec.seq_lens) == {"text": L, "audio": L, "vision": L}
    assert dict(data.spec.dims) == {"text": encoder.dim, "audio": DA, "vision": DV}
    for ours, theirs in (("train", "train"), ("valid", "dev"), ("test", "test")):
        split = data[ours]
        assert len(split) == len(raw[theirs]) and not split.has_length_keys
        for i, ((words, visual, acoustic), label, segment) in enumerate(raw[theirs]):
            ids, owner = reference_tokens(tokenizer, words, L - 2)
            k = len(ids)
            row = split.text_bert[i]
            assert row[0, :k + 2].tolist() == [special["cls"], *ids, special["sep"]]
            assert np.all(row[0, k + 2:] == special["pad"])
            assert row[1].tolist() == [1.0] * (k + 2) + [0.0] * (L - k - 2)
            assert np.all(row[2] == 0)
            np.testing.assert_array_equal(split.audio[i, 1:k + 1], acoustic[owner].astype(np.float32))
            np.testing.assert_array_equal(split.vision[i, 1:k + 1], visual[owner].astype(np.float32))
            for features in (split.audio[i], split.vision[i]):
                assert np.all(features[0] == 0) and np.all(features[k + 1:] == 0)  # [CLS], [SEP], padding
            assert split.text_lengths[i] == split.audio_lengths[i] == split.vision_lengths[i] == k + 2
            assert split.regression_labels[i] == np.float32(np.asarray(label).item())
            assert split.id[i] == segment and split.raw_text[i] == " ".join(words)
        assert split.regression_labels.dtype == np.float32 and split.text.dtype == np.float32
        np.testing.assert_array_equal(split.text, encoder.encode(split.text_bert))


def test_out_of_vocabulary_word_rows_repeat_per_wordpiece(tmp_path, encoder):
    data = read_mag_pickle(dump(make_mag(), tmp_path / "m.pkl"), encoder, max_seq_length=L)
    acoustic = make_mag()["train"][1][0][2].astype(np.float32)  # i hated zork plot: zork -> 4 wordpieces
    expected = acoustic[[0, 1, 2, 2, 2, 2, 3]]
    np.testing.assert_array_equal(data.train.audio[1, 1:8], expected)
    assert data.train.text_lengths[1] == 9


def test_truncation_keeps_max_seq_length_minus_two_wordpieces(tmp_path, encoder):
    path = dump(make_mag(), tmp_path / "m.pkl")
    data = read_mag_pickle(path, encoder, max_seq_length=L)
    long = data.train.text_bert[2]
    assert long[1].sum() == L and long[0, -1] == encoder.special_ids()["sep"]
    assert data.train.raw_text[2] == " ".join(LONG)  # the transcript stays whole
    assert any("1 of 3 examples had more than 10 wordpieces" in note for note in data.report.notes)
    wide = read_mag_pickle(path, encoder, max_seq_length=40)
    assert wide.train.text_lengths[2] == len(LONG) + 2
    assert not any("truncated" in note for note in wide.report.notes)
    with pytest.raises(ValueError, match="max_seq_length must be an integer >= 2"):
        read_mag_pickle(path, encoder, max_seq_length=1)
    with pytest.raises(ValueError, match="exceeds what text encoder"):
        read_mag_pickle(path, encoder, max_seq_length=encoder.max_length + 1)


def test_words_without_wordpieces_are_dropped_as_mag_does(tmp_path, encoder):
    raw = make_mag()
    raw["test"][1] = example(["loved", "", "story"], 1.2, "test[1]", 6)
    data = read_mag_pickle(dump(raw, tmp_path / "m.pkl"), encoder, max_seq_length=L)
    acoustic = raw["test"][1][0][2].astype(np.float32)
    np.testing.assert_array_equal(data.test.audio[1, 1:3], acoustic[[0, 2]])
    assert data.test.text_lengths[1] == 4
    assert any("1 words produced no wordpiece" in note for note in data.report.notes)


def test_valid_key_nonfinite_features_and_numpy_scalars(tmp_path, encoder):
    raw = make_mag()
    raw["valid"] = raw.pop("dev")
    (words, visual, acoustic), _, _ = raw["train"][0]
    acoustic[0, 0], acoustic[1, 1], visual[2, 2] = -np.inf, np.nan, np.inf
    raw["train"][0] = ((np.array(words), visual, acoustic), np.float32(2.4), np.str_("03bSnISJMiM[11]"))
    raw["test"][1] = (raw["test"][1][0], np.float64(1.2), raw["test"][1][2])
    for protocol in (2, 5):
        path = dump(raw, tmp_path / f"p{protocol}.pkl", protocol=protocol)
        with pytest.warns(NonFiniteFeaturesWarning, match="set 3 non-finite"):
            data = read_mag_pickle(path, encoder, max_seq_length=L)
        assert data.report.nonfinite == {"train": {"audio": {"nan": 1, "+inf": 0, "-inf": 1},
                                                   "vision": {"nan": 0, "+inf": 1, "-inf": 0}}}
        assert np.isfinite(data.train.audio).all() and data.train.audio[0, 1, 0] == 0
        assert data.train.id[0] == "03bSnISJMiM[11]" and type(data.train.id[0]) is str
        assert len(data.valid) == 2 and data.train.regression_labels[0] == np.float32(2.4)


def test_label_family_given_is_checked(tmp_path, encoder):
    path = dump(make_mag(), tmp_path / "m.pkl")
    with pytest.raises(DataValidationError, match=r"split 'train'.*example 0.*label in \[-1, 1\]") as info:
        read_mag_pickle(path, encoder, max_seq_length=L, label_family="sims")
    assert str(path) in str(info.value)
    assert read_mag_pickle(path, encoder, max_seq_length=L, name="x", label_family="mosi").spec.name == "x"


# ----------------------------------------------------------------------------------------------- CLI
def test_data_convert_writes_a_pickle_that_loads_and_validates(tmp_path, bert_dir, encoder):
    source = dump(make_mag(), tmp_path / "mosi.pkl")
    out = tmp_path / "out" / "mag-mosi.pkl"
    args = ["data", "convert", "--format", "mag", str(source), "--text-encoder", f"hf:{bert_dir}",
            "--out", str(out), "--max-seq-length", str(L), "--device", "cpu", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    record = json.loads((tmp_path / "out" / "mag-mosi.pkl.json").read_text())
    assert record["kind"] == "robustmsa.converted_pickle" and record["input"]["format"] == "mag"
    assert record["conversion"]["max_seq_length"] == L and record["conversion"]["counts"]["valid"] == 2
    loaded = load(out)
    direct = read_mag_pickle(source, encoder, max_seq_length=L)
    assert loaded.spec.aligned and loaded.spec.label_family == "mosi"
    assert content_hash(loaded) == content_hash(direct)
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(loaded[name].audio_lengths, direct[name].audio_lengths)
    assert record["output"]["spec"]["fingerprint"] == direct.spec.fingerprint

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def test_data_convert_reports_problems_in_one_line(tmp_path, bert_dir):
    raw = make_mag()
    raw["test"][0] = (raw["test"][0][0], "positive", "test[0]")
    source = dump(raw, tmp_path / "bad.pkl")
    out = tmp_path / "o.pkl"
    result = runner.invoke(app, ["data", "convert", "--format", "mag", str(source), "--text-encoder",
                                 f"hf:{bert_dir}", "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and "split 'test'" in result.output and "example 0" in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------- validation
def _set(split, index, item):
    def change(raw):
        raw[split][index] = item(raw[split][index])
    return change


def _features(split, index, update):
    def item(ex):
        (words, visual, acoustic), label, segment = ex
        return (update(words, visual, acoustic), label, segment)
    return _set(split, index, item)


BAD = [
    ("example-too-short", _set("train", 1, lambda ex: ex[:2]), "train", 1, "3 items"),
    ("misa-four-tuple", _features("train", 0, lambda w, v, a: (w, v, a, w)), "train", 0, "MISA/MMIM layout"),
    ("visual-rows", _features("dev", 1, lambda w, v, a: (w, v[:-1], a)), "dev", 1, r"visual a numeric array"),
    ("acoustic-1d", _features("test", 1, lambda w, v, a: (w, v, a[:, 0])), "test", 1,
     r"acoustic a numeric array"),
    ("acoustic-strings", _features("test", 1, lambda w, v, a: (w, v, a.astype(str))), "test", 1, "dtype <U"),
    ("label-string", _set("test", 0, lambda ex: (ex[0], "positive", ex[2])), "test", 0,
     "label a finite number"),
    ("label-two-values", _set("dev", 0, lambda ex: (ex[0], np.array([1.0, 2.0]), ex[2])), "dev", 0,
     r"shape \(2,\)"),
    ("label-nan", _set("train", 2, lambda ex: (ex[0], float("nan"), ex[2])), "train", 2,
     "label a finite number"),
    ("label-none", _set("train", 2, lambda ex: (ex[0], None, ex[2])), "train", 2, "label a finite number"),
    ("vision-dim", _features("test", 1, lambda w, v, a: (w, np.zeros((len(w), DV + 1)), a)), "test", 1,
     r"visual feature dimension 6 as in split 'train' example 0"),
    ("audio-dim", _features("dev", 0, lambda w, v, a: (w, v, np.zeros((len(w), DA - 1)))), "dev", 0,
     r"acoustic feature dimension 5"),
    ("word-ids", _features("train", 0, lambda w, v, a: (list(range(len(w))), v, a)), "train", 0, "word ids"),
    ("words-not-a-list", _features("train", 0, lambda w, v, a: (" ".join(w), v, a)), "train", 0,
     "words a list of word strings"),
    ("segment-none", _set("test", 1, lambda ex: (ex[0], ex[1], None)), "test", 1, "segment a string id"),
]


@pytest.mark.parametrize("what,change,split,index,expected", BAD, ids=[b[0] for b in BAD])
def test_malformed_examples_name_file_split_example_and_structure(tmp_path, encoder, what, change, split,
                                                                    index, expected):
    raw = make_mag()
    change(raw)
    path = dump(raw, tmp_path / "bad.pkl")
    with pytest.raises(DataValidationError, match=expected) as info:
        read_mag_pickle(path, encoder, max_seq_length=L)
    message = str(info.value)
    assert str(path) in message and f"split {split!r}" in message and f"example {index} " in message
    assert EXAMPLE_LAYOUT in message and info.value.example == index


def test_malformed_top_level(tmp_path, encoder):
    cases = [
        ([1, 2], None, "a dict with keys ['train', 'dev', 'test']"),
        ({k: v for k, v in make_mag().items() if k != "test"}, "test", "keys"),
        ({**make_mag(), "valid": []}, "valid", "not both 'dev' and 'valid'"),
        ({**make_mag(), "train": {"text": np.zeros(3)}}, "train", "MMSA layout"),
        ({"train": [], "dev": [], "test": []}, None, "at least one example"),
    ]
    for raw, split, expected in cases:
        path = dump(raw, tmp_path / "top.pkl")
        with pytest.raises(DataValidationError, match=re.escape(expected)) as info:
            read_mag_pickle(path, encoder, max_seq_length=L)
        assert str(path) in str(info.value)
        assert split is None or f"split {split!r}" in str(info.value)


# ------------------------------------------------------------------------------------------- safety
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_global_references_are_refused_without_running(tmp_path, encoder):
    marker = tmp_path / "pwned"
    raw = make_mag()
    raw["train"][0] = (raw["train"][0][0], _Payload(marker), "x[0]")
    path = dump(raw, tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError, match="refused to unpickle a reference to (posix|os).system"):
        read_mag_pickle(path, encoder, max_seq_length=L)
    with pytest.raises(UnsafePickleError):
        load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- detection / hint
def test_looks_like_mag():
    raw = make_mag()
    assert looks_like_mag(raw)
    assert looks_like_mag({"train": raw["train"], "valid": raw["dev"], "test": raw["test"]})
    assert looks_like_mag({"train": [], "dev": [], "test": []})
    assert not looks_like_mag(make_raw_dataset(n=4))
    assert not looks_like_mag([raw])
    assert not looks_like_mag({"train": [(1, 2, 3)], "dev": [], "test": []})


def test_mmsa_reader_points_a_mag_file_at_convert(tmp_path):
    path = dump(make_mag(), tmp_path / "mosi.pkl")
    hint = ("this looks like a MAG/MIB word-aligned pickle; convert it with "
            "`robustmsa data convert --format mag")
    with pytest.raises(DataValidationError, match=re.escape(hint)) as info:
        load(path)
    assert str(path) in str(info.value) and "--text-encoder ENC --out OUT.pkl" in str(info.value)
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and "robustmsa data convert --format mag" in result.output
