"""Launchers hand a sweep's jobs to an engine: ``local`` (process pool), ``slurm`` (submitit), ``ray``.

:func:`create_launcher` builds one by name from a mapping of options (``--launcher-config FILE`` read by
:func:`load_launcher_options`, then ``--launcher-opt KEY=VALUE``). This module stays import-light: the engine
modules, and submitit or ray, are imported only when their launcher is created or run.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Launcher, LauncherError, Outcome, Phase, Task, call_task

__all__ = [
    "LAUNCHERS",
    "Launcher",
    "LauncherError",
    "Outcome",
    "Phase",
    "Task",
    "call_task",
    "create_launcher",
    "launcher_options",
    "load_launcher_options",
]

#: launcher name -> (module, class); modules are imported when the launcher is created
LAUNCHERS: dict[str, tuple[str, str]] = {
    "local": ("robustmsa.launchers.local", "LocalLauncher"),
    "slurm": ("robustmsa.launchers.slurm", "SlurmLauncher"),
    "ray": ("robustmsa.launchers.ray_launcher", "RayLauncher"),
}


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _launcher_class(name: str) -> type[Launcher]:
    key = str(name).strip().lower()
    if key not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {name!r}{_suggest(key, LAUNCHERS)} "
                            f"(choose from {', '.join(LAUNCHERS)})")
    module, cls = LAUNCHERS[key]
    return getattr(importlib.import_module(module), cls)


def launcher_options(name: str) -> list[str]:
    """The option names the launcher ``name`` accepts (its constructor's parameters)."""
    signature = inspect.signature(_launcher_class(name).__init__)
    return [p.name for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_keys(keys, known: list[str], where: str) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise LauncherError(f"{where}: option names must be strings, got {key!r}")
        if key not in known:
            owners = [name for name in LAUNCHERS if key in launcher_options(name)]
            hint = f"; it is an option of the {' and '.join(owners)} launcher" if owners else \
                _suggest(key, known)
            raise LauncherError(f"{where}: unknown option {key!r}{hint} "
                                f"(options: {', '.join(sorted(known))})")


def create_launcher(name: str, options: Mapping[str, Any] | None = None) -> Launcher:
    """The launcher ``name`` (``local``, ``slurm``, ``ray``) built from ``options`` (constructor arguments).

    Unknown option names and bad values are a :class:`LauncherError` naming the option (with a suggestion for
    a typo); a launcher whose engine is not installed says which extra to install.
    """
    options = dict(options or {})
    key = str(name).strip().lower()
    cls = _launcher_class(key)
    _check_keys(options, launcher_options(key), f"{key} launcher")
    try:
        return cls(**options)
    except LauncherError:
        raise
    except (TypeError, ValueError) as exc:
        raise LauncherError(f"{key} launcher: {exc}") from exc


def load_launcher_options(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """The options in the YAML file ``path`` (top-level keys are launcher options, e.g. ``partition: gpu``).

    Keys are checked against the options of launcher ``name`` if given, else against those of every launcher
    (so one file can be shared); an unknown key is a :class:`LauncherError` with a did-you-mean suggestion.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LauncherError(f"launcher config {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LauncherError(f"launcher config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LauncherError(f"launcher config {path}: expected a mapping of option names to values "
                            f"(e.g. 'partition: gpu'), got {type(data).__name__}")
    if name is not None:
        known = launcher_options(name)
    else:
        known = sorted({option for launcher in LAUNCHERS for option in launcher_options(launcher)})
    _check_keys(data, known, f"launcher config {path}")
    return dict(data)
