"""Full disks and read-only directories: a clear error, every record written before kept, no temporary files.

Out-of-space errors are produced three ways: injected ``OSError(ENOSPC)`` at each step of an atomic write
(create, fsync, rename), real kernel ENOSPC by pointing the temporary file at ``/dev/full`` (write and flush), and
-- where unprivileged user and mount namespaces are available -- a real, tiny tmpfs that a sweep fills up.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_synth_dataset

from robustmsa._io import OutputWriteError, atomic_open
from robustmsa.results import CellKey, ResultsStore

ENOSPC_MESSAGE = "no space left on device (ENOSPC)"


def _boom(code: int = errno.ENOSPC):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _dev_full(monkeypatch) -> None:
    """Temporary files of atomic_open write to /dev/full: every write that reaches the kernel fails with ENOSPC."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)  # the real temporary name, so removal is checked for real
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("stage", ["mkstemp", "write", "flush", "fsync", "replace"])
def test_enospc_at_every_step_of_an_atomic_write(tmp_path, monkeypatch, stage):
    target = tmp_path / "out.json"
    target.write_text("before")
    if stage == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _boom())
    elif stage in ("write", "flush"):
        _dev_full(monkeypatch)
    else:
        monkeypatch.setattr(os, stage, _boom())
    payload = "x" * (1 << 20) if stage == "write" else "{}"  # larger than the buffer: fails inside the block
    with pytest.raises(OutputWriteError) as caught, atomic_open(target, force=True, mode="w") as handle:
        handle.write(payload)
    monkeypatch.undo()
    error = caught.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == str(target)
    assert str(error).startswith(f"cannot write {target}: {ENOSPC_MESSAGE}; ") and "\n" not in str(error)
    assert target.read_text() == "before"  # the previous file is kept whole
    assert _leftovers(tmp_path, {"out.json"}) == []  # and no temporary file is left


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system (EROFS)"),
                                          (errno.EACCES, "permission denied (EACCES)"),
                                          (errno.EDQUOT, "disk quota exceeded (EDQUOT)")])
def test_read_only_and_quota_errors_are_named(tmp_path, monkeypatch, code, reason):
    monkeypatch.setattr(tempfile, "mkstemp", _boom(code))
    with pytest.raises(OutputWriteError) as caught, atomic_open(tmp_path / "new.json", mode="w") as handle:
        handle.write("{}")
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'new.json'}: {reason}")
    assert caught.value.errno == code and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_gives_a_clear_error(tmp_path):
    store = ResultsStore(tmp_path / "run")
    first = CellKey("m", "fp", 1, None, "h", "c", 0.0, 1)
    store.write(first, {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
    cells = store.cells / "m"
    cells.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match="permission denied"):
            store.write(CellKey("m", "fp", 1, None, "h", "c", 0.5, 1),
                        {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
    finally:
        cells.chmod(0o755)
    assert store.has(first) and [p.name for p in cells.iterdir()] == [f"{first.digest()}.json"]


def test_errors_that_are_not_about_writing_pass_unchanged(tmp_path):
    # the caller's own error inside the block: not ours to rename
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "a.json", mode="w"):
        (tmp_path / "missing.txt").read_text()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match="is a file, not a directory"), \
            atomic_open(tmp_path / "file" / "b.json", mode="w") as handle:  # the directory cannot be made
        handle.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_error_survives_pickling_and_keeps_its_message(tmp_path):
    error = OutputWriteError.from_error(tmp_path / "x.json", OSError(errno.ENOSPC, "No space left on device"),
                                        "records written before are kept")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is OutputWriteError and str(again) == str(error) and again.errno == errno.ENOSPC
    assert str(error) == f"cannot write {tmp_path / 'x.json'}: {ENOSPC_MESSAGE}; records written before are kept"


def test_results_store_keeps_every_record_written_before_a_full_disk(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "run")
    keys = [CellKey("m", "fp", 1, None, "h", "c", level, 1) for level in (0.0, 0.25, 0.5, 0.75)]
    record = {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}}
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the third write finds the disk full
        calls.append(fd)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    store.write(keys[0], record)
    store.write(keys[1], record)
    with pytest.raises(OutputWriteError) as caught:
        store.write(keys[2], record)
    message = str(caught.value)
    assert message.startswith(f"cannot write {store.path(keys[2])}: {ENOSPC_MESSAGE}")
    assert "records written before are kept" in message and "rerun the same command" in message
    assert store.has(keys[0]) and store.has(keys[1]) and not store.has(keys[2])
    assert not list(store.root.rglob("*.tmp"))
    with pytest.raises(OutputWriteError, match="manifest.json: no space"):
        store.write_manifest({"kind": "robustmsa.sweep"})
    monkeypatch.undo()  # space freed
    for key in keys[2:]:
        store.write(key, record)
    assert len(list(store.records())) == 4


def test_a_checkpoint_on_a_full_disk_is_a_clear_error_not_a_torch_one(tmp_path, monkeypatch):
    import torch

    from robustmsa.engine.cache import load_entry, save_entry

    path = tmp_path / "lf_dnn" / "abc.pt"
    save_entry(path, {"w": torch.zeros(3)}, {"key": "abc"})
    _dev_full(monkeypatch)  # torch.save reports the failed write as a RuntimeError; the ENOSPC is in its chain
    with pytest.raises(OutputWriteError) as caught:
        save_entry(path, {"w": torch.ones(4096)}, {"key": "abc"})
    monkeypatch.undo()
    assert str(caught.value).startswith(f"cannot write {path}: {ENOSPC_MESSAGE}; no checkpoint was cached")
    assert "--cache-dir" in str(caught.value)
    assert load_entry(path, "abc")["state_dict"]["w"].shape == (3,)  # the entry before is intact
    assert [p.name for p in path.parent.iterdir()] == ["abc.pt"]


