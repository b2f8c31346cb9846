"""SIGKILL at random points of a sweep never leaves a partial record or a damaged cache entry that is trusted.

A small server process imports torch and robustmsa once and forks one child per sweep run, so a dozen runs cost
one import (the children are real processes running ``robustmsa.sweep.run_sweep``; the server sends them SIGKILL
at the requested time, so no pid is ever signalled after it was reaped). Runs of one "lane" share a results
directory and a checkpoint cache and resume each other; after every kill the lane is checked:

* every cell record file parses, validates (kind, schema version, key whose digest is the file name, metrics and
  their directions) and is what the store reads -- nothing else is trusted;
* temporary files (``.<name>.<host>.<pid>.<random>.tmp``, possible only after a kill inside a write) are never
  read, and the next run removes them (the manifest write cleans the store, a cache lookup its directory);
* every checkpoint loads fully; one deliberately damaged record and checkpoint (a torn write, as a non-atomic
  file system could leave) are reported damaged, not trusted, recomputed and retrained;
* a lane whose run completes equals a reference run cell for cell (and audit for audit); a fresh lane starts.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from robustmsa._io import _temp_owner
from robustmsa.results import SCHEMA_VERSION, CellKey, ResultsStore, check_cell

KILLS = 12
SEED = 20241122
GRID = {"methods": ["lf_dnn", "almt"], "corruptions": ["random_missing", "blur"], "levels": [0.0, 0.5, 1.0],
        "seeds": [1111]}
CELLS = 2 * 2 * 3

SERVER = textwrap.dedent("""
    import glob, json, os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    import pandas  # noqa: F401  (the children write results.csv)
    import robustmsa.audit, robustmsa.engine.evaluate, robustmsa.engine.train, robustmsa.launchers.local  # noqa
    from robustmsa.datasets import load
    from robustmsa.datasets.split import Dataset
    from robustmsa.methods import get_method
    from robustmsa.sweep import run_sweep

    grid = json.loads(sys.argv[1])
    for name in grid["methods"]:
        get_method(name)
    full = load("synth")
    data = Dataset(full.spec, {"train": full.train.select(slice(0, 64)), "valid": full.valid.select(slice(0, 32)),
                               "test": full.test.select(slice(0, 32))})
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: one sweep run, no output
            code = 1
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
                run_sweep(grid["methods"], data, grid["corruptions"], grid["levels"], grid["seeds"],
                          request["out"], epochs=1, cache=request["cache"], audit_samples=4, quiet=True)
                code = 0
            finally:
                os._exit(code)
        kill_at = request.get("kill_after")
        first_record = os.path.join(request["out"], "cells", "*", "*.json") if request["at_first_record"] else None
        deadline = start + (kill_at if kill_at is not None else request["timeout"])
        killed = timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            recorded = first_record is not None and glob.glob(first_record)
            if recorded or time.perf_counter() >= deadline:  # our own unreaped child: its pid is not reused
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                killed = kill_at is not None or bool(recorded)
                timed_out = not killed
                break
            time.sleep(0.002)
        print(json.dumps({"status": status, "killed": killed, "timed_out": timed_out,
                          "seconds": time.perf_counter() - start}), flush=True)
