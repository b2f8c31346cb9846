"""Sweeps: every cell written once, resume after a hard kill, tidy table, level parsing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from robustmsa.cli import app
from robustmsa.sweep import parse_levels

ARGS = ["sweep", "--methods", "lf_dnn,almt", "--corruptions", "random_missing,blur", "--levels", "0:1:0.5",
        "--seeds", "2", "--epochs", "1", "--quiet"]


def test_parse_levels():
    assert parse_levels("0:0.9:0.1") == pytest.approx([i / 10 for i in range(10)])
    assert parse_levels("0.5,0,1") == [0.0, 0.5, 1.0]
    for bad in ("0:1", "0:2:0.5", "0:1:0", "0.3,0.3", "x"):
        with pytest.raises(ValueError):
            parse_levels(bad)


def _cells(out: Path) -> list[Path]:
    return sorted((out / "cells").glob("*/*.json"))


def test_sweep_writes_every_cell_once_and_a_tidy_table(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "24 cells: 24 computed" in result.output
    cells = _cells(out)
    assert len(cells) == 2 * 2 * 2 * 3
    records = [json.loads(p.read_text()) for p in cells]
    assert {(r["key"]["method"], r["key"]["seed"], r["key"]["corruption"], r["key"]["level"]) for r in records} == {
        (m, s, c, v) for m in ("lf_dnn", "almt") for s in (1111, 1112) for c in ("random_missing", "blur")
        for v in (0.0, 0.5, 1.0)}
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 24 * 8 and set(frame["metric"]) >= {"MAE", "Non0_acc_2"}
    audits = sorted((out / "coverage").glob("*/*.json"))  # one input-coverage audit per trained model
    assert len(audits) == 4 and all(json.loads(p.read_text())["kind"] == "robustmsa.coverage" for p in audits)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["levels"] == [0.0, 0.5, 1.0] and manifest["environment"]["robustmsa"]
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {f"{stem}.{ext}" for stem in ("curve_random_missing", "curve_blur", "curves_grid", "heatmap")
            for ext in ("png", "svg")} <= plots
    again = CliRunner().invoke(app, [*ARGS, "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert "0 computed, 24 already done; 0 model(s) trained" in again.output
    replot = CliRunner().invoke(app, ["plot", str(out), "--metric", "MAE"])
    assert replot.exit_code == 0 and "wrote 8 files" in replot.output
    bad = CliRunner().invoke(app, ["plot", str(out), "--metric", "acc"])
    assert bad.exit_code == 1 and "not in the results" in bad.output
    empty = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert empty.exit_code == 1 and "no cell records" in empty.output
    for fmt, marker in (("table", "rank"), ("markdown", "| rank | method"), ("csv", "rank,method")):
        board = CliRunner().invoke(app, ["leaderboard", str(out), "--metric", "acc2", "--format", fmt])
        assert board.exit_code == 0 and marker in board.output, board.output
        assert "almt" in board.output and "lf_dnn" in board.output
        assert "coverage" in board.output and "V 100%" in board.output
    page = tmp_path / "board.html"
    made = CliRunner().invoke(app, ["leaderboard", str(out), "--metric", "mae", "--format", "html",
                                    "--output", str(page)])
    assert made.exit_code == 0, made.output
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text and "<script>" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    refused = CliRunner().invoke(app, ["leaderboard", str(out), "--format", "html", "--output", str(page)])
    assert refused.exit_code == 1 and "already exists" in refused.output
    unknown = CliRunner().invoke(app, ["leaderboard", str(out), "--metric", "bleu"])
    assert unknown.exit_code == 1 and "unknown metric" in unknown.output


def test_sweep_resumes_after_sigkill_with_each_cell_written_once(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = [sys.executable, "-m", "robustmsa.cli", *ARGS, "--out", str(out), "--cache-dir", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_cells(out)) < 4 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_cells(out))
    assert done_before >= 1
    for path in _cells(out):
        json.loads(path.read_text())  # every file on disk is complete JSON (atomic writes)
    finished = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    cells = _cells(out)
    assert len(cells) == 24 and len({p.name for p in cells}) == 24
    assert f"{24 - done_before} computed, {done_before} already done" in finished.stdout or done_before == 24
    assert not list((out / "cells").glob("*/.*.tmp"))


def test_sweep_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--methods", "lf_dnn", "--corruptions", "nope", "--levels", "0,1",
                                      "--out", str(tmp_path / "x"), "--quiet"])
    assert result.exit_code == 1 and "unknown corruption 'nope'" in result.output
    result = CliRunner().invoke(app, ["sweep", "--methods", "lf_dnn", "--levels", "0:2:1", "--out",
                                      str(tmp_path / "x"), "--quiet"])
    assert result.exit_code == 1 and "levels" in result.output
