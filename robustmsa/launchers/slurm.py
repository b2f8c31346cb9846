"""The SLURM launcher: each phase is a job array submitted through submitit, depending on the phase before.

``run(phases)`` submits every phase at once: phase 1 as one job array (``map_array``, at most
``slurm_array_parallelism`` tasks running), phase 2 as another array that depends on it
(``--dependency=afterany:ID``), and so on; then it waits for all of them (polling result files, and ``sacct``
through submitit's shared watcher) and returns one :class:`~robustmsa.launchers.base.Outcome` per task. Tasks
of one phase that ask for different GPU counts go to one array per count (SLURM gives whole GPUs: a
fractional request is rounded up).

Decisions:

- **afterany, not afterok.** With ``afterok`` one training job that was killed (timeout, node failure, out of
  memory) would leave the whole evaluation array pending forever (``DependencyNeverSatisfied``). With
  ``afterany`` the evaluations start once every training job has ended, however it ended; an evaluation whose
  model is missing trains it itself (``robustmsa.jobs.evaluate_model``), and the sweep driver re-plans from
  the records afterwards, so nothing is lost and nothing is done twice.
- **No ``submitit.helpers.Checkpointable``.** Training cannot resume in this codebase: it restarts from
  scratch (there is no mid-training checkpoint; the cache holds only finished models). A timed-out job is
  therefore not requeued; it comes back as a failed outcome and the driver's next round submits it again. (A
  preempted job is requeued by submitit and starts over.)
- **Failures are outcomes.** Each array task runs :func:`~robustmsa.launchers.base.call_task`, so an exception
  comes back as ``Outcome(ok=False)`` with its traceback; a task killed by SLURM (timeout, out of memory,
  cancelled, node failure) leaves no result file and comes back as ``ok=False`` naming its SLURM state and the
  end of its error log. Only submission itself (sbatch refusing the job) raises :class:`LauncherError`.
- **Interruptions.** Ctrl-C, a SIGTERM to the driver or an error in the driver cancels (``scancel``) the
  arrays it submitted, unless ``cancel_on_interrupt=False`` (then they keep running and keep writing records;
  rerunning the sweep collects them). Cells already written are kept either way.
- **Without accounting.** submitit learns a job's end from ``sacct``. On clusters without accounting
  (``sacct`` fails or stays silent) a job killed before writing its result would be waited for forever, so
  a job whose state stays ``UNKNOWN`` is checked against ``squeue``: once ``squeue`` no longer lists it
  (pending or running), it has ended, and after ``result_grace_s`` without a result it is failed.
- **Shared storage.** ``check_storage(out)`` runs a one-task job that writes a token under ``out`` before
  anything else is submitted; submitit's ``folder`` (job pickles and logs, default ``<out>/submitit``) must be
  shared too.

``executor="debug"`` runs every job in this process through submitit's ``DebugExecutor`` (no SLURM needed):
for tests and dry runs. submitit is imported only when a launcher is created
(``pip install robustmsa[slurm]``).
"""

from __future__ import annotations

import difflib
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..stop import StopRequested, stop_requested
from .base import Launcher, LauncherError, Outcome, Phase, Task, call_task, probe_storage

__all__ = ["PHASE_OPTIONS", "QueueView", "SlurmLauncher"]

#: options that ``phase_options`` may set for one phase (e.g. a longer ``timeout_min`` for "train")
PHASE_OPTIONS = ("partition", "account", "qos", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb",
                 "constraint", "slurm_array_parallelism", "setup", "additional_parameters")


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise LauncherError("the slurm launcher needs submitit: pip install 'robustmsa[slurm]'") from exc
    return submitit


