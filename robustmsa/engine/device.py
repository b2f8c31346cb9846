"""Device choice, precision context and seeding: the only places the engine touches global torch state."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

__all__ = ["resolve_device", "autocast", "seed_everything"]


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to ``torch.device`` (clear error if absent)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    return chosen


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (results stay float32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python (MMSA's ``setup_seed``) and ask for deterministic kernels (cudnn benchmark off).

    robustmsa's own randomness (batch order, noise, corruptions) comes from explicit generators; the global
    RNGs are seeded for code inside methods that may draw from them (torch's drives initialisation and dropout).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
