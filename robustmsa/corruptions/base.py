"""The corruption contract, random streams, the registry and composition.

A corruption is a small object ``Name(severity, modalities=None, seeding="independent")`` applied
as ``corruption(split, seed) -> Split``. It never mutates its input (splits are read-only), keeps
shapes, dtypes and padding, returns the input arrays untouched at severity 0, and appends a record
of what it did (parameters and realised rates per modality) to ``split.corruptions``.

Randomness: each (seed, corruption name, modality, split name) gets its own stream from ``numpy.random.SeedSequence``.
Severity is deliberately *not* part of the stream key: the same uniform draws serve every level, so
masks are nested across severities (a token dropped at 0.3 is also dropped at 0.5) and degradation
curves are not blurred by mask resampling, as in LNLN's protocol. ``seeding="lnln"`` instead
reproduces LNLN's ``generate_m`` draws exactly (one legacy ``RandomState(seed)`` re-created per
modality, so the modalities share one stream).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar, Iterable, Literal, NamedTuple, Sequence

import numpy as np

from ..datasets.split import MODALITIES, Split
from ..registry import Registry

__all__ = [
    "Corruption", "Compose", "Seeding", "CORRUPTIONS", "register_corruption", "get_corruption",
    "list_corruptions", "create_corruption", "modality_stream", "Realised",
]

Seeding = Literal["independent", "lnln"]
SEEDINGS: tuple[str, ...] = ("independent", "lnln")
Realised = dict[str, Any]  # {"rate": float, "affected": int, "total": int, "unit": str, ...}


def modality_stream(seed: int, name: str, modality: str, split: str = "") -> np.random.Generator:
    """The independent stream of one corruption on one modality of one split (stable across runs and Pythons)."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(modality.encode()), zlib.crc32(split.encode())]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


class _SeedKey(NamedTuple):
    """What a corruption's streams are derived from besides its name and the modality."""

    seed: int
    split: str


