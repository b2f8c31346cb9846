"""The local launcher: in-process by default; a process per job with GPU slots and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import itertools

import pytest

import local_tasks
from robustmsa.launchers.base import LauncherError, Phase, Task
from robustmsa.launchers.local import LocalLauncher


def test_two_workers_pin_each_job_to_one_gpu_slot_and_cpu_jobs_to_none():
    gpu_tasks = [Task(f"gpu {i}", local_tasks.record_slot, (0.6,), gpus=1) for i in range(4)]
    cpu_tasks = [Task(f"cpu {i}", local_tasks.record_slot, (0.3,), gpus=0) for i in range(2)]
    [outcomes] = LocalLauncher(jobs=2, gpus=["0", "1"]).run([Phase("eval", tuple(gpu_tasks + cpu_tasks))])
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    seen = [o.value for o in outcomes]
    assert [s["cuda"] for s in seen[:4]] and {s["cuda"] for s in seen[:4]} <= {"0", "1"}
    assert [s["cuda"] for s in seen[4:]] == ["", ""]  # a CPU job never sees a GPU
    assert len({s["pid"] for s in seen}) == len(seen)  # a fresh process per job
    assert [o.info["slot"] for o in outcomes[:4]] == [s["cuda"] for s in seen[:4]]
    for a, b in itertools.combinations(seen, 2):  # never two jobs on one slot at once, never more than 2 jobs
        overlap = a["start"] < b["end"] - 0.05 and b["start"] < a["end"] - 0.05
        if overlap and a["cuda"]:
            assert a["cuda"] != b["cuda"]
    starts = sorted(t for s in seen for t in (s["start"],))
    for t in starts:
        assert sum(s["start"] <= t < s["end"] for s in seen) <= 2


def test_jobs_per_gpu_shares_a_gpu_between_two_jobs(tmp_path):
    tasks = tuple(Task(f"eval {i}", local_tasks.rendezvous, (str(tmp_path), f"job{i}", 2), gpus=0.5)
                  for i in range(2))
    [outcomes] = LocalLauncher(jobs=2, gpus=["3"], jobs_per_gpu=2).run([Phase("eval", tasks)])
    a, b = (o.value for o in outcomes)
    assert a["cuda"] == b["cuda"] == "3"
    assert a["met"] and b["met"]  # each saw the other while it ran: together on the shared GPU


def test_failures_come_back_as_outcomes_and_the_other_jobs_finish():
    tasks = (Task("ok", local_tasks.record_slot, (0.0,)), Task("raises", local_tasks.fail, ("boom",)),
             Task("killed", local_tasks.die), Task("big", local_tasks.big_result, (3 << 20,)))
    [outcomes] = LocalLauncher(jobs=2, gpus=[]).run([Phase("eval", tasks)])
    ok, raised, killed, big = outcomes
    assert ok.ok and ok.value["cuda"] == ""
    assert not raised.ok and raised.error.startswith("ValueError: boom")
    assert not killed.ok and "SIGKILL" in killed.error
    assert big.ok and len(big.value) == 3 << 20  # larger than a pipe buffer: read while the job runs


def test_in_process_by_default_and_phases_in_order():
    calls = []
    tasks = (Task("a", calls.append, (1,)),)
    first, second = LocalLauncher().run([Phase("train", tasks), Phase("eval", (Task("b", calls.append, (2,)),))])
    assert calls == [1, 2] and first[0].ok and second[0].ok


def test_gpu_job_without_gpus_and_bad_settings_are_clear_errors():
    with pytest.raises(LauncherError, match="needs a GPU"):
        LocalLauncher(jobs=2, gpus=[]).run([Phase("eval", (Task("g", local_tasks.record_slot, (0,), gpus=1),))])
    with pytest.raises(LauncherError, match="jobs must be >= 1"):
        LocalLauncher(jobs=0)
