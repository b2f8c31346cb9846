"""The ray launcher on a real local Ray cluster (2 CPUs, 2 fake GPUs), started once for this module."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import launcher_tasks
import numpy as np
import pytest

from robustmsa.launchers import create_launcher
from robustmsa.launchers.base import LauncherError, Phase, Task

ray = pytest.importorskip("ray")

from robustmsa.launchers.ray_launcher import RayLauncher

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private local cluster: 2 CPUs, 2 fake GPUs, no dashboard, its own temp dir; shut down afterwards."""
    if ray.is_initialized():
        pytest.skip("this process is already connected to a Ray cluster")
    temp = tmp_path_factory.mktemp("ray")
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "OMP_NUM_THREADS")}
    # workers import the test tasks by name, and run torch on one thread each
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), saved["PYTHONPATH"]) if p)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=str(temp),
                 log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_fractional_gpus_cpu_tasks_off_the_gpus_and_phases_in_order(cluster):
    launcher = create_launcher("ray", {"address": "local", "poll_interval": 0.2})
    train = Phase("train", (Task("whole", launcher_tasks.environment, ("whole",), gpus=1),))
    evaluate = Phase("eval", tuple(Task(f"half {i}", launcher_tasks.environment, (f"half {i}",), gpus=0.5)
                                   for i in range(3)) + (Task("cpu", launcher_tasks.environment, ("cpu",)),))
    [whole], halves = launcher.run([train, evaluate])
    assert whole.ok and whole.value["CUDA_VISIBLE_DEVICES"] in ("0", "1") and whole.task is train.tasks[0]
    assert all(o.ok for o in halves), [o.error for o in halves]
    assert [o.value["tag"] for o in halves] == ["half 0", "half 1", "half 2", "cpu"]  # task order
    assert {o.value["CUDA_VISIBLE_DEVICES"] for o in halves[:3]} <= {"0", "1"}
    assert halves[3].value["CUDA_VISIBLE_DEVICES"] == ""  # a CPU task never sees a GPU
    gpu_pids = [whole.value["pid"], *(o.value["pid"] for o in halves[:3])]
    assert len(set(gpu_pids)) == 4  # each GPU task in a fresh worker (CUDA sees only its own GPUs)
    assert halves[0].info["node_id"] and launcher.default_gpus("train", "auto") == 1.0
    assert launcher.default_gpus("eval", "auto") == 0.5 and launcher.default_gpus("eval", "cpu") == 0.0
    assert launcher.run([Phase("empty", ())]) == [[]]


def test_a_task_killed_mid_way_is_retried_and_an_exception_is_not(cluster, tmp_path):
    launcher = RayLauncher("local", max_retries=2, poll_interval=0.2)
    killed, raised, doomed = tmp_path / "killed.log", tmp_path / "raised.log", tmp_path / "doomed.log"
    tasks = (Task("killed once", launcher_tasks.die_on_first_attempt, (str(killed), 7)),
             Task("raises", launcher_tasks.fail_counting, (str(raised),)),
             Task("always dies", launcher_tasks.die_always, (str(doomed),)))
    [[retried, failed, lost]] = launcher.run([Phase("eval", tasks)])
    assert retried.ok and retried.value["value"] == 7 and retried.value["attempt"] == 2
    first_pid, second_pid = (int(line) for line in killed.read_text().split())
    assert first_pid != second_pid and retried.value["pid"] == second_pid  # a new worker ran the retry
    assert not failed.ok and failed.error.startswith("ValueError: deliberate failure")
    assert len(raised.read_text().split()) == 1  # exceptions are not retried
    assert not lost.ok and "WorkerCrashedError" in lost.error
    assert len(doomed.read_text().split()) == 3  # the first attempt and max_retries=2 retries


def test_storage_check_and_a_sweep_equal_to_the_local_sweep(cluster, tmp_path):
    from robustmsa.datasets import load
    from robustmsa.jobs import DatasetRef
    from robustmsa.results import ResultsStore
    from robustmsa.sweep import run_sweep

    launcher = RayLauncher("local", poll_interval=0.2)
    launcher.check_storage(tmp_path / "probe")
    assert not list((tmp_path / "probe").glob(".robustmsa-storage-probe-*"))
    grid = {"methods": ["lf_dnn"], "corruptions": ["random_missing", "blur"], "levels": [0.0, 0.5],
            "seeds": [1111]}
    data = load("synth")
    here = run_sweep(**grid, dataset=data, out=tmp_path / "local", epochs=1, cache=tmp_path / "c1",
                     audit_samples=0)
    there = run_sweep(**grid, dataset=data, out=tmp_path / "ray", epochs=1, cache=tmp_path / "c2",
                      audit_samples=0, launcher=launcher, dataset_ref=DatasetRef("synth"))
    assert here.computed == there.computed == 4 and there.trained == 1 and not there.failures
    frames = [ResultsStore(tmp_path / name).to_frame().sort_values(["digest", "metric"])
              .reset_index(drop=True) for name in ("local", "ray")]
    assert list(frames[0]["digest"]) == list(frames[1]["digest"])  # the same cells, keyed identically
    assert list(frames[0]["model_key"]) == list(frames[1]["model_key"])
    np.testing.assert_allclose(frames[1]["value"].to_numpy(float), frames[0]["value"].to_numpy(float), rtol=0,
                               atol=1e-5)
    records = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "cells").glob("*/*.json")]
    assert all(r["train_from_cache"] for r in records)  # trained in the train phase, loaded by the evaluation
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["launcher"]["launcher"] == "ray"


def test_more_gpus_than_the_cluster_has_is_a_clear_error(cluster):
    launcher = RayLauncher("local")
    with pytest.raises(LauncherError, match="asking for 3 GPU.*has 2"):
        launcher.run([Phase("train", (Task("big", launcher_tasks.square, (1,), gpus=3),))])


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(LauncherError, match=r"pip install 'robustmsa\[ray\]'"):
        create_launcher("ray", {})


def test_no_cluster_at_auto_says_how_to_start_one(monkeypatch):
    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to use.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    launcher = RayLauncher()  # address="auto": connect, never start a private cluster
    with pytest.raises(LauncherError, match=r"no running Ray cluster.*ray start --head"):
        launcher.run([Phase("eval", (Task("a", launcher_tasks.square, (1,)),))])
    with pytest.raises(LauncherError, match="max_retries must be"):
        create_launcher("ray", {"max_retries": -1})
    with pytest.raises(LauncherError, match="did you mean 'max_retries'"):
        create_launcher("ray", {"max_retry": 1})
