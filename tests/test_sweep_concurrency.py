"""Sweeps sharing one results directory, a process pool, and SIGTERM: every cell written exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from robustmsa.datasets import load
from robustmsa.launchers.local import LocalLauncher
from robustmsa.locks import FileClaim, is_stale
from robustmsa.results import ResultsStore
from robustmsa.sweep import run_sweep

SCRIPT = textwrap.dedent("""
    import json, sys
    from robustmsa.datasets import load
    from robustmsa.stop import StopRequested
    from robustmsa.sweep import run_sweep
    args = json.loads(sys.argv[1])
    try:
        summary = run_sweep(args["methods"], load("synth"), args["corruptions"], args["levels"], args["seeds"],
                            args["out"], epochs=1, cache=args["cache"], audit_samples=0, poll_seconds=0.2)
    except StopRequested as exc:
        print(json.dumps({"stopped": str(exc)}))
        sys.exit(143)
    print(json.dumps({"computed": summary.computed, "skipped": summary.skipped, "total": summary.total}))
""")


def _start(tmp_path: Path, **grid) -> subprocess.Popen:
    args = {"out": str(tmp_path / "run"), "cache": str(tmp_path / "cache"), **grid}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/*.json"))]


def test_four_overlapping_sweeps_write_every_cell_exactly_once(tmp_path):
    grids = [dict(methods=["lf_dnn"], corruptions=["random_missing"], levels=[0.0, 0.5], seeds=[1111, 1112]),
             dict(methods=["lf_dnn"], corruptions=["random_missing", "blur"], levels=[0.5, 1.0], seeds=[1111]),
             dict(methods=["lf_dnn"], corruptions=["blur"], levels=[0.0, 0.5, 1.0], seeds=[1112, 1111]),
             dict(methods=["lf_dnn"], corruptions=["random_missing", "blur"], levels=[0.0, 1.0], seeds=[1112])]
    procs = [_start(tmp_path, **grid) for grid in grids]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    union = {(s, c, v) for g in grids for s in g["seeds"] for c in g["corruptions"] for v in g["levels"]}
    records = _records(tmp_path / "run")
    cells = [(r["key"]["seed"], r["key"]["corruption"], r["key"]["level"]) for r in records]
    assert sorted(cells) == sorted(union)  # no lost cell, no duplicate file
    assert sum(r["computed"] for r in reports) == len(union)  # each cell computed (and written) once in all
    for report, grid in zip(reports, grids):  # every sweep ends with its whole grid present
        assert report["total"] == len(grid["seeds"]) * len(grid["corruptions"]) * len(grid["levels"])
    for record in records:
        assert record["digest"] in {p.stem for p in (tmp_path / "run" / "cells" / "lf_dnn").glob("*.json")}
        assert set(record["metrics"]) >= {"MAE", "Non0_acc_2"}
    assert not list((tmp_path / "run").rglob("*.claim")) and not list((tmp_path / "run").rglob("*.tmp"))


def test_process_pool_sweep_equals_the_in_process_sweep(tmp_path):
    data = load("synth")
    grid = dict(methods=["lf_dnn", "almt"], corruptions=["random_missing", "blur"], levels=[0.0, 0.5],
                seeds=[1111])
    here = run_sweep(**grid, dataset=data, out=tmp_path / "one", epochs=1, cache=tmp_path / "c1", audit_samples=0)
    pool = run_sweep(**grid, dataset=data, out=tmp_path / "two", epochs=1, cache=tmp_path / "c2", audit_samples=0,
                     launcher=LocalLauncher(jobs=2, gpus=[]))
    assert here.computed == pool.computed == 8 and pool.trained == 2
    a = ResultsStore(tmp_path / "one").to_frame().sort_values(["digest", "metric"]).reset_index(drop=True)
    b = ResultsStore(tmp_path / "two").to_frame().sort_values(["digest", "metric"]).reset_index(drop=True)
    assert list(a["digest"]) == list(b["digest"])  # the same cells, keyed identically
    np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float), rtol=0, atol=1e-5)


def test_sigterm_finishes_the_current_cell_then_stops_and_a_rerun_resumes(tmp_path):
    grid = dict(methods=["almt"], corruptions=["random_missing", "blur", "frame_drop"],
                levels=[i / 10 for i in range(11)], seeds=[1111, 1112])
    proc = _start(tmp_path, **grid)
    out = tmp_path / "run"
    deadline = time.time() + 240
    while time.time() < deadline and not _records(out) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, (stdout, stderr)
    assert "stopped" in stdout and "Traceback" not in stderr
    kept = _records(out)
    assert 1 <= len(kept) < 66
    assert not list(out.rglob("*.claim")) and not list(out.rglob("*.tmp"))  # released, nothing half-written
    rerun = _start(tmp_path, **grid)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["skipped"] == len(kept) and report["computed"] == 66 - len(kept)


def test_sigterm_during_training_writes_nothing(tmp_path):
    grid = dict(methods=["almt"], corruptions=["random_missing"], levels=[0.0, 0.5], seeds=[1111])
    args = {"out": str(tmp_path / "run"), "cache": str(tmp_path / "cache"), **grid}
    script = SCRIPT.replace("epochs=1", "epochs=50")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    claims = tmp_path / "run" / "claims"
    deadline = time.time() + 120
    while time.time() < deadline and not list(claims.rglob("*.claim")) and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # inside training now
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "training" in stdout
    assert not list((tmp_path / "cache").rglob("*.pt")) and not _records(tmp_path / "run")
    assert not list(claims.rglob("*.claim"))


def test_claims_exclude_each_other_and_stale_claims_are_broken(tmp_path):
    path = tmp_path / "m.claim"
    first, second = FileClaim(path, heartbeat=0), FileClaim(path, heartbeat=0)
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "token": "x"}))
    assert is_stale(path)  # its owner is gone
    third = FileClaim(path, heartbeat=0)
    assert third.try_acquire()
    third.release()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert is_stale(path, stale_after=600) and not is_stale(path, stale_after=7200)


@pytest.mark.parametrize("beat", [0.05])
def test_heartbeat_keeps_a_claim_fresh(tmp_path, beat):
    claim = FileClaim(tmp_path / "h.claim", heartbeat=beat)
    assert claim.try_acquire()
    old = time.time() - 3600
    os.utime(claim.path, (old, old))
    deadline = time.time() + 10  # a few beats; generous for a loaded CI machine
    while is_stale(claim.path, stale_after=60) and time.time() < deadline:
        time.sleep(beat)
    assert not is_stale(claim.path, stale_after=60)  # the heartbeat thread touched it again
    claim.release()
    assert not claim.path.exists()


def test_cli_sweep_on_sigterm_says_how_to_resume_and_exits_143(tmp_path):
    argv = [sys.executable, "-m", "robustmsa.cli", "sweep", "--methods", "almt", "--levels", "0,0.5", "--epochs",
            "50", "--quiet", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    claims = tmp_path / "run" / "claims"
    deadline = time.time() + 120
    while time.time() < deadline and not list(claims.rglob("*.claim")) and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.strip().startswith("stopped:") and "Rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and not list(claims.rglob("*.claim"))
