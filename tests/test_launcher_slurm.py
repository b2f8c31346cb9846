"""The slurm launcher: submitit's in-process debug executor, and real submissions to a fake SLURM on PATH.

The fake (``tests/fake_slurm/fake_slurm.py``) runs the submitted batch scripts for real -- setup lines,
``srun``, ``python -m submitit.core._submit`` -- with the environment SLURM sets, honours array parallelism
and ``afterany`` dependencies, and answers ``sacct`` as SLURM does; the tests read the ``#SBATCH`` lines it
kept.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import launcher_tasks
import numpy as np
import pytest

from robustmsa.launchers import create_launcher, launcher_options, load_launcher_options
from robustmsa.launchers.base import LauncherError, Phase, Task
from robustmsa.stop import StopRequested, handle_sigterm, request_stop

submitit = pytest.importorskip("submitit")

from robustmsa.launchers.slurm import SlurmLauncher

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fake_slurm" / "fake_slurm.py"
_IDS = itertools.count(7000 + (os.getpid() % 100) * 1000, 100)  # job ids never repeat in this process


# -- the debug executor (in this process) -------------------------------------------------------------------

def test_debug_executor_runs_phases_in_order_and_failures_are_outcomes(tmp_path):
    launcher = SlurmLauncher(tmp_path / "submitit", executor="debug")
    train = Phase("train", (Task("a", launcher_tasks.square, (3,)),
                            Task("b", launcher_tasks.fail, ("boom",))))
    evaluate = Phase("eval", (Task("c", launcher_tasks.square, (4,), gpus=0.5),))
    first, second = launcher.run([train, evaluate, Phase("empty", ())])[:2]
    assert [o.ok for o in first] == [True, False] and first[0].value == 9 and second[0].value == 16
    assert first[1].error.startswith("ValueError: boom") and "Traceback" in first[1].error
    assert first[0].task is train.tasks[0] and first[0].info["executor"] == "debug"
    assert launcher.run([Phase("empty", ())]) == [[]]


def test_storage_check_defaults_the_job_folder_under_the_output(tmp_path):
    launcher = SlurmLauncher(executor="debug")
    launcher.check_storage(tmp_path / "out")
    assert launcher.folder == (tmp_path / "out" / "submitit").resolve()
    assert not list((tmp_path / "out").glob(".robustmsa-storage-probe-*"))  # the probe cleans up
    assert launcher.describe()["folder"] == str(launcher.folder)
    json.dumps(launcher.describe())  # goes into the sweep manifest


def test_factory_options_file_and_clear_errors(tmp_path):
    launcher = create_launcher("SLURM", {"folder": str(tmp_path), "executor": "debug", "partition": "gpu",
                                         "phase_options": {"train": {"timeout_min": 240}}})
    assert isinstance(launcher, SlurmLauncher) and launcher.default_gpus("train", "auto") == 1.0
    assert launcher.default_gpus("eval", "cpu") == 0.0
    with pytest.raises(LauncherError, match="did you mean 'partition'"):
        create_launcher("slurm", {"partiton": "gpu", "executor": "debug"})
    with pytest.raises(LauncherError, match="did you mean 'slurm'"):
        create_launcher("slrum", {})
    with pytest.raises(LauncherError, match="did you mean 'timeout_min'"):
        create_launcher("slurm", {"executor": "debug", "phase_options": {"train": {"timeout": 5}}})
    with pytest.raises(LauncherError, match="timeout_min must be a whole number"):
        create_launcher("slurm", {"executor": "debug", "timeout_min": "long"})
    with pytest.raises(LauncherError, match="setup must be a list"):
        create_launcher("slurm", {"executor": "debug", "setup": "module load cuda"})
    with pytest.raises(LauncherError, match="executor must be"):
        create_launcher("slurm", {"executor": "local"})
    assert {"partition", "account", "gpus_per_node", "slurm_array_parallelism", "setup"} <= \
        set(launcher_options("slurm"))
    local = create_launcher("local", {"jobs": 2, "gpus": []})
    assert type(local).__name__ == "LocalLauncher" and local.jobs == 2
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: gpu\naccount: proj\ntimeout_min: 120\nsetup:\n  - module load cuda\n")
    assert load_launcher_options(config) == {"partition": "gpu", "account": "proj", "timeout_min": 120,
                                             "setup": ["module load cuda"]}
    config.write_text("partition: gpu\nacount: proj\n")
    with pytest.raises(LauncherError, match="unknown option 'acount'; did you mean 'account'"):
        load_launcher_options(config)
    config.write_text("address: auto\n")
    with pytest.raises(LauncherError, match="unknown option 'address'; it is an option of the ray launcher"):
        load_launcher_options(config, "slurm")  # a ray option, checked against the chosen launcher
    config.write_text("- partition\n")
    with pytest.raises(LauncherError, match="expected a mapping"):
        load_launcher_options(config)
    with pytest.raises(LauncherError, match="cannot be read"):
        load_launcher_options(tmp_path / "missing.yaml")


def test_without_submitit_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(LauncherError, match=r"pip install 'robustmsa\[slurm\]'"):
        create_launcher("slurm", {"executor": "debug"})


def test_without_srun_the_slurm_executor_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LauncherError, match="srun.*executor=debug"):
        SlurmLauncher(tmp_path / "submitit")


# -- a fake SLURM on PATH ----------------------------------------------------------------------------------

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Put fake sbatch/srun/sacct/scancel/squeue first on PATH; yields the fake's state directory."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for command in ("sbatch", "srun", "sacct", "scancel", "squeue"):
        wrapper = bin_dir / command
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} {command} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    monkeypatch.setenv("FAKE_SLURM_FIRST_ID", str(next(_IDS)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield state
    (state / "cancel").mkdir(exist_ok=True)
    for job in (state / "jobs").glob("*.json"):  # stop whatever is still queued or running
        (state / "cancel" / job.stem).touch()
    listed = state / "runners"
    runners = [int(p) for p in listed.read_text().split()] if listed.exists() else []
    deadline = time.time() + 10
    for pid in runners:  # our own runner processes, by pid
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if finished:
            return False
    except ChildProcessError:
        pass
    if Path("/proc/self/stat").exists():
        try:
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return status.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _sbatch_lines(state: Path, job_id: str) -> list[str]:
    return [line for line in (state / "scripts" / f"{job_id}.sh").read_text().splitlines()
            if line.startswith("#SBATCH")]


def _task_times(state: Path, job_id: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((state / "tasks").glob(f"{job_id}*.json"))]


def test_fake_sbatch_arrays_dependency_setup_and_outcomes(fake_slurm, tmp_path):
    launcher = SlurmLauncher(tmp_path / "submitit", partition="gpu", account="proj", timeout_min=30,
                             cpus_per_task=1, mem_gb=2, slurm_array_parallelism=2,
                             setup=["export ROBUSTMSA_FAKE_SETUP=yes"],
                             additional_parameters={"mail-type": "END"},
                             phase_options={"train": {"timeout_min": 90}}, poll_interval=0.2,
                             result_grace_s=0.5)
    train = Phase("train", (Task("t0", launcher_tasks.environment, ("t0",), gpus=1),
                            Task("t1", launcher_tasks.environment, ("t1",), gpus=1),
                            Task("killed", launcher_tasks.die, gpus=1)))
    evaluate = Phase("eval", (Task("e0", launcher_tasks.environment, ("e0",), gpus=0.5),
                              Task("raises", launcher_tasks.fail, ("boom",), gpus=0.5),
                              Task("cpu", launcher_tasks.environment, ("cpu",), gpus=0)))
    start = time.perf_counter()
    trained, evaluated = launcher.run([train, evaluate])
    assert time.perf_counter() - start < 60

    t0, t1, killed = trained
    train_id = t0.value["SLURM_ARRAY_JOB_ID"]
    assert t0.ok and t1.ok and t0.value["tag"] == "t0" and t1.value["SLURM_ARRAY_TASK_ID"] == "1"
    assert t0.value["ROBUSTMSA_FAKE_SETUP"] == "yes"  # the setup lines ran before the job
    assert t0.value["CUDA_VISIBLE_DEVICES"] == "0" and t0.value["OMP_NUM_THREADS"] == "1"
    assert t0.info["slurm_job_id"] == f"{train_id}_0" and t0.task is train.tasks[0]
    assert not killed.ok and "FAILED without a result" in killed.error
    assert killed.info["slurm_state"] == "FAILED"
    e0, raised, cpu = evaluated
    assert e0.ok and e0.value["CUDA_VISIBLE_DEVICES"] == "0"  # half a GPU is one whole GPU on SLURM
    assert not raised.ok and raised.error.startswith("ValueError: boom")
    assert cpu.ok and cpu.value["CUDA_VISIBLE_DEVICES"] == "" and cpu.value["SLURM_ARRAY_JOB_ID"] is None

    train_lines = _sbatch_lines(fake_slurm, train_id)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --array=0-2%2", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --mem=2GB", "#SBATCH --mail-type=END", "#SBATCH --job-name=robustmsa-train"):
        assert line in train_lines, (line, train_lines)
    assert not any("--dependency" in line for line in train_lines)
    script = (fake_slurm / "scripts" / f"{train_id}.sh").read_text()
    assert script.index("export ROBUSTMSA_FAKE_SETUP=yes") < script.index("srun ")

    eval_gpu_id = e0.value["SLURM_ARRAY_JOB_ID"]
    eval_cpu_id = cpu.info["slurm_job_id"]  # a one-task group is a plain job, not an array
    for job_id in (eval_gpu_id, eval_cpu_id):
        lines = _sbatch_lines(fake_slurm, job_id)
        assert f"#SBATCH --dependency=afterany:{train_id}" in lines  # afterany: the killed job blocks nothing
        assert "#SBATCH --time=30" in lines and "#SBATCH --job-name=robustmsa-eval" in lines
    assert "#SBATCH --array=0-1%2" in _sbatch_lines(fake_slurm, eval_gpu_id)
    assert not any(line.startswith(("#SBATCH --array", "#SBATCH --gpus")) for line in
                   _sbatch_lines(fake_slurm, eval_cpu_id))
    train_end = max(t["end"] for t in _task_times(fake_slurm, train_id))
    assert all(t["start"] >= train_end for job in (eval_gpu_id, eval_cpu_id)
               for t in _task_times(fake_slurm, job))
    assert not (fake_slurm / "scancel.log").exists()  # nothing cancelled after a normal run


def test_fake_sbatch_storage_check_then_a_stop_cancels_the_arrays(fake_slurm, tmp_path):
    launcher = SlurmLauncher(tmp_path / "submitit", gpus_per_node=0, cpus_per_task=1, poll_interval=0.2,
                             result_grace_s=0.5)
    launcher.check_storage(tmp_path / "out")  # a real (fake) job wrote the token
    assert not list((tmp_path / "out").glob(".robustmsa-storage-probe-*"))
    phases = [Phase("train", tuple(Task(f"s{i}", launcher_tasks.sleep, (60,)) for i in range(2))),
              Phase("eval", (Task("after", launcher_tasks.sleep, (60,)),))]
    with handle_sigterm():
        timer = threading.Timer(1.5, request_stop)
        timer.start()
        try:
            with pytest.raises(StopRequested, match="SLURM job"):
                launcher.run(phases)
        finally:
            timer.cancel()
    cancelled = (fake_slurm / "scancel.log").read_text().split()
    submitted = sorted(p.stem for p in (fake_slurm / "jobs").glob("*.json"))
    assert sorted(cancelled) == submitted[1:]  # both arrays of the run (the first job was the storage probe)
    deadline = time.time() + 10
    while time.time() < deadline and any(t["state"] != "CANCELLED" for job in submitted[1:]
                                         for t in _task_times(fake_slurm, job)):
        time.sleep(0.1)
    assert {t["state"] for job in submitted[1:] for t in _task_times(fake_slurm, job)} == {"CANCELLED"}


def test_without_accounting_a_killed_job_is_found_through_squeue(fake_slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")  # sacct fails: submitit never learns a state
    launcher = SlurmLauncher(tmp_path / "submitit", gpus_per_node=0, cpus_per_task=1, poll_interval=0.2,
                             result_grace_s=0.5, queue_check_s=0.2, slurm_array_parallelism=1)
    phase = Phase("train", (Task("ok", launcher_tasks.square, (3,)), Task("killed", launcher_tasks.die),
                            Task("later", launcher_tasks.square, (4,))))
    start = time.perf_counter()
    ok, killed, later = launcher.run([phase])[0]
    assert time.perf_counter() - start < 60  # before: waited forever for the killed one
    assert ok.ok and ok.value == 9 and later.ok and later.value == 16  # pending tasks are listed: waited for
    assert not killed.ok and killed.info["slurm_state"] == "UNKNOWN"
    assert "squeue no longer lists it" in killed.error


def test_queue_view_reads_squeue_and_keeps_waiting_when_it_cannot(fake_slurm, tmp_path, monkeypatch):
    from robustmsa.launchers.slurm import QueueView

    (fake_slurm / "jobs").mkdir()
    (fake_slurm / "jobs" / "555.json").write_text(json.dumps({"id": 555, "array": [0, 1, 2]}))
    (fake_slurm / "tasks").mkdir()
    for index, state in enumerate(("RUNNING", "PENDING", "COMPLETED")):
        (fake_slurm / "tasks" / f"555_{index}.json").write_text(json.dumps({"state": state}))
    fresh, cached = QueueView(0), QueueView(3600)
    assert fresh.active("555") == cached.active("555") == {"555_0", "555_1"}  # one line per array task
    (fake_slurm / "tasks" / "555_0.json").write_text(json.dumps({"state": "FAILED"}))
    assert fresh.active("555") == {"555_1"} and cached.active("555") == {"555_0", "555_1"}  # rate-limited
    assert fresh.active("424242") == set()  # an id squeue refuses as unknown: nothing of it is queued
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert QueueView(0).active("555") is None  # no squeue: nothing is concluded, the job is waited for


def test_fake_sbatch_refusal_is_a_launcher_error(fake_slurm, tmp_path):
    launcher = SlurmLauncher(tmp_path / "submitit", gpus_per_node=0, poll_interval=0.2,
                             additional_parameters={"dependency": "afterok:1"})  # the fake refuses afterok
    with pytest.raises(LauncherError, match="submitting phase 'train'.*failed"):
        launcher.run([Phase("train", (Task("a", launcher_tasks.square, (2,)),))])


# -- a sweep through the slurm launcher equals the local sweep ---------------------------------------------

GRID = {"methods": ["lf_dnn"], "corruptions": ["random_missing", "blur"], "levels": [0.0, 0.5],
        "seeds": [1111]}


def _frame(out: Path):
    from robustmsa.results import ResultsStore

    return ResultsStore(out).to_frame().sort_values(["digest", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    from robustmsa.datasets import load
    from robustmsa.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("local")
    summary = run_sweep(**GRID, dataset=load("synth"), out=tmp / "run", epochs=1, cache=tmp / "cache",
                        audit_samples=0)
    assert summary.computed == 4
    return _frame(tmp / "run")


def _assert_same_cells(frame, reference) -> None:
    assert len(frame) == len(reference) > 0
    assert list(frame["digest"]) == list(reference["digest"])  # the same cells, keyed identically
    assert list(frame["metric"]) == list(reference["metric"]) and list(frame["model_key"]) == \
        list(reference["model_key"])
    np.testing.assert_allclose(frame["value"].to_numpy(float), reference["value"].to_numpy(float), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("executor", ["debug", "slurm"])
def test_sweep_through_slurm_equals_the_local_sweep(executor, local_sweep, tmp_path, request):
    from robustmsa.datasets import load
    from robustmsa.jobs import DatasetRef
    from robustmsa.sweep import run_sweep

    state = request.getfixturevalue("fake_slurm") if executor == "slurm" else None
    launcher = SlurmLauncher(executor=executor, gpus_per_node=0, cpus_per_task=1, poll_interval=0.2,
                             result_grace_s=2)
    summary = run_sweep(**GRID, dataset=load("synth"), out=tmp_path / "run", epochs=1,
                        cache=tmp_path / "cache", audit_samples=0, launcher=launcher,
                        dataset_ref=DatasetRef("synth"))
    assert summary.computed == 4 and summary.trained == 1 and not summary.failures
    _assert_same_cells(_frame(tmp_path / "run"), local_sweep)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["launcher"]["launcher"] == "slurm" and manifest["launcher"]["executor"] == executor
    if state is not None:  # storage probe, then the training array, then the evaluation array after it
        scripts = sorted((state / "scripts").glob("*.sh"))
        assert len(scripts) == 3
        train_id = scripts[1].stem
        assert "#SBATCH --job-name=robustmsa-train" in _sbatch_lines(state, train_id)
        assert f"#SBATCH --dependency=afterany:{train_id}" in _sbatch_lines(state, scripts[2].stem)
        records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*/*.json")]
        assert all(r["train_from_cache"] for r in records)  # the training job trained, evaluation only loaded
    assert re.search(r"submitit", str(launcher.folder))