def _job_main(task: Task, pin_devices: bool) -> Outcome:
    """What one array task runs: pin devices and threads to the allocation, then the task itself."""
    if pin_devices:
        if task.gpus <= 0:  # a CPU job never picks up a GPU of the node
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:  # torch is imported later and reads it
            os.environ["OMP_NUM_THREADS"] = cpus
    outcome = call_task(task)
    outcome.info.update({"host": _hostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    return outcome


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if float(gb) == int(gb) else f"{int(float(gb) * 1024)}MB"


class SlurmLauncher(Launcher):
    """Run each phase as a SLURM job array through submitit (see the module docstring for the decisions).

    Args:
        folder: submitit's folder for job pickles and logs, on shared storage (default: ``<out>/submitit``
            once :meth:`check_storage` has seen the output directory, else ``./submitit``).
        partition, account, qos, constraint: the usual ``#SBATCH`` options (None: the cluster's default).
        timeout_min: wall-time limit of every job, in minutes.
        gpus_per_node: GPUs a job asks for when the sweep does not say (``run_sweep(train_gpus=...,
            eval_gpus=...)``); 0 on CPU-only partitions. An array asks for ``ceil(task.gpus)`` GPUs per job.
        cpus_per_task: cores per job (also the job's ``OMP_NUM_THREADS``, unless set).
        mem_gb: memory per job (None: the partition's default).
        slurm_array_parallelism: at most this many tasks of one array run at once (``--array=0-N%P``).
        setup: shell lines run before the job, e.g. ``module load cuda``, ``source venv/bin/activate``.
        additional_parameters: further ``#SBATCH`` options, passed through (``{"mail-type": "END"}``).
        phase_options: per-phase overrides of the options above, e.g. ``{"train": {"timeout_min": 240}}``.
        python: the command that runs Python on the nodes (default: this interpreter).
        job_name: prefix of the job names (``<job_name>-<phase>``).
        executor: ``"slurm"`` (sbatch/sacct) or ``"debug"`` (every job in this process; tests and dry runs).
        poll_interval: seconds between checks of the submitted jobs.
        result_grace_s: how long a job SLURM reports as ended may take to show its result file (slow shared
            file systems) before it counts as failed.
        queue_check_s: at most one ``squeue`` call per this many seconds, for jobs ``sacct`` knows nothing
            about (clusters without accounting).
        cancel_on_interrupt: cancel the submitted jobs when the driver is interrupted or fails.
    """

    name = "slurm"
    train_phase = True

    def __init__(self, folder: str | os.PathLike | None = None, *, partition: str | None = None,
                 account: str | None = None, qos: str | None = None, constraint: str | None = None,
                 timeout_min: int = 60, gpus_per_node: float = 1, cpus_per_task: int = 4,
                 mem_gb: float | None = None, slurm_array_parallelism: int = 64, setup: Sequence[str] = (),
                 additional_parameters: Mapping[str, Any] | None = None,
                 phase_options: Mapping[str, Mapping[str, Any]] | None = None, python: str | None = None,
                 job_name: str = "robustmsa", executor: str = "slurm", poll_interval: float = 10.0,
                 result_grace_s: float = 30.0, queue_check_s: float = 60.0,
                 cancel_on_interrupt: bool = True) -> None:
        if executor not in ("slurm", "debug"):
            raise LauncherError(f"slurm launcher: executor must be 'slurm' or 'debug', got {executor!r}")
        if not isinstance(phase_options or {}, Mapping) or \
                not all(isinstance(v or {}, Mapping) for v in (phase_options or {}).values()):
            raise LauncherError(f"slurm launcher: phase_options must map phase names to option mappings, "
                                f"e.g. {{train: {{timeout_min: 240}}}}; got {phase_options!r}")
        for label, value in (("poll_interval", poll_interval), ("result_grace_s", result_grace_s),
                             ("queue_check_s", queue_check_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise LauncherError(f"slurm launcher: {label} must be a number >= 0, got {value!r}")
        self.folder = None if folder is None else Path(folder).expanduser().resolve()
        self.options: dict[str, Any] = {
            "partition": partition, "account": account, "qos": qos, "constraint": constraint,
            "timeout_min": timeout_min, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
            "mem_gb": mem_gb, "slurm_array_parallelism": slurm_array_parallelism, "setup": setup,
            "additional_parameters": additional_parameters}
        self.phase_options = {str(k): dict(v or {}) for k, v in (phase_options or {}).items()}
        self.python = python
        self.job_name = str(job_name)
        self.executor = executor
        self.poll_interval = float(poll_interval)
        self.result_grace_s = float(result_grace_s)
        self.queue = QueueView(queue_check_s)
        self.cancel_on_interrupt = bool(cancel_on_interrupt)
        self._check_options()
        self._submitit = _submitit()
        if executor == "slurm":
            self._new_executor(self._parameters(None, 0.0, []))  # sbatch options checked now, srun looked for

    # -- options ---------------------------------------------------------------------------------------------

    def _check_options(self) -> None:
        for phase, options in self.phase_options.items():
            for key in options:
                if key not in PHASE_OPTIONS:
                    close = difflib.get_close_matches(str(key), PHASE_OPTIONS, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise LauncherError(f"slurm launcher: phase_options[{phase!r}]: unknown option {key!r}"
                                        f"{hint} (per-phase options: {', '.join(PHASE_OPTIONS)})")
        for phase in (None, *self.phase_options):
            opts = self._options(phase)
            where = "slurm launcher" + (f" (phase {phase!r})" if phase else "")
            for key in ("timeout_min", "cpus_per_task", "slurm_array_parallelism"):
                value = opts[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise LauncherError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
            gpus = opts["gpus_per_node"]
            if not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or not gpus >= 0:
                raise LauncherError(f"{where}: gpus_per_node must be a number >= 0, got {gpus!r}")
            mem = opts["mem_gb"]
            if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0):
                raise LauncherError(f"{where}: mem_gb must be a number > 0, got {mem!r}")
            setup = opts["setup"]
            if isinstance(setup, str) or not all(isinstance(line, str) for line in setup or ()):
                raise LauncherError(f"{where}: setup must be a list of shell lines, got {setup!r}")
            extra = opts["additional_parameters"]
            if extra is not None and not isinstance(extra, Mapping):
                raise LauncherError(f"{where}: additional_parameters must be a mapping, got {extra!r}")

    def _options(self, phase: str | None) -> dict[str, Any]:
        return {**self.options, **(self.phase_options.get(phase, {}) if phase else {})}

    def default_gpus(self, phase: str, device: str | None) -> float:
        return 0.0 if device == "cpu" else float(self._options(phase)["gpus_per_node"])

    def describe(self) -> Mapping[str, Any]:
        return {"launcher": self.name, "executor": self.executor, "folder": str(self._folder()),
                **{k: (list(v) if k == "setup" else v) for k, v in self.options.items()},
                "phase_options": self.phase_options, "job_name": self.job_name}

    def _folder(self) -> Path:
        return self.folder if self.folder is not None else Path("submitit").resolve()

    def _parameters(self, phase: str | None, gpus: float, after: Sequence[str]) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters of one array of ``phase`` needing ``gpus`` GPUs per task."""
        opts = self._options(phase)
        params: dict[str, Any] = {"job_name": f"{self.job_name}-{phase}" if phase else self.job_name,
                                  "time": int(opts["timeout_min"]),
                                  "cpus_per_task": int(opts["cpus_per_task"]),
                                  "array_parallelism": int(opts["slurm_array_parallelism"]),
                                  "setup": list(opts["setup"] or ())}
        for key in ("partition", "account", "qos", "constraint"):
            if opts[key] is not None:
                params[key] = str(opts[key])
        if opts["mem_gb"] is not None:
            params["mem"] = _mem(opts["mem_gb"])
        if gpus > 0:
            params["gpus_per_node"] = math.ceil(gpus)
        if after:
            params["dependency"] = "afterany:" + ":".join(after)
        if opts["additional_parameters"]:
            params["additional_parameters"] = dict(opts["additional_parameters"])
        return params

    def _new_executor(self, params: Mapping[str, Any]):
        folder = self._folder()
        if self.executor == "debug":
            return self._submitit.DebugExecutor(folder=folder)
        try:
            executor = self._submitit.SlurmExecutor(folder=folder, python=self.python)
        except RuntimeError as exc:  # srun not found
            raise LauncherError(f"slurm launcher: {exc} (run the sweep on a SLURM login node, or use "
                                f"executor=debug for a dry run in this process)") from exc
        try:
            executor.update_parameters(**params)
        except ValueError as exc:
            raise LauncherError(f"slurm launcher: bad sbatch option: {str(exc).splitlines()[0]}") from exc
        return executor

    # -- storage ---------------------------------------------------------------------------------------------

    def check_storage(self, out: Path, *more: Path) -> None:
        """Default the job folder to ``<out>/submitit``, then run one job that must write under ``out`` (and
        ``more``)."""
        if self.folder is None:
            self.folder = Path(out).expanduser().resolve() / "submitit"
        probe_storage(self, Path(out), *more)

    # -- running ---------------------------------------------------------------------------------------------

    def run(self, phases: Sequence[Phase]) -> list[list[Outcome]]:
        if self.executor == "debug":
            return [self._run_debug(phase) for phase in phases]
        submitted: list[tuple[int, int, Any]] = []  # (phase index, task index, submitit job)
        try:
            after: list[str] = []
            for p, phase in enumerate(phases):
                arrays = self._submit_phase(phase, after, lambda i, job, p=p: submitted.append((p, i, job)))
                after = arrays or after  # an empty phase adds no dependency
            return self._wait(phases, submitted)
        except BaseException:
            if self.cancel_on_interrupt:
                self._cancel([job for _, _, job in submitted])
            raise

    def _groups(self, phase: Phase) -> dict[int, list[int]]:
        """Task indices of ``phase`` by whole GPUs per task (one array each)."""
        groups: dict[int, list[int]] = {}
        for index, task in enumerate(phase.tasks):
            groups.setdefault(math.ceil(task.gpus) if task.gpus > 0 else 0, []).append(index)
        return groups

    def _submit_phase(self, phase: Phase, after: list[str], record) -> list[str]:
        """Submit ``phase`` (an array per GPU count) after the arrays ``after``; returns the new array ids."""
        ids = []
        for gpus, indices in sorted(self._groups(phase).items()):
            executor = self._new_executor(self._parameters(phase.name, gpus, after))
            tasks = [phase.tasks[i] for i in indices]
            try:
                jobs = executor.map_array(_job_main, tasks, [True] * len(tasks))
            except Exception as exc:  # sbatch refused (bad partition, account, limits ...)
                raise LauncherError(f"slurm launcher: submitting phase {phase.name!r} ({len(tasks)} job(s)) "
                                    f"failed: {_first_line(exc)}") from exc
            for index, job in zip(indices, jobs):
                record(index, job)
            ids.append(str(jobs[0].job_id).split("_")[0])
        return ids

    def _wait(self, phases: Sequence[Phase], submitted: list[tuple[int, int, Any]]) -> list[list[Outcome]]:
        """Poll until every submitted job has a result or has ended without one; outcomes in task order."""
        outcomes: list[list[Outcome | None]] = [[None] * len(phase.tasks) for phase in phases]
        pending = list(submitted)
        ended_at: dict[int, float] = {}  # id(job) -> when SLURM first said it ended without a result file
        while pending:
            still = []
            for p, i, job in pending:
                outcome = self._collect(phases[p], phases[p].tasks[i], job, ended_at)
                if outcome is None:
                    still.append((p, i, job))
                else:
                    outcomes[p][i] = outcome
            pending = still
            if pending:
                if stop_requested():
                    raise StopRequested(f"SIGTERM while {len(pending)} SLURM job(s) were queued or running")
                time.sleep(self.poll_interval)
        return [[o if o is not None else Outcome(t, False, error="not run") for o, t in zip(row, phase.tasks)]
                for row, phase in zip(outcomes, phases)]

    def _collect(self, phase: Phase, task: Task, job, ended_at: dict[int, float]) -> Outcome | None:
        """The outcome of ``job`` if it is over, else None."""
        if not job.paths.result_pickle.exists():
            if not job.done() and not self._left_queue(job):  # result file, else sacct, else squeue
                return None
            first = ended_at.setdefault(id(job), time.monotonic())
            if time.monotonic() - first < self.result_grace_s and not job.paths.result_pickle.exists():
                return None  # a slow shared file system may show the result file late
            if not job.paths.result_pickle.exists():
                return self._lost(phase, task, job)
        try:
            value = job.result()
        except Exception as exc:  # noqa: BLE001 -- failed outside the task (unpickling, imports on the node)
            return Outcome(task, False, error=f"{type(exc).__name__}: {exc}",
                           info={"slurm_job_id": job.job_id})
        if not isinstance(value, Outcome):
            return Outcome(task, False, error=f"job returned {type(value).__name__}, not an Outcome",
                           info={"slurm_job_id": job.job_id})
        value.task = task  # the driver's own task object
        value.info.update({"slurm_job_id": job.job_id, "executor": self.executor})
        return value

    def _left_queue(self, job) -> bool:
        """True if sacct knows nothing of ``job`` and squeue no longer lists it: it ended (no accounting)."""
        if str(job.state or "UNKNOWN") != "UNKNOWN":
            return False  # sacct answers for it: submitit's done() is right
        active = self.queue.active(str(job.job_id).split("_")[0])
        return active is not None and str(job.job_id) not in active

    def _lost(self, phase: Phase, task: Task, job) -> Outcome:
        """A job SLURM reports as ended without a result: killed, timed out, out of memory, node failure."""
        state = str(job.state or "UNKNOWN")
        hint = ""
        if state == "UNKNOWN":
            hint = (" (sacct knows nothing of it and squeue no longer lists it:"
                    " killed, timed out or out of memory)")
        if state.startswith("TIMEOUT"):
            limit = self._options(phase.name)["timeout_min"]
            hint = f" (timeout_min={limit} for phase {phase.name!r}: raise it, or set phase_options)"
        elif state.startswith("OUT_OF_MEMORY"):
            hint = " (raise mem_gb)"
        try:
            log = (job.stderr() or "").strip().splitlines()[-15:]
        except OSError:
            log = []
        error = (f"SLURM job {job.job_id} ended {state} without a result{hint}; logs: {job.paths.stderr}"
                 + ("\n" + "\n".join(log) if log else
                    f" (no log: is the folder {self._folder()} on storage shared with the nodes?)"))
        return Outcome(task, False, error=error, info={"slurm_job_id": job.job_id, "slurm_state": state})

    def _run_debug(self, phase: Phase) -> list[Outcome]:
        """submitit's in-process DebugExecutor: the same pickling-free path, one task after another."""
        if not phase.tasks:
            return []
        executor = self._new_executor({})
        jobs = executor.map_array(_job_main, list(phase.tasks), [False] * len(phase.tasks))
        outcomes = []
        for task, job in zip(phase.tasks, jobs):
            try:
                value = job.result()  # _job_main never raises an Exception (call_task catches it)
            except Exception as exc:  # noqa: BLE001 -- reported as the task's outcome
                value = Outcome(task, False, error=f"{type(exc).__name__}: {exc}")
            value.task = task
            value.info.update({"slurm_job_id": job.job_id, "executor": "debug"})
            outcomes.append(value)
            if stop_requested():
                raise StopRequested(f"SIGTERM after {task.name} (debug executor)")
        return outcomes

    @staticmethod
    def _cancel(jobs: list) -> None:
        """scancel each submitted array once (best effort: never raises)."""
        seen = set()
        for job in jobs:
            array = str(job.job_id).split("_")[0]
            if array in seen:
                continue
            seen.add(array)
            try:
                import subprocess

                subprocess.run(["scancel", array], check=False, capture_output=True, timeout=60)
            except Exception:  # noqa: BLE001, S110 -- nothing more to do from here
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0] if len(text) < 2000 else text[:2000]


class QueueView:
    """The array tasks ``squeue`` lists as pending or running, refreshed at most every ``interval`` seconds.

    The fallback for jobs ``sacct`` says nothing about. ``active(array_id)`` is None when squeue cannot answer
    (not installed, controller unreachable): then nothing is concluded and the job is waited for.
    """

    def __init__(self, interval: float) -> None:
        self.interval = float(interval)
        self._listed: dict[str, set[str]] = {}
        self._checked: dict[str, float] = {}

    def active(self, array_id: str) -> set[str] | None:
        now = time.monotonic()
        if array_id not in self._checked or now - self._checked[array_id] >= self.interval:
            self._checked[array_id] = now
            listed = _squeue(array_id)
            if listed is None:
                self._listed.pop(array_id, None)
            else:
                self._listed[array_id] = listed
        return self._listed.get(array_id)


def _squeue(array_id: str) -> set[str] | None:
    """Job ids (``ID_INDEX`` for array tasks, one per line with ``--array``) squeue lists for ``array_id``."""
    import subprocess

    try:
        done = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={array_id}", "--format=%i"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        # squeue refuses an id that left the controller's memory: nothing of it is pending or running
        return set() if "invalid job id" in done.stderr.lower() else None
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}
