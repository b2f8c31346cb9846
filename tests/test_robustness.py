"""Robustness summary formulas on hand-computed curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robustmsa import robustness as rb

LEVELS = [0.0, 0.5, 1.0]


def test_mean_over_levels_includes_clean():
    assert rb.mean_over_levels([0.8, 0.6, 0.4]) == pytest.approx(0.6)


def test_auilc_raw_and_normalised_on_an_uneven_grid():
    area, normalised = rb.auilc([0.0, 0.2, 1.0], [0.8, 0.6, 0.4])
    # trapezoids: 0.2 * (0.8 + 0.6) / 2 = 0.14; 0.8 * (0.6 + 0.4) / 2 = 0.4
    assert area == pytest.approx(0.54) and normalised == pytest.approx(0.54)
    area, normalised = rb.auilc([0.1, 0.5, 0.9], [0.7, 0.7, 0.7])
    assert area == pytest.approx(0.56) and normalised == pytest.approx(0.7)  # flat curve: normalised = mean


def test_retention_keeps_direction_for_errors():
    np.testing.assert_allclose(rb.retention(0.8, [0.6, 0.4]), [0.75, 0.5])
    np.testing.assert_allclose(rb.retention(0.5, [1.0, 2.0], higher_is_better=False), [0.5, 0.25])
    assert rb.mean_retention(0.8, [0.6, 0.4]) == pytest.approx(0.625)


def test_corruption_error_and_relative_ce():
    method, baseline = rb.to_error([0.6, 0.4], True), rb.to_error([0.5, 0.3], True)  # errors 0.4 0.6 / 0.5 0.7
    assert rb.corruption_error(method, baseline) == pytest.approx(1.0 / 1.2)
    # relative: method clean error 0.2 -> (0.2 + 0.4) = 0.6; baseline clean 0.4 -> (0.1 + 0.3) = 0.4
    assert rb.relative_corruption_error(0.2, method, 0.4, baseline) == pytest.approx(1.5)
    assert math.isnan(rb.relative_corruption_error(0.2, [0.3], 0.4, [0.4]))
    mae = rb.to_error([1.0, 1.5], higher_is_better=False)  # MAE is already an error
    assert rb.corruption_error(mae, [1.0, 1.0]) == pytest.approx(1.25)


def test_effective_robustness_sign_reads_the_same_for_scores_and_errors():
    # method drops 0.1 then 0.2, baseline drops 0.2 then 0.4: gaps 0.1, 0.2 -> mean 0.15 (more robust)
    assert rb.effective_robustness([0.8, 0.7, 0.6], [0.7, 0.5, 0.3]) == pytest.approx(0.15)
    # MAE rises 0.1 then 0.2 for the method, 0.2 then 0.4 for the baseline: also +0.15
    assert rb.effective_robustness([0.7, 0.8, 0.9], [0.9, 1.1, 1.3], higher_is_better=False) == pytest.approx(0.15)


@pytest.mark.parametrize("levels,scores", [([0.0, 0.0], [1, 2]), ([0.5, 0.1], [1, 2]), ([0.0], [1, 2]), ([], [])])
def test_bad_curves_are_clear_errors(levels, scores):
    with pytest.raises(ValueError):
        rb.auilc(levels, scores)


def test_summarize_and_overall_on_a_hand_made_store_table():
    import pandas as pd

    rows = []
    curves = {("m", 1): [0.8, 0.7, 0.6], ("m", 2): [0.8, 0.5, 0.4], ("lf_dnn", 1): [0.7, 0.5, 0.3],
              ("lf_dnn", 2): [0.7, 0.5, 0.3]}
    for (method, seed), values in curves.items():
        for level, value in zip(LEVELS, values):
            rows.append({"method": method, "dataset_name": "d", "train_noise": None, "corruption": "c",
                         "metric": "acc", "level": level, "seed": seed, "value": value, "higher_is_better": True})
    summary = rb.summarize(pd.DataFrame(rows))
    m = summary[summary["method"] == "m"].iloc[0]
    assert m["clean"] == pytest.approx(0.8) and m["clean_std"] == pytest.approx(0.0)
    assert m["at_0.5"] == pytest.approx(0.6) and m["grid"] == "0,0.5,1" and m["seeds"] == 2
    assert m["mean_over_levels"] == pytest.approx(np.mean([0.7, 17 / 30]))
    # AUILC (normalised) per seed: seed 1 (0.75 + 0.65) / 2 = 0.7; seed 2 (0.65 + 0.45) / 2 = 0.55
    assert m["auilc"] == pytest.approx(0.625) and m["auilc_std"] == pytest.approx(np.std([0.7, 0.55], ddof=1))
    assert m["retention"] == pytest.approx(np.mean([(0.7 + 0.6) / 1.6, (0.5 + 0.4) / 1.6]))
    # CE per seed vs baseline errors (0.5, 0.7): seed 1 (0.3 + 0.4) / 1.2, seed 2 (0.5 + 0.6) / 1.2
    assert m["ce"] == pytest.approx(np.mean([0.7 / 1.2, 1.1 / 1.2]))
    # relative CE: seed 1 (0.1 + 0.2) / (0.2 + 0.4) = 0.5; seed 2 (0.3 + 0.4) / 0.6
    assert m["relative_ce"] == pytest.approx(np.mean([0.5, 0.7 / 0.6]))
    # ER: seed 1 gaps (-0.1 + 0.2), (-0.2 + 0.4) -> 0.15; seed 2 (-0.3 + 0.2), (-0.4 + 0.4) -> -0.05
    assert m["effective_robustness"] == pytest.approx(0.05)
    base = summary[summary["method"] == "lf_dnn"].iloc[0]
    assert base["ce"] == pytest.approx(1.0) and base["effective_robustness"] == pytest.approx(0.0)
    table = rb.overall(summary)
    row = table[table["method"] == "m"].iloc[0]
    assert row["mCE"] == pytest.approx(m["ce"]) and row["mRA"] == pytest.approx(m["retention"])
    assert row["corruptions"] == 1 and row["seeds"] == 2


def test_leaderboard_ranks_ties_together_and_rank_change_reads_zero_for_them():
    import pandas as pd

    from robustmsa.leaderboard import build

    curves = {"a": [0.9, 0.5, 0.5], "b": [0.8, 0.6, 0.6], "c": [0.8, 0.6, 0.6], "lf_dnn": [0.7, 0.4, 0.3]}
    rows = [{"method": method, "dataset_name": "d", "dataset": "fp", "seed": 1, "train_noise": None,
             "config_hash": "h", "corruption": "c", "level": level, "corruption_seed": 0, "metric": "Non0_acc_2",
             "value": value, "higher_is_better": True, "digest": f"{method}{level}"}
            for method, values in curves.items() for level, value in zip(LEVELS, values)]
    board = build(pd.DataFrame(rows), "acc2").set_index("method")
    # robust (mean over levels): b = c = 2/3 > a = 0.633 > lf_dnn; clean: a 1st, b = c 2nd, lf_dnn 4th
    assert board.loc["b", "rank"] == board.loc["c", "rank"] == 1
    assert board.loc["a", "rank"] == 3 and board.loc["lf_dnn", "rank"] == 4
    assert board.loc["b", "rank_change"] == board.loc["c", "rank_change"] == 1
    assert board.loc["a", "rank_change"] == -2 and board.loc["lf_dnn", "rank_change"] == 0
