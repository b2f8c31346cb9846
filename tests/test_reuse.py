"""Reusing clean unimodal encodings during evaluation: same predictions, only untouched modalities reused."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_synth_dataset
from robustmsa.corruptions import create_corruption
from robustmsa.engine import SplitEvaluator, evaluate_split, predict, run_eval, train
from robustmsa.engine.reuse import unchanged_modalities

TINY_ALMT = {"token_dim": 16, "token_len": 4, "proj_heads": 2, "proj_dim_head": 8, "proj_mlp_dim": 16,
             "l_enc_heads": 2, "l_enc_dim_head": 8, "l_enc_mlp_dim": 16, "ahl_heads": 2, "ahl_dim_head": 8,
             "fusion_heads": 2, "fusion_dim_head": 8, "fusion_mlp_dim": 16, "AHL_depth": 2,
             "fusion_layer_depth": 1}


@pytest.fixture(scope="module")
def dataset():
    return tiny_synth_dataset()


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    return train("almt", dataset, seed=3, epochs=2, overrides=TINY_ALMT, cache=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("corruption, untouched", [
    ("word_drop", {"audio", "vision"}), ("word_shuffle", {"audio", "vision"}), ("frame_drop", {"text"}),
    ("blur", {"text", "audio"}), ("random_missing", set()), ("gaussian_noise", {"text"}),
])
def test_unchanged_modalities_follow_what_the_corruption_touched(dataset, corruption, untouched):
    corrupted = create_corruption(corruption, 0.5)(dataset.test, 11)
    assert unchanged_modalities(dataset.test, corrupted) == untouched
    assert unchanged_modalities(dataset.test, dataset.test) == {"text", "audio", "vision"}


def test_a_reordered_split_reuses_nothing(dataset):
    reordered = dataset.test.select(np.arange(len(dataset.test))[::-1])
    assert unchanged_modalities(dataset.test, reordered) == set()


@pytest.mark.parametrize("corruption", ["word_drop", "word_shuffle", "frame_drop", "blur", "random_missing"])
def test_reused_encodings_give_the_plain_forward_predictions(dataset, trained, corruption):
    corrupted = create_corruption(corruption, 0.6)(dataset.test, 11)
    evaluator = SplitEvaluator(trained, dataset.test)
    metrics, reused = evaluator.evaluate(corrupted)
    assert metrics == evaluate_split(trained, corrupted)
    assert set(reused) == unchanged_modalities(dataset.test, corrupted)
    plain = predict(trained.model, corrupted)
    staged = predict(trained.model, corrupted, reuse=evaluator._encodings, reuse_modalities=set(reused))
    np.testing.assert_array_equal(staged, plain)


def test_reuse_really_skips_the_untouched_encoders(dataset, trained, monkeypatch):
    evaluator = SplitEvaluator(trained, dataset.test)
    evaluator.clean()
    calls: list[str] = []
    original = trained.model.encode_modality
    monkeypatch.setattr(trained.model, "encode_modality", lambda batch, m: calls.append(m) or original(batch, m))
    evaluator.evaluate(create_corruption("word_drop", 0.5)(dataset.test, 11))
    assert set(calls) == {"text"}


def test_eval_records_which_encodings_were_reused(dataset, tmp_path):
    record = run_eval("almt", dataset, corruption="frame_drop", severity=0.4, seeds=[3], epochs=1,
                      overrides=TINY_ALMT, cache=str(tmp_path))
    assert record["per_seed"][0]["reused_clean_encodings"] == ["text"]
