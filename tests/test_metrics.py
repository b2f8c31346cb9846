"""MMSA metrics on hand-computed vectors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from robustmsa.metrics import (ConstantInputWarning, compute, higher_is_better, metric_names, pearson, weighted_f1)

MOSI_PRED = np.array([-2.6, -0.5, 0.0, 0.5, 1.5, 2.5, 3.4])
MOSI_TRUE = np.array([-3.0, 0.0, -0.4, 0.6, 1.4, 2.6, 2.4])


def test_mosi_family_hand_computed():
    m = compute(MOSI_PRED, MOSI_TRUE, "mosi")
    assert list(m) == metric_names("mosi")
    # Has0: truth>=0 [F T F T T T T], pred>=0 [F F T T T T T] -> 5/7; per-class F1 0.5 (F, support 2), 0.8 (T, 5)
    assert m["Has0_acc_2"] == pytest.approx(5 / 7)
    assert m["Has0_F1_score"] == pytest.approx((2 * 0.5 + 5 * 0.8) / 7)
    # Non0 drops the zero label; the prediction 0.0 counts as negative, which is right for truth -0.4
    assert m["Non0_acc_2"] == 1.0 and m["Non0_F1_score"] == 1.0
    # round half to even: -0.5 -> 0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; 3.4 clipped to 3
    assert m["Mult_acc_7"] == pytest.approx(3 / 7)
    assert m["Mult_acc_5"] == pytest.approx(5 / 7)
    assert m["MAE"] == pytest.approx(2.6 / 7)
    dp, dt = MOSI_PRED - MOSI_PRED.mean(), MOSI_TRUE - MOSI_TRUE.mean()
    assert m["Corr"] == pytest.approx((dp * dt).sum() / np.sqrt((dp ** 2).sum() * (dt ** 2).sum()))


def test_sims_family_hand_computed_bins_and_edges():
    pred = np.array([-1.5, -0.7, -0.1, 0.0, 0.1, 0.70001, 1.2])
    true = np.array([-0.8, -0.69, -0.1, 0.05, 0.1, 0.7, 1.0])
    m = compute(pred, true, "sims")
    assert list(m) == metric_names("sims")
    assert m["Mult_acc_2"] == pytest.approx(6 / 7)  # 0.0 is negative in SIMS; truth 0.05 positive
    assert m["Mult_acc_3"] == 1.0  # -0.1 and 0.1 sit on right-closed edges
    assert m["Mult_acc_5"] == pytest.approx(5 / 7)  # -0.7 vs -0.69 and 0.70001 vs 0.7 straddle edges
    # F1 on a2: truth [0 0 0 1 1 1 1], pred [0 0 0 0 1 1 1]; class 0: 2*3/(6+1)=6/7, class 1: 2*3/(6+1)=6/7
    assert m["F1_score"] == pytest.approx((3 * 6 / 7 + 4 * 6 / 7) / 7)
    clipped = np.clip(pred, -1, 1)
    assert m["MAE"] == pytest.approx(np.mean(np.abs(clipped - true)))  # on clipped values
    assert m["Corr"] == pytest.approx(np.corrcoef(clipped, true)[0, 1])


def test_sims_edges_are_compared_in_the_inputs_precision_like_mmsa():
    pred = np.array([0.1, 0.7], dtype=np.float32)
    true = np.array([0.05, 0.5], dtype=np.float32)
    # MMSA compares float32 predictions with the edges in float32: float32(0.1) is neutral
    assert compute(pred, true, "sims")["Mult_acc_3"] == 1.0
    # the same float32 values widened to float64 lie just above 0.1 and become positive
    assert compute(pred.astype(np.float64), true, "sims")["Mult_acc_3"] == 0.5


def test_f1_argument_order_weights_by_true_support():
    truth = np.array([1, 1, 1, 1, 0])
    pred = np.array([1, 0, 0, 0, 0])
    # class 1: tp 1, fn 3, fp 0 -> 2/5; class 0: tp 1, fp 3 -> 2/5 ... weights 4/5 and 1/5
    assert weighted_f1(truth, pred) == pytest.approx(0.8 * (2 / 5) + 0.2 * (2 / 5))
    assert weighted_f1(pred, truth) == pytest.approx(0.2 * (2 / 5) + 0.8 * (2 / 5))
    unbalanced_t, unbalanced_p = np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])
    right = 0.75 * (2 * 2 / (4 + 1)) + 0.25 * (2 * 1 / (2 + 1))
    swapped = 0.5 * (2 * 2 / (4 + 1)) + 0.5 * (2 * 1 / (2 + 1))
    assert weighted_f1(unbalanced_t, unbalanced_p) == pytest.approx(right)
    assert weighted_f1(unbalanced_p, unbalanced_t) == pytest.approx(swapped)


def test_constant_predictions_give_nan_corr_with_warning_not_a_crash():
    with pytest.warns(ConstantInputWarning):
        m = compute(np.zeros(5), MOSI_TRUE[:5], "mosi")
    assert np.isnan(m["Corr"]) and m["MAE"] == pytest.approx(np.mean(np.abs(MOSI_TRUE[:5])))
    with pytest.warns(ConstantInputWarning):
        assert np.isnan(pearson(np.array([1.0]), np.array([2.0])))


def test_all_zero_labels_give_nan_non0_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        m = compute(np.array([0.5, -0.5]), np.array([0.0, 0.0]), "mosi")
    assert np.isnan(m["Non0_acc_2"]) and np.isnan(m["Non0_F1_score"]) and m["Has0_acc_2"] == 0.5


def test_directions_and_bad_input():
    assert higher_is_better("Has0_acc_2") and not higher_is_better("MAE")
    with pytest.raises(KeyError, match="unknown metric"):
        higher_is_better("acc")
    with pytest.raises(ValueError, match="same number"):
        compute(np.zeros(3), np.zeros(4), "mosi")
    with pytest.raises(ValueError, match="finite"):
        compute(np.array([np.nan, 1.0]), np.zeros(2), "mosi")
    with pytest.raises(ValueError, match="label family"):
        compute(np.zeros(2), np.zeros(2), "mosei")