def _fail_cell_writes_from(monkeypatch, n: int) -> list[str]:
    """From the ``n``-th cell record on, fsync fails with ENOSPC (other files are written normally)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if f"{os.sep}cells{os.sep}" in name:
            seen.append(name)
            if len(seen) >= n:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc to tell files apart")
def test_a_sweep_hitting_a_full_disk_stops_clearly_and_a_rerun_finishes(tmp_path, monkeypatch, one_thread):
    from robustmsa.sweep import SweepIncomplete, run_sweep

    data = tiny_synth_dataset(n_train=48, n_valid=16, n_test=16)
    grid = {"methods": ["lf_dnn"], "corruptions": ["random_missing"], "levels": [0.0, 0.5, 1.0], "seeds": [1111]}
    out, cache = tmp_path / "run", tmp_path / "cache"
    _fail_cell_writes_from(monkeypatch, 2)
    # The sweep stops at the first OutputWriteError (retrying on a full disk is pointless), quoting it.
    with pytest.raises(SweepIncomplete) as caught:
        run_sweep(dataset=data, out=out, epochs=1, cache=cache, audit_samples=0, **grid)
    monkeypatch.undo()
    message = str(caught.value)
    assert "round(s)" not in message  # not retried
    assert "no space left on device (ENOSPC)" in message and str(out / "cells" / "lf_dnn") in message
    store = ResultsStore(out)
    kept = list(store.records())
    assert len(kept) == 1 and kept[0]["key"]["level"] == 0.0  # the N-1 = 1 record before is intact
    assert not list(out.rglob("*.tmp")) and not list(cache.rglob("*.tmp"))
    summary = run_sweep(dataset=data, out=out, epochs=1, cache=cache, audit_samples=0, **grid)  # space freed
    assert (summary.skipped, summary.computed, summary.trained) == (1, 2, 0)
    assert sorted(r["key"]["level"] for r in store.records()) == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------------------------------- a real tmpfs
def _namespaces_work() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = tempfile.mkdtemp()
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               f"mount -t tmpfs -o size=16k none {probe}"], capture_output=True, timeout=30,
                              check=False)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


REAL_TMPFS = textwrap.dedent("""
    import json, os, subprocess, sys, warnings
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[3])
    from conftest import tiny_synth_dataset
    from robustmsa._io import OutputWriteError
    from robustmsa.engine.cache import save_entry
    from robustmsa.results import CellKey, ResultsStore
    from robustmsa.sweep import run_sweep

    mnt, cache = sys.argv[1], sys.argv[2]
    def mount(options):
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "none", mnt], check=True)
    def remount(options):
        subprocess.run(["mount", "-o", "remount," + options, mnt], check=True)
    def temps():
        return [os.path.join(d, f) for d, _, files in os.walk(mnt) for f in files if f.endswith(".tmp")]
    report = {}
    mount("size=32k")  # room for the manifest, a claim and a handful of 2 KB records (one page each)
    out = os.path.join(mnt, "run")
    data = tiny_synth_dataset(n_train=48, n_valid=16, n_test=16)
    grid = dict(methods=["lf_dnn"], corruptions=["random_missing"], levels=[i / 10 for i in range(11)],
                seeds=[1111])
    try:
        run_sweep(dataset=data, out=out, epochs=1, cache=cache, audit_samples=0, **grid)
        report["first"] = "finished"
    except Exception as exc:
        report["first"] = f"{type(exc).__name__}: {exc}"
    store = ResultsStore(out)
    files = [p for p in store.cells.glob("*/*.json")]
    report["kept"] = len(files)
    report["kept_valid"] = sum(store.read_cell(p) is not None for p in files)
    report["temps_after_failure"] = temps()
    remount("size=1m")  # space freed
    summary = run_sweep(dataset=data, out=out, epochs=1, cache=cache, audit_samples=0, **grid)
    report["rerun"] = [summary.total, summary.computed, summary.skipped]
    report["after_rerun"] = len(list(store.records()))
    remount("ro")
    try:
        store.write(CellKey("m", "fp", 1, None, "h", "c", 0.0, 1),
                    {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
        report["read_only"] = "written"
    except OutputWriteError as exc:
        report["read_only"] = str(exc)
    report["readable_after_ro"] = len(list(store.records()))
    # a checkpoint that does not fit
    small = os.path.join(mnt + "_ckpt")
    os.makedirs(small, exist_ok=True)
    mnt = small
    mount("size=8k")
    try:
        save_entry(os.path.join(mnt, "lf_dnn", "k.pt"), {"w": torch.zeros(64, 1024)}, {"key": "k"})
        report["checkpoint"] = "written"
    except OutputWriteError as exc:
        report["checkpoint"] = str(exc)
    report["checkpoint_temps"] = temps()
    print(json.dumps(report))
""")


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user+mount namespaces to mount a tmpfs")
def test_a_real_full_tmpfs_and_a_read_only_remount(tmp_path):
    mnt, cache = tmp_path / "small", tmp_path / "cache"
    mnt.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", REAL_TMPFS,
                           str(mnt), str(cache), str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "no space left on device" in report["first"].lower(), report
    assert report["kept"] >= 1 and report["kept_valid"] == report["kept"], report
    assert report["temps_after_failure"] == [], report
    assert report["rerun"] == [11, 11 - report["kept"], report["kept"]] and report["after_rerun"] == 11, report
    assert "read-only file system (EROFS)" in report["read_only"] and report["readable_after_ro"] == 11, report
    assert report["checkpoint"].startswith("cannot write ") and ENOSPC_MESSAGE in report["checkpoint"], report
    assert report["checkpoint_temps"] == [], report
