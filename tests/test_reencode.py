"""Text mode ``reencode``: corrupted ids are re-encoded with the local encoder that made the clean ``text`` features.

A tiny random BERT (tests/hf_fixtures.py) stands in for the real encoder; the splits here hold text features that
really are that encoder's encoding of their ids, so re-encoding an uncorrupted sample reproduces its row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers",
                    reason="re-encoding needs a local transformers encoder: pip install 'robustmsa[hf]'")

from hf_fixtures import WORDS, make_tiny_bert_dir  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from robustmsa.cli import app  # noqa: E402
from robustmsa.corruptions import create_corruption  # noqa: E402
from robustmsa.corruptions.apply import corrupt_dataset  # noqa: E402
from robustmsa.corruptions.reencode import (REENCODE_RECORD, EncoderMismatchWarning, ReencodeError,  # noqa: E402
                                            changed_samples, check_conventions, check_encoder_matches,
                                            prepare_reencoder, reencode_text)
from robustmsa.datasets.io import _spec, write_mmsa_pickle  # noqa: E402
from robustmsa.datasets.split import Dataset, Split  # noqa: E402
from robustmsa.results import CellKey, ResultsStore  # noqa: E402
from robustmsa.text_encoding import LocalTextEncoder, load_text_encoder  # noqa: E402

LENGTH = 14


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def encoder(encoder_dir) -> LocalTextEncoder:
    return load_text_encoder(f"hf:{encoder_dir}", device="cpu")


@pytest.fixture(scope="module")
def other_encoder(tmp_path_factory) -> LocalTextEncoder:
    """The same architecture and vocabulary with other random weights: a different encoder."""
    directory = make_tiny_bert_dir(tmp_path_factory.mktemp("other_bert"), seed=1)
    return load_text_encoder(f"hf:{directory}", device="cpu")


def sentences(n: int, seed: int) -> list[str]:
    """``n`` sentences of 1 to 10 in-vocabulary words; the second is empty ([CLS] [SEP] only)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 11)))) for _ in range(n)]
    texts[1] = ""
    return texts


def encoded_split(encoder: LocalTextEncoder, n: int = 24, seed: int = 0, name: str = "test") -> Split:
    """A split whose ``text`` is ``encoder``'s encoding of its ``text_bert`` ids (audio/vision random)."""
    rng = np.random.default_rng(100 + seed)
    texts = sentences(n, seed)
    text_bert = encoder.tokenize(texts, LENGTH)
    a_len, v_len = rng.integers(1, 9, size=n), rng.integers(1, 7, size=n)
    audio = rng.normal(size=(n, 8, 5)).astype(np.float32) * (np.arange(8)[None, :] < a_len[:, None])[..., None]
    vision = rng.normal(size=(n, 6, 4)).astype(np.float32) * (np.arange(6)[None, :] < v_len[:, None])[..., None]
    return Split(name=name, raw_text=np.array(texts, dtype=object),
                 id=np.array([f"{name}{i}$_$0" for i in range(n)], dtype=object), text=encoder.encode(text_bert),
                 text_bert=text_bert, audio=audio, vision=vision, audio_lengths=a_len, vision_lengths=v_len,
                 regression_labels=rng.uniform(-3, 3, size=n).astype(np.float32))


def encoded_dataset(encoder: LocalTextEncoder, fingerprint: str = "test:reencode") -> Dataset:
    """Train/valid/test splits encoded by ``encoder``."""
    splits = {name: encoded_split(encoder, n=n, seed=i, name=name)
              for i, (name, n) in enumerate((("train", 48), ("valid", 16), ("test", 24)))}
    return Dataset(_spec("tiny-text", "mosi", splits, fingerprint, "<tiny-text>"), splits)