""")


class Server:
    def __init__(self, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log = open(log, "w")  # noqa: SIM115 -- the server's stderr for its whole life; closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(GRID)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._log.flush()
            raise AssertionError(f"the sweep server died: {Path(self._log.name).read_text()[-3000:]}")
        return json.loads(line)

    def run(self, lane: Path, kill_after: float | None = None, timeout: float = 120.0,
            at_first_record: bool = False) -> dict:
        """One sweep run in ``lane``: SIGKILL'd after ``kill_after`` s, or once its first record exists."""
        self.proc.stdin.write(json.dumps({"out": str(lane / "run"), "cache": str(lane / "cache"),
                                          "kill_after": kill_after, "timeout": timeout,
                                          "at_first_record": at_first_record}) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        assert not result["timed_out"], f"a sweep run took over {timeout} s: {result}"
        result["signalled"] = os.WIFSIGNALED(result["status"])
        result["ok"] = os.WIFEXITED(result["status"]) and os.WEXITSTATUS(result["status"]) == 0
        return result

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def _temps(lane: Path) -> list[Path]:
    return sorted(lane.rglob("*.tmp"))


def _check_lane(lane: Path, damaged: dict[Path, tuple[bytes, str | None]]) -> int:
    """The invariants after a kill; returns the number of trusted records."""
    import torch

    from robustmsa.engine.cache import DamagedCacheWarning, load_entry
    from robustmsa.results import _read_record

    out, cache = lane / "run", lane / "cache"
    store = ResultsStore(out)
    files = sorted(store.cells.glob("*/*.json"))
    still_damaged = {p for p, (data, _) in damaged.items() if p.exists() and p.read_bytes() == data}
    for path in files:
        if path in still_damaged:
            assert store.read_cell(path) is None  # not trusted: the cell counts as missing
            continue
        record = json.loads(path.read_text())  # parses: never half-written
        check_cell(record, path)
        assert CellKey(**record["key"]).digest() == path.stem == record["digest"]
        assert store.read_cell(path) == record
    trusted = list(store.records())
    assert len(trusted) == len(files) - len(still_damaged & set(files))
    for path in _temps(lane):  # only atomic_open's own temporary files; no reader globs for them
        assert _temp_owner(path.name) is not None and not path.name.endswith(".json"), path
    assert all(not d.endswith(".tmp") for d in store.to_frame()["digest"])
    for path in (out / "coverage").glob("*/*.json"):
        assert _read_record(path, "robustmsa.coverage")["schema_version"] == SCHEMA_VERSION
    if store.manifest_path.exists():
        assert store.read_manifest()["schema_version"] == SCHEMA_VERSION
    for path in sorted(cache.glob("*/*.pt")):
        if path in still_damaged:
            with pytest.warns(DamagedCacheWarning, match="retraining"):
                assert load_entry(path, damaged[path][1]) is None  # reported damaged: the sweep retrains
            continue
        key = torch.load(path, map_location="cpu", weights_only=True)["meta"]["key"]
        assert key[:24] == path.stem
        with warnings.catch_warnings():
            warnings.simplefilter("error", DamagedCacheWarning)
            assert load_entry(path, key) is not None  # loads fully
    return len(trusted)


def _damage(lane: Path, damaged: dict[Path, tuple[bytes, str | None]]) -> None:
    """Tear one record and one checkpoint in half, as a non-atomic writer killed mid-write would."""
    import torch

    for pattern in ("run/cells/*/*.json", "cache/*/*.pt"):
        found = sorted(lane.glob(pattern))
        if not found:
            continue
        path = found[0]
        key = (torch.load(path, map_location="cpu", weights_only=True)["meta"]["key"]
               if path.suffix == ".pt" else None)
        data = path.read_bytes()[: path.stat().st_size // 2]
        path.write_bytes(data)
        damaged[path] = (data, key)


def _tables(lane: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = ResultsStore(lane / "run")
    cells = store.to_frame().sort_values(["digest", "metric"]).reset_index(drop=True)
    coverage = store.coverage_frame().sort_values(["model_key", "modality"]).reset_index(drop=True)
    return cells, coverage


def _assert_complete_and_equal(lane: Path, reference: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    assert _temps(lane) == [], _temps(lane)  # the completed run removed what killed runs left
    cells, coverage = _tables(lane)
    assert cells["digest"].nunique() == CELLS
    pd.testing.assert_frame_equal(cells, reference[0])
    pd.testing.assert_frame_equal(coverage, reference[1])


def test_sigkill_at_random_points_never_leaves_a_trusted_partial_record(tmp_path):
    started = time.perf_counter()
    server = Server(tmp_path / "server.log")
    try:
        ref = server.run(tmp_path / "reference")
        assert ref["ok"], ref
        reference = _tables(tmp_path / "reference")
        assert reference[0]["digest"].nunique() == CELLS and len(reference[1]) == 2 * 3
        assert _temps(tmp_path / "reference") == []
        rng = random.Random(SEED)
        span = ref["seconds"]
        delays = [(k + rng.random()) * span / KILLS for k in range(KILLS)]  # spread over a whole run
        rng.shuffle(delays)
        lanes, damaged, log, tore = 0, {}, [], False
        lane = tmp_path / f"lane{lanes}"
        for i, delay in enumerate(delays):
            result = server.run(lane, kill_after=delay)
            assert result["signalled"] or result["ok"], result
            trusted = _check_lane(lane, damaged)
            log.append((lanes, round(delay, 2), result["killed"], trusted, len(_temps(lane))))
            if not result["killed"]:  # finished before its kill time: compare, then start a fresh lane
                _assert_complete_and_equal(lane, reference)
                lanes += 1
                lane, damaged = tmp_path / f"lane{lanes}", {}
            elif i >= KILLS // 3 and not tore and list(lane.glob("run/cells/*/*.json")) \
                    and list(lane.glob("cache/*/*.pt")):
                _damage(lane, damaged)
                _check_lane(lane, damaged)
                tore = True
        if not tore:  # no random kill fell between a first record and the end: make such a lane on purpose
            result = server.run(lane, at_first_record=True)
            assert result["signalled"] or result["ok"], result
            log.append((lanes, "first record", result["killed"], _check_lane(lane, damaged), len(_temps(lane))))
            assert list(lane.glob("run/cells/*/*.json")) and list(lane.glob("cache/*/*.pt")), log
            _damage(lane, damaged)
            _check_lane(lane, damaged)
            tore = True
        final = server.run(lane)
        assert final["ok"], final
        _check_lane(lane, damaged)
        _assert_complete_and_equal(lane, reference)
    finally:
        server.close()
    print("lane, kill after (s), killed, trusted records, temporary files:", *log, sep="\n  ")
    killed = sum(entry[2] for entry in log)
    assert killed >= KILLS // 3, log  # kill times fell inside runs (resumed runs are shorter: not all do)
    assert time.perf_counter() - started < 300, log


STALLED_WRITER = textwrap.dedent("""
    import sys, time
    from robustmsa._io import atomic_open
    from robustmsa.results import CellKey, ResultsStore

    class Stall:  # json.dump calls str() on it mid-record: the writer stops inside the write, data half out
        def __str__(self):
            print("inside", flush=True)
            time.sleep(600)
            return "never"

    what, root = sys.argv[1], sys.argv[2]
    if what == "record":
        store = ResultsStore(root)
        store.write(CellKey("m", "fp", 1, None, "h", "c", 0.0, 1),
                    {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
        store.write(CellKey("m", "fp", 1, None, "h", "c", 0.5, 1),
                    {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}, "pad": "x" * 50000,
                     "stall": Stall()})
    else:
        with atomic_open(root, force=True) as handle:
            handle.write(b"PK" + bytes(50000))
            handle.flush()
            str(Stall())
""")


def _kill_inside_a_write(what: str, target: Path) -> Path:
    """Run a writer that stops inside an atomic write, SIGKILL it there; returns the temporary file it left."""
    from robustmsa._io import remove_stale_temps

    proc = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, what, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "inside", proc.stderr.read()
        directory = target.parent if what == "checkpoint" else target / "cells" / "m"
        temps = sorted(directory.glob(".*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size > 8192  # half a file is out
        assert remove_stale_temps(directory) == [] and temps[0].exists()  # a live writer's file is kept
    finally:
        proc.kill()  # SIGKILL
        proc.communicate()
    assert temps[0].exists() and _temp_owner(temps[0].name)[1] == proc.pid
    return temps[0]


def test_a_writer_killed_inside_a_record_write_leaves_nothing_trusted(tmp_path):
    store = ResultsStore(tmp_path / "run")
    temp = _kill_inside_a_write("record", store.root)
    done, torn = CellKey("m", "fp", 1, None, "h", "c", 0.0, 1), CellKey("m", "fp", 1, None, "h", "c", 0.5, 1)
    assert store.has(done) and not store.has(torn) and not store.path(torn).exists()
    assert [r["digest"] for r in store.records()] == [done.digest()] and len(store.to_frame()) == 1
    store.write_manifest({"kind": "robustmsa.sweep"})  # what a rerun writes first: the dead writer's file goes
    assert not temp.exists() and not list(store.root.rglob("*.tmp"))


def test_a_trainer_killed_inside_a_checkpoint_write_leaves_no_entry(tmp_path):
    from robustmsa.engine.cache import entry_path, load_entry

    key = "f" * 64
    path = entry_path(tmp_path, "lf_dnn", key)
    temp = _kill_inside_a_write("checkpoint", path)
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_entry(path, key) is None  # absent (train), not damaged; the leftover is cleaned up
    assert not temp.exists() and list(path.parent.iterdir()) == []