def _check_severity(severity: Any) -> float:
    try:
        value = float(severity)
    except (TypeError, ValueError):
        raise ValueError(f"severity must be a number in [0, 1], got {severity!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"severity must be in [0, 1], got {severity!r}")
    return value


def realised(affected: int, total: int, unit: str, **extra: Any) -> Realised:
    """A realised-statistics entry: fraction ``affected/total`` of ``unit`` (0 when total is 0)."""
    return {"rate": (affected / total) if total else 0.0, "affected": int(affected), "total": int(total),
            "unit": unit, **extra}


class Corruption:
    """Base class: validates parameters, derives streams, applies per modality, records.

    Subclasses set ``name``, ``supported``, ``default_modalities`` and ``severity_means`` (one line:
    what severity 0 and 1 mean), and implement :meth:`_apply` for one modality. Extra parameters
    are keyword arguments of ``__init__`` stored as public attributes and listed in ``param_names``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    supported: ClassVar[tuple[str, ...]] = MODALITIES
    default_modalities: ClassVar[tuple[str, ...]] = MODALITIES
    single_modality: ClassVar[bool] = False
    lnln_capable: ClassVar[bool] = False
    severity_means: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, severity: float, modalities: str | Sequence[str] | None = None,
                 seeding: Seeding = "independent") -> None:
        self.severity = _check_severity(severity)
        self.modalities = self._check_modalities(modalities)
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding must be one of {SEEDINGS}, got {seeding!r}")
        if seeding == "lnln" and not self.lnln_capable:
            capable = ", ".join(n for n in CORRUPTIONS.names() if CORRUPTIONS.get(n).lnln_capable)
            raise ValueError(f"seeding='lnln' reproduces LNLN's generate_m and applies only to {capable}; "
                             f"{self.name} has no LNLN counterpart")
        self.seeding: Seeding = seeding

    def _check_modalities(self, modalities: str | Sequence[str] | None) -> tuple[str, ...]:
        if modalities is None:
            if self.single_modality:
                raise ValueError(f"{self.name} needs exactly one modality (one of {', '.join(self.supported)}); "
                                 f"pass modalities=... (--modality)")
            return self.default_modalities
        chosen = (modalities,) if isinstance(modalities, str) else tuple(modalities)
        unknown = [m for m in chosen if m not in self.supported]
        if unknown or not chosen:
            raise ValueError(f"{self.name} applies to {', '.join(self.supported)}; got modalities {list(chosen)}")
        if self.single_modality and len(chosen) != 1:
            raise ValueError(f"{self.name} needs exactly one modality, got {list(chosen)}")
        return tuple(m for m in MODALITIES if m in chosen)  # canonical order

    # ------------------------------------------------------------ applying
    def __call__(self, split: Split, seed: int) -> Split:
        """Apply to ``split`` with random streams derived from ``seed``; returns a new split."""
        if not isinstance(split, Split):
            raise TypeError(f"{self.name} expects a robustmsa Split, got {type(split).__name__}")
        changes: dict[str, Any] = {}
        stats: dict[str, Realised] = {}
        current = split
        for modality in self.modalities:
            if self.severity == 0.0:
                stats[modality] = realised(0, int(self._units(split, modality)), self._unit(modality))
                continue
            updates, stats[modality] = self._apply(current, modality, _SeedKey(seed, split.name))
            changes.update(updates)
            current = current.replace(**updates)
        record = {"name": self.name, "version": self.version, "severity": self.severity,
                  "modalities": list(self.modalities), "seeding": self.seeding, "seed": int(seed),
                  "params": self.params(), "realised": stats}
        return split.replace(**changes, corruptions=(*split.corruptions, record))

    def _apply(self, split: Split, modality: str, key: _SeedKey) -> tuple[dict[str, Any], Realised]:
        """Corrupt one modality of ``split``; returns the changed arrays and the realised statistics."""
        raise NotImplementedError

    def _unit(self, modality: str) -> str:
        return "tokens" if modality == "text" else "frames"

    def _units(self, split: Split, modality: str) -> int:
        """How many units the realised rate of ``modality`` is counted over."""
        if modality == "text":
            return int(np.maximum(split.text_lengths - 2, 0).sum())
        return int(split.lengths(modality).sum())

    def stream(self, key: "_SeedKey", modality: str) -> np.random.Generator:
        """This corruption's own stream for ``modality`` (see :func:`modality_stream`)."""
        return modality_stream(key.seed, self.name, modality, key.split)

    def uniform_source(self, key: "_SeedKey", modality: str) -> np.random.Generator | np.random.RandomState:
        """Where U[0,1) draws for ``modality`` come from (``.random(shape)``; consecutive calls continue the stream).

        Independent seeding: this corruption's own stream. LNLN seeding: a fresh legacy
        ``RandomState(seed)`` for every modality, i.e. LNLN's ``np.random.seed(seed); np.random.uniform``.
        """
        if self.seeding == "lnln":
            return np.random.RandomState(key.seed)
        return self.stream(key, modality)

    def uniform(self, key: "_SeedKey", modality: str, shape: tuple[int, ...]) -> np.ndarray:
        """U[0,1) draws of ``shape`` for ``modality`` from :meth:`uniform_source`."""
        return self.uniform_source(key, modality).random(shape)

    # ------------------------------------------------------------ describing
    def params(self) -> dict[str, Any]:
        """The corruption's own parameters (severity and modalities excluded)."""
        return {name: getattr(self, name) for name in self.param_names}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        seeding = "" if self.seeding == "independent" else f", seeding={self.seeding!r}"
        return f"{type(self).__name__}(severity={self.severity:g}, modalities={self.modalities!r}{extra}{seeding})"

    def __reduce__(self):  # picklable for DataLoader workers
        return (_rebuild, (self.name, self.severity, self.modalities, self.seeding, self.params()))


def _rebuild(name: str, severity: float, modalities, seeding, params):
    return CORRUPTIONS.get(name)(severity, modalities=modalities, seeding=seeding, **params)


class Compose:
    """Apply corruptions one after another (``word_drop+frame_drop``); each keeps its own streams."""

    def __init__(self, corruptions: Iterable[Corruption]) -> None:
        self.corruptions = tuple(corruptions)
        if not self.corruptions:
            raise ValueError("Compose needs at least one corruption")
        for item in self.corruptions:
            if not isinstance(item, (Corruption, Compose)):
                raise TypeError(f"Compose takes corruptions, got {type(item).__name__}")
        self.name = "+".join(c.name for c in self.corruptions)

    def __call__(self, split: Split, seed: int) -> Split:
        seen: dict[str, int] = {}
        for item in self.corruptions:
            # A repeated corruption gets a shifted seed so that it does not replay the same draws.
            repeat = seen.get(item.name, 0)
            seen[item.name] = repeat + 1
            split = item(split, seed + 7919 * repeat)
        return split

    @property
    def severity(self) -> float:
        return max(c.severity for c in self.corruptions)

    def __repr__(self) -> str:
        return f"Compose({list(self.corruptions)!r})"


CORRUPTIONS: Registry[type[Corruption]] = Registry("corruption")


def register_corruption(cls: type[Corruption]) -> type[Corruption]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return CORRUPTIONS.add(cls.name, cls)


def get_corruption(name: str) -> type[Corruption]:
    """The corruption class registered as ``name``."""
    return CORRUPTIONS.get(name)


def list_corruptions(pattern: str | None = None) -> list[str]:
    """Registered corruption names (natural order), optionally filtered by an fnmatch pattern."""
    return CORRUPTIONS.names(pattern)


def create_corruption(spec: str, severity: float, *, modalities: str | Sequence[str] | None = None,
                      seeding: Seeding = "independent", **params: Any) -> Corruption | Compose:
    """Build a corruption from its CLI spelling: a name, or names joined by ``+`` (composed in order).

    ``modalities`` narrows each part to the modalities it supports; a part left with none is an error.
    ``params`` go to every part that has a parameter of that name (unknown names are an error).
    """
    names = [part.strip() for part in spec.split("+") if part.strip()]
    if not names:
        raise ValueError(f"empty corruption spec {spec!r}")
    classes = [get_corruption(n) for n in names]
    known = {p for cls in classes for p in cls.param_names}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {spec}; known: {sorted(known) or 'none'}")
    wanted = None if modalities is None else ((modalities,) if isinstance(modalities, str) else tuple(modalities))
    built = []
    for cls in classes:
        mods = wanted
        if wanted is not None and len(classes) > 1:
            mods = tuple(m for m in wanted if m in cls.supported)
            if not mods:
                raise ValueError(f"{cls.name} applies to {', '.join(cls.supported)}; none of {list(wanted)}")
        own = {k: v for k, v in params.items() if k in cls.param_names}
        built.append(cls(severity, modalities=mods, seeding=seeding, **own))
    return built[0] if len(built) == 1 else Compose(built)