def shared(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` are views of the same buffer (splits hold read-only views, so identity is not kept)."""
    return a.shape == b.shape and np.shares_memory(a, b)


@pytest.fixture(scope="module")
def clean(encoder) -> Split:
    return encoded_split(encoder)


# ------------------------------------------------------------------------------------------------ reencode_text
def test_word_drop_reencodes_changed_samples_and_keeps_the_others_bit_for_bit(encoder, clean):
    corrupted = create_corruption("word_drop", 0.3)(clean, seed=5)
    changed = changed_samples(corrupted, clean)
    assert 0 < changed.sum() < len(clean)  # some samples keep every word at 0.3
    out = reencode_text(corrupted, clean, encoder)
    # unchanged samples: the clean rows and raw text, bit for bit
    np.testing.assert_array_equal(out.text[~changed], clean.text[~changed])
    assert list(out.raw_text[~changed]) == list(clean.raw_text[~changed])
    # changed samples: exactly the encoder's states of the corrupted ids; padding rows stay zero
    direct = encoder.encode(np.asarray(corrupted.text_bert))
    np.testing.assert_allclose(out.text[changed], direct[changed], rtol=0, atol=1e-5)
    assert not np.any(out.text[~clean.text_mask])
    # ids, mask, segments and the other modalities are the corruption's; nothing else moves
    assert shared(out.text_bert, corrupted.text_bert) and shared(out.audio, clean.audio)
    assert shared(out.vision, clean.vision)
    record = out.corruptions[-1]
    assert record["name"] == REENCODE_RECORD and record["text_mode"] == "reencode"
    assert record["samples_reencoded"] == int(changed.sum()) and record["encoder"]["spec"] == encoder.spec
    assert out.corruptions[:-1] == corrupted.corruptions


def test_reencoding_changes_the_context_around_a_dropped_token_where_features_mode_does_not(encoder, clean):
    corrupted = create_corruption("word_drop", 0.3)(clean, seed=5)
    out = reencode_text(corrupted, clean, encoder)
    dropped = (corrupted.text_ids != clean.text_ids)
    sample = int(np.flatnonzero(dropped.sum(axis=1) == 1)[0])  # one dropped token: the rest is context
    position = int(np.flatnonzero(dropped[sample])[0])
    kept = clean.text_mask[sample] & ~dropped[sample]
    # features mode: a zero row at the dropped token, its neighbours' rows untouched (they still carry the word)
    assert not corrupted.text[sample, position].any()
    np.testing.assert_array_equal(corrupted.text[sample][kept], clean.text[sample][kept])
    # reencode mode: the dropped token is [UNK]'s contextual state (not zero) and every neighbour's row changed
    assert out.text[sample, position].any()
    assert np.all(np.abs(out.text[sample][kept] - clean.text[sample][kept]).max(axis=1) > 1e-6)


def test_raw_text_is_decoded_from_the_corrupted_ids(encoder, clean):
    corrupted = create_corruption("word_drop", 0.5)(clean, seed=2)
    out = reencode_text(corrupted, clean, encoder)
    for i in np.flatnonzero(changed_samples(corrupted, clean)):
        kept = [encoder.tokenizer.convert_ids_to_tokens(int(t)) for t, m in
                zip(corrupted.text_ids[i], corrupted.text_mask[i]) if m and t not in (100, 101, 102)]
        assert out.raw_text[i].split() == kept  # dropped words are gone, the others in order
        assert len(out.raw_text[i].split()) < len(clean.raw_text[i].split())


@pytest.mark.parametrize("spec, modalities", [("word_shuffle", None), ("word_drop", None), ("random_missing", "text"),
                                              ("random_missing", None), ("temporal_missing", "text"),
                                              ("word_drop+frame_drop", None)])
def test_text_corruptions_reencode_like_the_encoder_on_the_corrupted_ids(encoder, clean, spec, modalities):
    corrupted = create_corruption(spec, 0.6, modalities=modalities)(clean, seed=11)
    changed = changed_samples(corrupted, clean)
    assert changed.any()
    out = reencode_text(corrupted, clean, encoder)
    direct = encoder.encode(np.asarray(corrupted.text_bert))
    np.testing.assert_allclose(out.text, np.where(changed[:, None, None], direct, clean.text), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out.text[~changed], clean.text[~changed])
    assert shared(out.audio, corrupted.audio) and shared(out.vision, corrupted.vision)
    if spec == "word_shuffle":  # the same words in another order
        for i in np.flatnonzero(changed):
            assert sorted(out.raw_text[i].split()) == sorted(clean.raw_text[i].split())


@pytest.mark.parametrize("spec", ["frame_drop", "blur", "gaussian_noise", "misalign"])
def test_audio_vision_corruptions_reencode_nothing(encoder, clean, spec, monkeypatch):
    corrupted = create_corruption(spec, 0.7)(clean, seed=3)
    calls = []
    monkeypatch.setattr(LocalTextEncoder, "encode", lambda self, *a, **k: calls.append(1))
    out = reencode_text(corrupted, clean, encoder)
    assert calls == [] and out.corruptions[-1]["samples_reencoded"] == 0
    assert shared(out.text, clean.text) and shared(out.raw_text, corrupted.raw_text)
    assert shared(out.text_bert, clean.text_bert)


def test_severity_zero_and_identical_ids_reencode_nothing(encoder, clean):
    same = create_corruption("word_drop", 0.0)(clean, seed=1)
    out = reencode_text(same, clean, encoder)
    assert shared(out.text, clean.text) and out.corruptions[-1]["samples_reencoded"] == 0


def test_a_changed_attention_mask_is_refused(encoder, clean):
    text_bert = np.array(clean.text_bert)
    text_bert[0, 1, 0] = 0
    with pytest.raises(ReencodeError, match="attention mask"):
        reencode_text(clean.replace(text_bert=text_bert), clean, encoder)


# ------------------------------------------------------------------------------------------------ checks
@dataclass
class FakeEncoder:
    """Only what the convention check reads."""

    ids: dict
    dim: int = 32
    spec: str = "hf:fake"

    def special_ids(self) -> dict:
        return self.ids


def test_only_bert_wordpiece_special_ids_are_accepted(clean):
    roberta = FakeEncoder({"pad": 1, "unk": 3, "cls": 0, "sep": 2})
    with pytest.raises(ReencodeError, match="BERT-WordPiece"):
        check_conventions(roberta, clean)
    with pytest.raises(ReencodeError, match="hidden size 64.*32-d"):
        check_conventions(FakeEncoder({"pad": 0, "unk": 100, "cls": 101, "sep": 102}, dim=64), clean)


def test_the_matching_encoder_passes_the_check(encoder, clean):
    check = check_encoder_matches(clean, encoder)
    assert check["match"] is True and check["samples"] == 16 and check["max_abs_diff"] < 1e-4


def test_features_from_another_encoder_are_a_clear_error_or_with_the_flag_a_warning(encoder, other_encoder):
    foreign = encoded_split(other_encoder)  # the same ids, the features of a differently seeded BERT
    with pytest.raises(ReencodeError, match="were not produced by hf:.*mix two encoders.*data build --text-encoder"
                                            ".*--text-mode features.*--allow-encoder-mismatch"):
        prepare_reencoder("reencode", encoder, foreign, source="foreign.pkl")
    with pytest.warns(EncoderMismatchWarning, match="foreign.pkl"):
        reencoder = prepare_reencoder("reencode", encoder, foreign, source="foreign.pkl", allow_mismatch=True)
    assert reencoder.check["match"] is False and reencoder.check["allowed_mismatch"] is True
    out = reencoder(create_corruption("word_drop", 0.5)(foreign, seed=1), foreign)
    assert out.corruptions[-1]["encoder_check"]["allowed_mismatch"] is True


def test_missing_or_unused_encoder_and_unknown_mode_are_clear_errors(encoder, clean):
    with pytest.raises(ReencodeError, match="needs a text encoder"):
        prepare_reencoder("reencode", None, clean)
    with pytest.raises(ReencodeError, match="only used with text_mode='reencode'"):
        prepare_reencoder("features", encoder, clean)
    with pytest.raises(ReencodeError, match="text_mode must be one of"):
        prepare_reencoder("bert", encoder, clean)
    assert prepare_reencoder("features", None, clean) is None


def test_run_eval_without_an_encoder_fails_before_training(encoder):
    from robustmsa.engine import run_eval

    with pytest.raises(ReencodeError, match="needs a text encoder"):
        run_eval("lf_dnn", encoded_dataset(encoder), corruption="word_drop", text_mode="reencode")


def test_corrupt_dataset_reencodes_every_chosen_split(encoder):
    dataset = encoded_dataset(encoder)
    out = corrupt_dataset(dataset, create_corruption("word_drop", 0.5), 7, ("train", "test"), text_mode="reencode",
                          text_encoder=encoder)
    for name in ("train", "test"):
        assert out[name].corruptions[-1]["samples_reencoded"] > 0
        assert out[name].corruptions[-1]["encoder_check"]["match"] is True
    assert shared(out.valid.text, dataset.valid.text)


# ------------------------------------------------------------------------------------------------ evaluation reuse
def test_clean_encoding_reuse_stays_correct_on_reencoded_splits(encoder, tmp_path):
    from robustmsa.engine import SplitEvaluator, evaluate_split, train
    from robustmsa.engine.reuse import unchanged_modalities

    dataset = encoded_dataset(encoder)
    trained = train("almt", dataset, seed=3, epochs=1, cache=str(tmp_path / "cache"),
                    overrides={"token_dim": 16, "token_len": 4, "proj_heads": 2, "proj_dim_head": 8,
                               "proj_mlp_dim": 16, "l_enc_heads": 2, "l_enc_dim_head": 8, "l_enc_mlp_dim": 16,
                               "ahl_heads": 2, "ahl_dim_head": 8, "fusion_heads": 2, "fusion_dim_head": 8,
                               "fusion_mlp_dim": 16, "AHL_depth": 2, "fusion_layer_depth": 1})
    reencoder = prepare_reencoder("reencode", encoder, dataset.test)
    evaluator = SplitEvaluator(trained, dataset.test)
    for spec, untouched in (("word_drop", {"audio", "vision"}), ("frame_drop", {"text"})):
        split = reencoder(create_corruption(spec, 0.5)(dataset.test, 1111), dataset.test)
        assert unchanged_modalities(dataset.test, split) == untouched
        metrics, reused = evaluator.evaluate(split)
        assert set(reused) == untouched and metrics == evaluate_split(trained, split)


# ------------------------------------------------------------------------------------------------ results keys
def test_cell_keys_tell_text_modes_apart_and_keep_default_digests():
    fields = ("almt", "sha256:abc", 1111, None, "0123456789abcdef", "word_drop", 0.5, 1111)
    # digests computed with results.py before text modes existed: default-mode cells keep their file names
    assert CellKey(*fields).digest() == "77ef16c62238df96ccce"
    assert CellKey(*fields, "features").digest() == "77ef16c62238df96ccce"
    assert CellKey("lf_dnn", "synth:ff", 1112, "random_missing", "fedcba9876543210", "random_missing", 0.3,
                   1111).digest() == "4c958cf9cee44ba88031"
    assert "text_mode" not in CellKey(*fields).to_dict()
    reencoded = CellKey(*fields, "reencode", "minilm")
    assert reencoded.to_dict()["text_mode"] == "reencode" and reencoded.to_dict()["text_encoder"] == "minilm"
    assert len({CellKey(*fields).digest(), reencoded.digest(), CellKey(*fields, "reencode", "hf:x").digest()}) == 3


def test_old_records_without_a_text_mode_read_as_features(tmp_path):
    store = ResultsStore(tmp_path)
    key = CellKey("m", "fp", 1, None, "h", "c", 0.0, 1)
    store.write(key, {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
    assert store.has(key) and not store.has(CellKey("m", "fp", 1, None, "h", "c", 0.0, 1, "reencode", "minilm"))
    frame = store.to_frame()
    assert list(frame["text_mode"]) == ["features"] and frame["text_encoder"].isna().all()


# ------------------------------------------------------------------------------------------------ sweep + CLI
SWEEP = ["sweep", "--methods", "lf_dnn", "--corruptions", "word_drop,frame_drop", "--levels", "0,0.5",
         "--epochs", "1", "--quiet", "--label-family", "mosi"]


def test_a_sweep_in_both_modes_keeps_them_apart(encoder, encoder_dir, tmp_path):
    from robustmsa.leaderboard import build
    from robustmsa.robustness import summarize
    from robustmsa.sweep import run_sweep

    data = tmp_path / "tiny_text.pkl"
    write_mmsa_pickle(encoded_dataset(encoder), data)
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    features = CliRunner().invoke(app, [*SWEEP, "--data", str(data), "--out", str(out), "--cache-dir", cache])
    assert features.exit_code == 0, features.output
    spec = f"hf:{encoder_dir}"
    reencode = CliRunner().invoke(app, [*SWEEP, "--data", str(data), "--out", str(out), "--cache-dir", cache,
                                        "--text-mode", "reencode", "--text-encoder", spec])
    assert reencode.exit_code == 0, reencode.output
    assert "4 cells: 4 computed, 0 already done; 0 model(s) trained" in reencode.output  # the model is shared
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/*.json")]
    assert len(records) == 8
    modes = {(r["key"].get("text_mode", "features"), r["key"]["corruption"], r["key"]["level"]): r for r in records}
    assert {m for m, _, _ in modes} == {"features", "reencode"}
    assert modes[("reencode", "word_drop", 0.5)]["samples_reencoded"] > 0
    assert modes[("reencode", "frame_drop", 0.5)]["samples_reencoded"] == 0
    assert modes[("reencode", "word_drop", 0.5)]["key"]["text_encoder"] == spec
    # frame_drop leaves text alone: both modes measure the same thing
    assert modes[("reencode", "frame_drop", 0.5)]["metrics"] == modes[("features", "frame_drop", 0.5)]["metrics"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_mode"] == "reencode" and manifest["grid"]["text_encoder"] == spec
    assert manifest["encoder_check"]["match"] is True
    # summaries and the leaderboard: one row per mode, never averaged together
    frame = ResultsStore(out).to_frame()
    assert set(frame["text_mode"]) == {"features", "reencode"}
    summary = summarize(frame)
    assert len(summary[(summary["corruption"] == "word_drop") & (summary["metric"] == "MAE")]) == 2
    board = build(frame, "mae")
    assert sorted(board["text_mode"]) == ["features", f"reencode:{spec}"]
    printed = CliRunner().invoke(app, ["leaderboard", str(out), "--metric", "mae", "--format", "csv"])
    assert printed.exit_code == 0 and "reencode" in printed.output
    assert {p.name for p in (out / "plots").iterdir()} >= {"heatmap.png", "curve_word_drop.png"}
    # resuming either mode recomputes nothing; the library takes an encoder object too
    from robustmsa.datasets import load

    again = run_sweep(["lf_dnn"], load(str(data), label_family="mosi"), ["word_drop", "frame_drop"], [0.0, 0.5],
                      [1111], out, epochs=1, cache=cache, text_mode="reencode", text_encoder=encoder)
    assert again.computed == 0 and again.skipped == 4


def test_cli_corrupt_reencodes_and_records_it(encoder, other_encoder, encoder_dir, tmp_path):
    import pickle

    data = tmp_path / "tiny_text.pkl"
    write_mmsa_pickle(encoded_dataset(encoder), data)
    out = tmp_path / "wd.pkl"
    args = ["corrupt", "--data", str(data), "--label-family", "mosi", "--corruption", "word_drop", "--severity", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--text-mode", "reencode",
                                      "--text-encoder", f"hf:{encoder_dir}"])
    assert result.exit_code == 0, result.output
    assert "reencode_text realised: text" in result.output
    sidecar = json.loads(out.with_name("wd.pkl.json").read_text())
    assert sidecar["text_mode"] == "reencode" and sidecar["text_encoder"]["spec"] == f"hf:{encoder_dir}"
    assert sidecar["splits"]["test"][-1]["name"] == REENCODE_RECORD
    with open(out, "rb") as handle:
        test = pickle.load(handle)["test"]
    direct = encoder.encode(test["text_bert"])
    np.testing.assert_allclose(test["text"], direct, rtol=0, atol=1e-5)  # every row: encoder(ids)
    # features of another encoder: a clear error, or with the flag a warning that is recorded
    foreign = tmp_path / "foreign.pkl"
    write_mmsa_pickle(encoded_dataset(other_encoder), foreign)
    args[2] = str(foreign)
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "f.pkl"), "--text-mode", "reencode",
                                       "--text-encoder", f"hf:{encoder_dir}"])
    assert refused.exit_code == 1 and "were not produced by" in refused.output and not (tmp_path / "f.pkl").exists()
    allowed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "f.pkl"), "--text-mode", "reencode",
                                       "--text-encoder", f"hf:{encoder_dir}", "--allow-encoder-mismatch"])
    assert allowed.exit_code == 0 and "warning:" in allowed.output, allowed.output
    record = json.loads((tmp_path / "f.pkl.json").read_text())
    assert record["encoder_check"]["allowed_mismatch"] is True


def test_cli_text_mode_errors_and_eval_record(encoder, encoder_dir, tmp_path):
    data = tmp_path / "tiny_text.pkl"
    write_mmsa_pickle(encoded_dataset(encoder), data)
    base = ["eval", "--method", "lf_dnn", "--data", str(data), "--label-family", "mosi", "--corruption", "word_drop",
            "--noise", "0.5", "--epochs", "1", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    missing = CliRunner().invoke(app, [*base, "--text-mode", "reencode"])
    assert missing.exit_code == 1 and "needs a text encoder" in missing.output
    unused = CliRunner().invoke(app, [*base, "--text-encoder", f"hf:{encoder_dir}"])
    assert unused.exit_code == 1 and "only used with" in unused.output
    absent = CliRunner().invoke(app, [*base, "--text-mode", "reencode", "--text-encoder", f"hf:{tmp_path / 'nope'}"])
    assert absent.exit_code == 1 and "no transformers model directory" in absent.output
    bad = CliRunner().invoke(app, [*base, "--text-mode", "bert"])
    assert bad.exit_code == 2
    output = tmp_path / "eval.json"
    done = CliRunner().invoke(app, [*base, "--text-mode", "reencode", "--text-encoder", f"hf:{encoder_dir}",
                                    "--output", str(output)])
    assert done.exit_code == 0, done.output
    assert "text mode: reencode" in done.output
    record = json.loads(output.read_text())
    assert record["config"]["text_mode"] == "reencode" and record["config"]["encoder_check"]["match"] is True
    assert record["config"]["text_encoder"]["spec"] == f"hf:{encoder_dir}"
    assert record["corruption_record"][-1]["name"] == REENCODE_RECORD
    plain = CliRunner().invoke(app, [*base, "--output", str(tmp_path / "plain.json")])
    assert plain.exit_code == 0
    assert json.loads((tmp_path / "plain.json").read_text())["config"]["text_mode"] == "features"
