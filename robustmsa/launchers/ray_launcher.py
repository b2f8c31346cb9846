"""The Ray launcher: each task is a Ray task on an existing Ray cluster; phases run one after the other.

The launcher connects once (``ray.init(address=...)``, skipped when this process is already connected) and
never starts a cluster per job. ``address="auto"`` finds the cluster started on this machine
(``ray start --head``) or named by ``$RAY_ADDRESS``; with no cluster it fails with a message saying how to
start one instead of silently starting a private one. ``address="local"`` starts a private single-machine
cluster on purpose (laptops, tests); ``ray://host:10001`` or ``host:6379`` connect to a remote one.

Each task asks for ``num_gpus=task.gpus`` (fractional for evaluations: two ``0.5`` tasks share a GPU) and
``num_cpus`` cores. ``max_retries`` covers system failures only -- the worker process died (killed, out of
memory, node lost) -- after which Ray runs the task again; exceptions are never retried
(``retry_exceptions=False``, and :func:`~robustmsa.launchers.base.call_task` turns them into outcomes anyway):
the sweep driver re-plans from the records. A task still failing after its retries is ``Outcome(ok=False)``.

CUDA reads ``CUDA_VISIBLE_DEVICES`` once per process, so the launcher keeps worker processes apart: a task
that asks for no GPU runs in workers started with ``CUDA_VISIBLE_DEVICES=""`` (a runtime environment of their
own; Ray itself leaves the variable unset, and a CPU job would pick up any GPU of the node), and a GPU task
gets a fresh worker (``max_calls=1``), so CUDA always sees exactly the GPUs Ray assigned to that task.

Shared storage: ``check_storage(out)`` runs a probe task on every alive node that must write a token under
``out``. ray is imported only when a launcher is created (``pip install robustmsa[ray]``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..stop import StopRequested, stop_requested
from .base import Launcher, LauncherError, Outcome, Phase, Task, call_task, probe_storage

__all__ = ["RayLauncher"]


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise LauncherError("the ray launcher needs ray: pip install 'robustmsa[ray]'") from exc
    return ray


def _ray_task(task: Task) -> Outcome:
    """What one Ray task runs (in a worker): keep CPU tasks off the GPUs, then the task itself."""
    if task.gpus <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    outcome = call_task(task)
    outcome.info.update({"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    try:
        import ray

        outcome.info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001, S110 -- informational only
        pass
    return outcome


def _ray_gpu_task(task: Task) -> Outcome:
    """:func:`_ray_task` for tasks holding GPUs: registered with ``max_calls=1`` (a fresh worker per task)."""
    return _ray_task(task)


def _num_gpus(gpus: float) -> float:
    """Ray takes fractions below one GPU, whole numbers above."""
    return float(gpus) if gpus <= 1 else float(math.ceil(gpus))


class RayLauncher(Launcher):
    """Run tasks on a Ray cluster (see the module docstring).

    Args:
        address: ``"auto"`` (the cluster of this machine or ``$RAY_ADDRESS``), ``"local"`` (start a private
            one, on purpose), or an address (``ray://head:10001``, ``head:6379``).
        train_gpus, eval_gpus: GPUs a training / evaluation task asks for when the sweep does not say (0 when
            the cluster has no GPU or the device is ``cpu``).
        num_cpus: cores per task (Ray also sets the task's ``OMP_NUM_THREADS`` from it).
        max_retries: reruns of a task whose worker died (system failures; exceptions are not retried).
        runtime_env: Ray runtime environment of the tasks (``{"env_vars": {...}}``, ``working_dir`` ...).
        init_kwargs: further arguments of ``ray.init`` (only used when this launcher connects).
        poll_interval: seconds between checks for a stop request while waiting.
        check_resources: refuse tasks needing more GPUs than the cluster has at all (else they would wait
            forever); turn off for autoscaling clusters that add GPU nodes on demand.
    """

    name = "ray"
    train_phase = True

    def __init__(self, address: str | None = "auto", *, train_gpus: float = 1.0, eval_gpus: float = 0.5,
                 num_cpus: float = 1.0, max_retries: int = 3, runtime_env: Mapping[str, Any] | None = None,
                 init_kwargs: Mapping[str, Any] | None = None, poll_interval: float = 1.0,
                 check_resources: bool = True) -> None:
        for label, value in (("train_gpus", train_gpus), ("eval_gpus", eval_gpus)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise LauncherError(f"ray launcher: {label} must be a number >= 0, got {value!r}")
        if not isinstance(num_cpus, (int, float)) or isinstance(num_cpus, bool) or not num_cpus >= 0:
            raise LauncherError(f"ray launcher: num_cpus must be a number >= 0, got {num_cpus!r}")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) or \
                poll_interval <= 0:
            raise LauncherError(f"ray launcher: poll_interval must be a number > 0, got {poll_interval!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise LauncherError(f"ray launcher: max_retries must be a whole number >= 0, got {max_retries!r}")
        for label, value in (("runtime_env", runtime_env), ("init_kwargs", init_kwargs)):
            if value is not None and not isinstance(value, Mapping):
                raise LauncherError(f"ray launcher: {label} must be a mapping, got {value!r}")
        self.address = address
        self.train_gpus = float(train_gpus)
        self.eval_gpus = float(eval_gpus)
        self.num_cpus = float(num_cpus)
        self.max_retries = int(max_retries)
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.init_kwargs = dict(init_kwargs or {})
        self.poll_interval = float(poll_interval)
        self.check_resources = bool(check_resources)
        self._ray_module = _ray()
        self._remote: dict[bool, Any] | None = None

    def describe(self) -> Mapping[str, Any]:
        return {"launcher": self.name, "address": self.address, "train_gpus": self.train_gpus,
                "eval_gpus": self.eval_gpus, "num_cpus": self.num_cpus, "max_retries": self.max_retries,
                "runtime_env": self.runtime_env}

    # -- connection ------------------------------------------------------------------------------------------

    def connect(self):
        """Connect to the cluster once (nothing to do if this process is connected); returns ``ray``."""
        ray = self._ray_module
        if not ray.is_initialized():
            kwargs = dict(self.init_kwargs)
            if self.address == "local":
                kwargs.setdefault("include_dashboard", False)
            try:
                ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                where = "on this machine or in $RAY_ADDRESS" if self.address in (None, "auto") else \
                    f"at {self.address!r}"
                raise LauncherError(
                    f"ray launcher: no running Ray cluster found {where} ({_first_line(exc)}). Start one "
                    f"first with `ray start --head` (and `ray start --address=HEAD:6379` on the other "
                    f"nodes), or pass --launcher-opt address=HOST:PORT; address=local starts a private "
                    f"cluster on this machine only") from exc
            except (ValueError, RuntimeError) as exc:
                raise LauncherError(f"ray launcher: ray.init(address={self.address!r}) failed: "
                                    f"{_first_line(exc)}") from exc
        if self._remote is None:  # max_calls is a property of the function; .options() cannot set it
            self._remote = {False: ray.remote(_ray_task), True: ray.remote(max_calls=1)(_ray_gpu_task)}
        return ray

    def default_gpus(self, phase: str, device: str | None) -> float:
        if device == "cpu":
            return 0.0
        ray = self.connect()
        if ray.cluster_resources().get("GPU", 0) <= 0:
            return 0.0
        return self.train_gpus if phase == "train" else self.eval_gpus

    def check_storage(self, out: Path, *more: Path) -> None:
        """One probe task per alive node must write a token under ``out`` (and ``more``) that this machine reads."""
        ray = self.connect()
        nodes = [node["NodeID"] for node in ray.nodes()
                 if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
        if len(nodes) <= 1:
            probe_storage(self, Path(out), *more)
            return
        for node in nodes:
            probe_storage(_OnNode(self, node), Path(out), *more)

    # -- running ---------------------------------------------------------------------------------------------

    def run(self, phases: Sequence[Phase]) -> list[list[Outcome]]:
        return [self._run_phase(phase) for phase in phases]

    def _options(self, task: Task) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": _num_gpus(task.gpus),
                                   "max_retries": self.max_retries, "retry_exceptions": False,
                                   "name": task.name[:200]}
        runtime_env = dict(self.runtime_env or {})
        if task.gpus <= 0:  # workers of their own that never see a GPU (Ray leaves the variable unset)
            runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), "CUDA_VISIBLE_DEVICES": ""}
        if runtime_env:
            options["runtime_env"] = runtime_env
        return options

    def _check_resources(self, phase: Phase) -> None:
        if not self.check_resources or not phase.tasks:
            return
        ray = self._ray_module
        have = ray.cluster_resources()
        need_gpus = max(_num_gpus(t.gpus) for t in phase.tasks)
        if need_gpus > have.get("GPU", 0):
            raise LauncherError(f"ray launcher: phase {phase.name!r} has tasks asking for {need_gpus:g} "
                                f"GPU(s), but the cluster has {have.get('GPU', 0):g}: they would wait "
                                f"forever. Run on CPU (--device cpu), ask for fewer GPUs, or set "
                                f"check_resources=false for an autoscaling cluster")
        if self.num_cpus > have.get("CPU", 0):
            raise LauncherError(f"ray launcher: tasks ask for num_cpus={self.num_cpus:g}, the cluster has "
                                f"{have.get('CPU', 0):g} CPU(s)")

    def _run_phase(self, phase: Phase, extra: Mapping[str, Any] | None = None) -> list[Outcome]:
        if not phase.tasks:
            return []
        ray = self.connect()
        self._check_resources(phase)
        refs = {}
        for index, task in enumerate(phase.tasks):
            remote = self._remote[task.gpus > 0]  # GPU tasks: a fresh worker, CUDA sees only their GPUs
            ref = remote.options(**self._options(task), **(extra or {})).remote(task)
            refs[ref] = (index, time.perf_counter())
        outcomes: list[Outcome | None] = [None] * len(phase.tasks)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_interval)
                if ready and pending:  # and whatever else has finished meanwhile
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                    ready += more
                for ref in ready:
                    index, started = refs[ref]
                    outcomes[index] = self._collect(ray, ref, phase.tasks[index], started)
                if pending and stop_requested():
                    raise StopRequested(f"SIGTERM while {len(pending)} Ray task(s) of phase {phase.name!r} "
                                        f"were queued or running")
        except BaseException:
            for ref in pending:  # Ctrl-C, SIGTERM or an error here: do not leave work behind on the cluster
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 -- already finished or gone
                    pass
            raise
        return [o if o is not None else Outcome(t, False, error="not run")
                for o, t in zip(outcomes, phase.tasks)]

    def _collect(self, ray, ref, task: Task, started: float) -> Outcome:
        try:
            value = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 -- the worker died too often, the task was cancelled ...
            message = _first_line(exc)
            return Outcome(task, False, seconds=time.perf_counter() - started,
                           error=f"{type(exc).__name__}: {message} (after up to {self.max_retries} retries)",
                           info={"ray": type(exc).__name__})
        if not isinstance(value, Outcome):
            return Outcome(task, False, error=f"task returned {type(value).__name__}, not an Outcome")
        value.task = task
        return value


class _OnNode(Launcher):
    """A view of a :class:`RayLauncher` whose tasks run on one given node (for the per-node storage probe)."""

    name = "ray"

    def __init__(self, launcher: RayLauncher, node_id: str) -> None:
        self.launcher = launcher
        self.node_id = node_id

    def run(self, phases: Sequence[Phase]) -> list[list[Outcome]]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=self.node_id, soft=False)
        return [self.launcher._run_phase(phase, {"scheduling_strategy": strategy}) for phase in phases]


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
