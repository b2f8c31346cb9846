"""Launchers hand a sweep's jobs to an execution engine: ``local`` (process pool), ``slurm`` (submitit), ``ray``."""

from .base import Launcher, LauncherError, Outcome, Phase, Task, call_task

__all__ = ["Launcher", "LauncherError", "Outcome", "Phase", "Task", "call_task"]
