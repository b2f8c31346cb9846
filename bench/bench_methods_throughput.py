"""Train-step throughput (samples/s) of every registered method on MOSI shapes, batch 32, precomputed text.

One step is the method's own ``training_step`` (forward, its losses, backward, its optimiser steps; two stages
for the MMIM family), on random float32 inputs with MOSI's shapes (text 50x768 precomputed features, audio 375x5,
vision 500x20, random valid lengths), ``torch.set_num_threads(2)``. Methods are timed in alternating rounds in
one process (order rotated each round); the table gives the median step time and samples/s.

    python bench/bench_methods_throughput.py [--rounds 5] [--steps 3] [--methods almt,lf_dnn] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings

import torch

from _markdown import write_section
from robustmsa.datasets.registry import registered_spec
from robustmsa.methods import create_method, list_methods
from robustmsa.methods.base import Batch

BATCH = 32


def mosi_batch(seed: int = 0) -> Batch:
    """A random MOSI-shaped batch: text 50x768 features, audio 375x5, vision 500x20, variable lengths."""
    g = torch.Generator().manual_seed(seed)
    text_len = torch.randint(8, 51, (BATCH,), generator=g)
    mask = (torch.arange(50)[None, :] < text_len[:, None]).long()
    audio_len = torch.randint(50, 376, (BATCH,), generator=g)
    vision_len = torch.randint(50, 501, (BATCH,), generator=g)

    def padded(length: int, dim: int, lengths: torch.Tensor) -> torch.Tensor:
        x = torch.randn(BATCH, length, dim, generator=g)
        return x * (torch.arange(length)[None, :] < lengths[:, None])[..., None]

    ids = torch.randint(1000, 30000, (BATCH, 50), generator=g) * mask
    return Batch(text=padded(50, 768, text_len), text_ids=ids, text_mask=mask, text_segments=torch.zeros_like(mask),
                 audio=padded(375, 5, audio_len), vision=padded(500, 20, vision_len), audio_lengths=audio_len,
                 vision_lengths=vision_len, labels=torch.rand(BATCH, generator=g) * 6 - 3, index=torch.arange(BATCH))


def make_step(name: str, batch: Batch):
    """A closure running ``steps`` training steps of method ``name`` on ``batch``."""
    torch.manual_seed(0)
    model = create_method(name, registered_spec("mosi"), text_backbone="features")
    optimizers, schedulers = model.configure_optimizers(epochs=10, steps_per_epoch=10)
    with warnings.catch_warnings():  # step past any lr-0 warm-up epoch; the order warning is irrelevant here
        warnings.simplefilter("ignore")
        for scheduler in schedulers:
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
    model.train()

    def run(steps: int) -> None:
        for _ in range(steps):
            model.training_step(batch, optimizers)

    return run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all registered)")
    parser.add_argument("--write", help="update the methods_throughput section of this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = args.methods.split(",") if args.methods else list_methods()
    batch = mosi_batch()
    runs = {name: make_step(name, batch) for name in names}
    for run in runs.values():  # warm-up
        run(1)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            runs[name](args.steps)
            times[name].append((time.perf_counter() - start) / args.steps)
    lines = [
        "## Train-step throughput of every method (MOSI shapes, batch 32, precomputed text features)",
        "",
        f"- Command: `python bench/bench_methods_throughput.py {' '.join(argv)}`".rstrip(),
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"torch {torch.__version__}, 2 threads; `THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}`",
        f"- One step = the method's `training_step` (all its losses and optimiser stages); {args.rounds} alternating "
        f"rounds of {args.steps} steps; text 50x768, audio 375x5, vision 500x20, random valid lengths",
        "",
        "| method | parameters (no text encoder) | median s/step | min s/step | samples/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        model = create_method(name, registered_spec("mosi"), text_backbone="features")
        median = statistics.median(times[name])
        lines.append(f"| {name} | {model.count_parameters():,} | {median:.3f} | {min(times[name]):.3f} "
                     f"| {BATCH / median:.1f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        from pathlib import Path

        write_section(Path(args.write), section, name="methods_throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
