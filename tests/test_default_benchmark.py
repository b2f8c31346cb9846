"""The embedded default end to end: ALMT beats LF-DNN, both beat the training mean, noise hurts ALMT.

The two trainings (about 25 s on 2 CPU threads together) are shared by every test in this module; the last test
checks that ALMT's degradation curve on synth does not rise with the level for the sweep's five corruptions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustmsa.corruptions import create_corruption
from robustmsa.datasets import load
from robustmsa.engine import evaluate_split, train
from robustmsa.metrics import compute


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(2)
    data = load("synth")
    models = {name: train(name, data, seed=1111, use_cache=False) for name in ("almt", "lf_dnn")}
    noisy_test = create_corruption("random_missing", 0.3)(data.test, seed=1111)
    mean = np.full(len(data.test), data.train.regression_labels.mean())
    with pytest.warns(RuntimeWarning):  # a constant prediction has no correlation
        baseline = compute(mean, data.test.regression_labels, "mosi")
    return {
        "data": data, "models": models,
        "clean": {name: evaluate_split(m, data.test) for name, m in models.items()},
        "noisy": {name: evaluate_split(m, noisy_test) for name, m in models.items()},
        "mean": baseline,
    }


def test_almt_beats_lf_dnn_and_both_beat_the_training_mean(results):
    almt, lf_dnn, mean = results["clean"]["almt"], results["clean"]["lf_dnn"], results["mean"]
    assert almt["MAE"] < lf_dnn["MAE"] < mean["MAE"]
    assert almt["Corr"] > lf_dnn["Corr"] > 0.2
    assert almt["Non0_acc_2"] > lf_dnn["Non0_acc_2"] > mean["Non0_acc_2"]


def test_noise_degrades_almt_acc2_and_mae(results):
    clean, noisy = results["clean"]["almt"], results["noisy"]["almt"]
    assert noisy["Has0_acc_2"] < clean["Has0_acc_2"] and noisy["Non0_acc_2"] < clean["Non0_acc_2"]
    assert noisy["MAE"] > clean["MAE"]


@pytest.mark.parametrize("corruption", ["random_missing", "word_drop", "word_shuffle", "frame_drop", "blur"])
def test_almt_degradation_curves_are_non_increasing_within_noise(results, corruption):
    data, almt = results["data"], results["models"]["almt"]
    curve = [evaluate_split(almt, create_corruption(corruption, level)(data.test, seed=1111))
             for level in (0.0, 0.3, 0.6, 0.9)]
    tolerance = 0.015  # one seed, 500 test samples: a few samples' worth of noise
    for lower, higher in zip(curve, curve[1:]):
        assert higher["Non0_acc_2"] <= lower["Non0_acc_2"] + tolerance
        assert higher["MAE"] >= lower["MAE"] - tolerance
    assert curve[-1]["MAE"] >= curve[0]["MAE"]
