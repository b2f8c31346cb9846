"""mCE for a method that always trains with noise (LNLN): compared with the noise-free baseline, and said so."""

from __future__ import annotations

import pandas as pd
import pytest

from robustmsa import robustness as rb
from robustmsa.leaderboard import build, to_markdown

LEVELS = [0.0, 0.5, 1.0]


def _rows(curves):
    return [{"method": method, "dataset_name": "d", "dataset": "fp", "seed": 1, "train_noise": noise,
             "config_hash": "h", "corruption": "c", "level": level, "corruption_seed": 0, "metric": "Non0_acc_2",
             "value": value, "higher_is_better": True, "digest": f"{method}{noise}{level}"}
            for (method, noise), values in curves.items() for level, value in zip(LEVELS, values)]


def test_noise_trained_method_falls_back_to_the_clean_trained_baseline_and_the_caption_says_so():
    curves = {("lnln", "random_missing"): [0.8, 0.7, 0.6], ("almt", None): [0.8, 0.6, 0.4],
              ("lf_dnn", None): [0.7, 0.5, 0.3]}
    summary = rb.summarize(pd.DataFrame(_rows(curves)))
    lnln = summary[summary["method"] == "lnln"].iloc[0]
    # baseline errors at 0.5, 1: 0.5, 0.7; LNLN's: 0.3, 0.4 -> CE 0.7 / 1.2
    assert lnln["ce"] == pytest.approx(0.7 / 1.2) and lnln["baseline_train_noise"] == "none"
    assert summary[summary["method"] == "almt"].iloc[0]["baseline_train_noise"] == "none"
    board = build(pd.DataFrame(_rows(curves)), "acc2").set_index("method")
    assert board.loc["lnln", "mCE"] == pytest.approx(0.7 / 1.2)
    caption = to_markdown(board.reset_index()).splitlines()[0]
    assert "lnln: vs lf_dnn trained without noise" in caption and "almt" not in caption


def test_a_baseline_trained_with_the_same_noise_is_preferred():
    curves = {("lnln", "random_missing"): [0.8, 0.7, 0.6], ("lf_dnn", None): [0.7, 0.5, 0.3],
              ("lf_dnn", "random_missing"): [0.7, 0.6, 0.5]}
    summary = rb.summarize(pd.DataFrame(_rows(curves)))
    lnln = summary[summary["method"] == "lnln"].iloc[0]
    assert lnln["baseline_train_noise"] == "random_missing" and lnln["ce"] == pytest.approx(0.7 / 0.9)
    board = build(pd.DataFrame(_rows(curves)), "acc2")
    assert "trained without noise" not in to_markdown(board).splitlines()[0]
