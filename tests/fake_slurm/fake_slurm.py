"""A fake SLURM for the launcher tests: ``sbatch``, ``srun``, ``sacct``, ``scancel``, ``squeue``, one script.

The test writes one-line wrappers named after the commands into a directory it puts first on ``PATH``; each
runs ``python fake_slurm.py <command> ARGS``. State lives under ``$FAKE_SLURM_STATE``:

- ``scripts/<id>.sh``: every submitted batch script, verbatim (the test reads its ``#SBATCH`` lines);
- ``jobs/<id>.json``: the parsed options, array indices, parallelism, dependencies;
- ``tasks/<id>_<index>.json`` (``tasks/<id>.json`` for a single job): state, start and end times, exit code;
- ``scancel.log``: the arguments of every ``scancel``.

``sbatch`` copies the script, assigns the next id (from ``$FAKE_SLURM_FIRST_ID``), prints
``Submitted batch job <id>`` and starts a detached runner that waits for the ``afterany`` dependencies to end,
then runs the array tasks (at most ``%P`` at once) with ``bash`` and the environment SLURM would set
(``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_CPUS_PER_TASK``,
``CUDA_VISIBLE_DEVICES`` for GPU jobs ...). A task exiting non-zero (or killed) is ``FAILED``; ``scancel``
makes pending and running tasks ``CANCELLED``. ``sacct -o JobID,State,NodeList --parsable2 -j ID`` answers in
the format submitit reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

NODE = "fakenode1"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_STATE"])


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _task_names(job: dict) -> list[str]:
    return [f"{job['id']}_{i}" for i in job["array"]] if job["array"] is not None else [str(job["id"])]


def _next_id() -> int:
    state = _state()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = state / "next_id"
        first = int(os.environ.get("FAKE_SLURM_FIRST_ID", "100"))
        value = int(counter.read_text()) if counter.exists() else first
        counter.write_text(str(value + 1))
    return value


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()  # submitit renames the file as soon as we return: copy it now
    options: dict[str, str | bool] = {}
    for line in text.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if match:
            options[match.group(1)] = match.group(2) if match.group(2) is not None else True
    job_id = _next_id()
    state = _state()
    (state / "scripts").mkdir(parents=True, exist_ok=True)
    copy = state / "scripts" / f"{job_id}.sh"
    copy.write_text(text)
    array, parallelism = None, 1
    if "array" in options:
        spec = str(options["array"])
        span, _, limit = spec.partition("%")
        first, _, last = span.partition("-")
        array = list(range(int(first), int(last or first) + 1))
        parallelism = int(limit) if limit else len(array)
    dependency = []
    if "dependency" in options:
        kind, _, ids = str(options["dependency"]).partition(":")
        if kind != "afterany":
            print(f"sbatch: fake slurm supports afterany only, got {kind}", file=sys.stderr)
            return 1
        dependency = [int(i) for i in ids.split(":")]
    job = {"id": job_id, "options": options, "array": array, "parallelism": parallelism,
           "dependency": dependency, "script": str(copy), "submitted": time.time()}
    for name in _task_names(job):
        _write_json(state / "tasks" / f"{name}.json", {"state": "PENDING"})
    _write_json(state / "jobs" / f"{job_id}.json", job)
    with open(state / f"runner_{job_id}.log", "w") as log:
        runner = subprocess.Popen([sys.executable, __file__, "_run", str(job_id)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(state / "runners", "a") as handle:
        handle.write(f"{runner.pid}\n")
    print(f"Submitted batch job {job_id}")
    return 0


def _cancelled(job_id: int) -> bool:
    return (_state() / "cancel" / str(job_id)).exists()


def _ended(job_id: int) -> bool:
    job = _read_json(_state() / "jobs" / f"{job_id}.json")
    if job is None:
        return True  # unknown job: nothing to wait for
    return all((_read_json(_state() / "tasks" / f"{n}.json") or {}).get("state") in TERMINAL
               for n in _task_names(job))


def _run(job_id: int) -> int:
    """The runner of one submitted job: dependencies, then the tasks, at most ``parallelism`` at once."""
    state = _state()
    job = _read_json(state / "jobs" / f"{job_id}.json")
    names = _task_names(job)
    deadline = time.time() + 600
    while not all(_ended(dep) for dep in job["dependency"]):
        if time.time() > deadline or _cancelled(job_id):
            for name in names:
                _write_json(state / "tasks" / f"{name}.json", {"state": "CANCELLED"})
            return 0
        time.sleep(0.05)
    waiting = list(zip(names, job["array"] if job["array"] is not None else [None]))
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    options = job["options"]
    while waiting or running:
        if _cancelled(job_id):
            for name, _ in waiting:
                _write_json(state / "tasks" / f"{name}.json", {"state": "CANCELLED"})
            waiting = []
            for name, (process, start) in running.items():
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while waiting and len(running) < job["parallelism"]:
            name, index = waiting.pop(0)
            env = {**os.environ, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                   "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": NODE,
                   "SLURM_CPUS_PER_TASK": str(options.get("cpus-per-task", 1))}
            env.pop("CUDA_VISIBLE_DEVICES", None)
            if index is None:
                env["SLURM_JOB_ID"] = str(job_id)
            else:
                env.update({"SLURM_JOB_ID": name, "SLURM_ARRAY_JOB_ID": str(job_id),
                            "SLURM_ARRAY_TASK_ID": str(index)})
            if "gpus-per-node" in options:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(int(options["gpus-per-node"])))
            process = subprocess.Popen(["bash", job["script"]], env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
            running[name] = (process, time.time())
            _write_json(state / "tasks" / f"{name}.json", {"state": "RUNNING", "start": running[name][1],
                                                          "pid": process.pid})
        for name in [n for n, (p, _) in running.items() if p.poll() is not None]:
            process, start = running.pop(name)
            code = process.returncode
            status = "CANCELLED" if _cancelled(job_id) else ("COMPLETED" if code == 0 else "FAILED")
            _write_json(state / "tasks" / f"{name}.json",
                        {"state": status, "start": start, "end": time.time(), "exit": code})
        time.sleep(0.05)
    return 0


def srun(args: list[str]) -> int:
    """``srun [--unbuffered] [--output F] [--error F] COMMAND ...``: the command, output to the files."""
    files: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "--error"):
            files[args[i][2:]] = args[i + 1]
            i += 2
        else:
            i += 1
    command = args[i:]
    job = os.environ.get("SLURM_JOB_ID", "0")
    subs = {"%A": os.environ.get("SLURM_ARRAY_JOB_ID", job), "%a": os.environ.get("SLURM_ARRAY_TASK_ID", "0"),
            "%j": job, "%t": "0"}

    def expand(pattern: str) -> str:
        for key, value in subs.items():
            pattern = pattern.replace(key, value)
        return pattern

    with contextlib.ExitStack() as stack:
        out, err = (stack.enter_context(open(expand(files[name]), "a")) if name in files else None
                    for name in ("output", "error"))
        code = subprocess.call(command, stdout=out, stderr=err)
    return code if code >= 0 else 128 - code


def sacct(args: list[str]) -> int:
    if os.environ.get("FAKE_SLURM_NO_ACCOUNTING"):  # a cluster without slurmdbd
        print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    lines = ["JobID|State|NodeList"]
    for job_id in ids:
        job = _read_json(_state() / "jobs" / f"{job_id.split('_')[0]}.json")
        if job is None:
            continue
        for name in _task_names(job):
            task = _read_json(_state() / "tasks" / f"{name}.json") or {"state": "PENDING"}
            node = "None assigned" if task["state"] == "PENDING" else NODE
            lines.append(f"{name}|{task['state']}|{node}")
            if task["state"] != "PENDING":
                lines.append(f"{name}.batch|{task['state']}|{node}")  # step lines: submitit skips them
    print("\n".join(lines))
    return 0


def scancel(args: list[str]) -> int:
    with open(_state() / "scancel.log", "a") as handle:
        handle.write(" ".join(args) + "\n")
    for arg in args:
        if not arg.startswith("-"):
            (_state() / "cancel").mkdir(parents=True, exist_ok=True)
            (_state() / "cancel" / arg.split("_")[0]).touch()
    return 0


def squeue(args: list[str]) -> int:
    """``squeue [--noheader] [--array] [--jobs=ID[,ID]] [--format=%i|%T]``: pending and running tasks.

    Without ``--array`` the pending tasks of an array are folded into one ``ID_[a-b]`` line, as SLURM does;
    ``--jobs`` with ids the controller does not know is refused, as SLURM does.
    """
    jobs_arg = next((a.split("=", 1)[1] for a in args if a.startswith("--jobs=")), None)
    fmt = next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), "%i|%T")
    wanted = set(jobs_arg.split(",")) if jobs_arg else None
    rows = []
    for job_path in sorted((_state() / "jobs").glob("*.json")):
        job = _read_json(job_path)
        if job is None or (wanted is not None and str(job["id"]) not in wanted):
            continue
        pending = []
        for name in _task_names(job):
            task = _read_json(_state() / "tasks" / f"{name}.json") or {"state": "PENDING"}
            if task["state"] == "RUNNING" or (task["state"] == "PENDING" and "--array" in args):
                rows.append((name, task["state"]))
            elif task["state"] == "PENDING":
                pending.append(name.split("_")[-1])
        if pending:
            rows.append((f"{job['id']}_[{pending[0]}-{pending[-1]}]", "PENDING"))
    if wanted is not None and not any((_state() / "jobs" / f"{i}.json").exists() for i in wanted):
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        return 1
    if "--noheader" not in args:
        print(fmt.replace("%i", "JOBID").replace("%T", "STATE"))
    for name, state in rows:
        print(fmt.replace("%i", name).replace("%T", state))
    return 0


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel, "squeue": squeue}


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "_run":
        sys.exit(_run(int(rest[0])))
    sys.exit(COMMANDS[command](rest))
