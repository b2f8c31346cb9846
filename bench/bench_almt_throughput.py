"""Train-step throughput of ALMT (all but BERT) on MOSI shapes: ours vs the reference implementation.

One train step = forward, MSE loss, backward and an AdamW step (lr 1e-4, weight decay 1e-4), batch 64, with
``torch.set_num_threads(2)``; inputs are random float32 tensors of MOSI's shapes: text 50x768 (precomputed
features, what BERT would hand to ``proj_l``), audio 375x5, vision 500x20. Contenders, timed in one process
in alternating rounds (order rotated each round):

* ``reference``: ``models/almt.py:ALMT`` of Haoyu-ha/ALMT (commit da94610), imported from the local checkout
  given by ``--reference PATH`` (e.g. ``git -C /work/.mirror/Haoyu-ha+ALMT/repo worktree add /tmp/almt_ref
  da94610``, or a ``git archive`` export; needs ``einops``). Its ``models.bert`` module is replaced, before
  import, by an identity on the given features (no transformers, no BERT weights: only the non-BERT part
  runs), and it is stepped as its ``train.py`` does (``loss.backward(); optimizer.step();
  optimizer.zero_grad()``). Nothing of it is vendored here;
* ``ours``: ``robustmsa.methods.almt.ALMT`` (``features`` backbone) with the reference's weights loaded by
  ``load_reference_state_dict``, stepped by ``Method.training_step``;
* ``ours (no key-space attention)``: the same with ``PreNormAttention.key_space = False`` (SDPA, query
  trimming and the folded key/value LayerNorms only), without a target, to show where the gain comes from.

Before timing, the same seed is checked to give both implementations the same initial weights and the
forward outputs on the bench batch are asserted equal (atol 1e-4). Target: ours >= 1.3x the reference's
throughput (ratio of median step times). ``THP_MEM_ALLOC_ENABLE`` is read by torch at start-up for the whole
process, so it is the same for every contender; the section records its value.

    python bench/bench_almt_throughput.py --reference /tmp/almt_ref [--rounds 5] [--steps 2] \
        [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import write_section  # noqa: E402

from robustmsa.datasets.split import DatasetSpec  # noqa: E402
from robustmsa.methods.almt import ALMT, load_reference_state_dict, reference_key_map  # noqa: E402
from robustmsa.methods.base import Batch, resolve_config  # noqa: E402
from robustmsa.methods.layers import PreNormAttention  # noqa: E402

BATCH, THREADS, SEED = 64, 2, 7
SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}
TARGET = 1.3
NAME = "almt_throughput"
REFERENCE, OURS, OURS_PLAIN = "reference (Haoyu-ha/ALMT@da94610)", "ours", "ours (no key-space attention)"


# ---------------------------------------------------------------- models
def import_reference(path: Path) -> types.ModuleType:
    """The reference's ``models.almt`` from a local checkout, with ``models.bert`` replaced by an identity."""
    if not (path / "models" / "almt.py").is_file():
        sys.exit(f"--reference {path}: no models/almt.py there; export Haoyu-ha/ALMT@da94610 first, e.g. "
                 f"`git -C /work/.mirror/Haoyu-ha+ALMT/repo worktree add {path} da94610`")

    class IdentityText(nn.Module):
        """Stands in for BertTextEncoder: returns the precomputed features it is given."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            return text

    stub = types.ModuleType("models.bert")
    stub.BertTextEncoder = IdentityText
    sys.path.insert(0, str(path))
    sys.modules["models.bert"] = stub
    import models.almt as reference  # noqa: PLC0415  (the checkout's package)

    return reference


def reference_args() -> SimpleNamespace:
    """configs/mosi.yaml's ``model`` section (BERT name unused)."""
    model = dict(bert_pretrained=None, l_input_dim=768, a_input_dim=5, v_input_dim=20, l_proj_dst_dim=128,
                 a_proj_dst_dim=128, v_proj_dst_dim=128, token_len=8, token_dim=128, l_input_length=50,
                 a_input_length=375, v_input_length=500, proj_input_dim=128, proj_depth=1, proj_heads=8,
                 proj_mlp_dim=128, token_length=8, l_enc_heads=8, l_enc_mlp_dim=128, AHL_depth=3, ahl_heads=8,
                 ahl_dim_head=16, ahl_droup=0.0, fusion_heads=8, fusion_mlp_dim=128, fusion_layer_depth=2)
    return SimpleNamespace(model=SimpleNamespace(**model))


def mosi_spec() -> DatasetSpec:
    dims = {m: d for m, (_, d) in SHAPES.items()}
    lens = {m: n for m, (n, _) in SHAPES.items()}
    return DatasetSpec(name="mosi", label_family="mosi", label_range=(-3.0, 3.0), dims=dims, seq_lens=lens,
                       aligned=False, fingerprint="bench:mosi-shapes", source="<bench>")


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(BATCH, n, d, generator=g) for m, (n, d) in SHAPES.items()}
    inputs["labels"] = torch.empty(BATCH).uniform_(-3, 3, generator=g)
    return inputs


def make_batch(x: dict[str, torch.Tensor]) -> Batch:
    ids = torch.zeros(BATCH, SHAPES["text"][0], dtype=torch.long)
    return Batch(text=x["text"], text_ids=ids, text_mask=torch.ones_like(ids), text_segments=ids,
                 audio=x["audio"], vision=x["vision"], audio_lengths=torch.full((BATCH,), SHAPES["audio"][0]),
                 vision_lengths=torch.full((BATCH,), SHAPES["vision"][0]), labels=x["labels"],
                 index=torch.arange(BATCH))


def build(reference_module: types.ModuleType) -> dict[str, nn.Module]:
    """The three models, with the same (reference-initialised) weights."""
    spec = mosi_spec()
    config = resolve_config("almt", spec)
    torch.manual_seed(SEED)
    reference = reference_module.ALMT(reference_args())
    torch.manual_seed(SEED)
    ours = ALMT(spec, config)
    ours_init = ours.state_dict()
    same_init = all(torch.equal(value, ours_init[reference_key_map(key)])
                    for key, value in reference.state_dict().items())
    assert same_init, "the same seed should give both implementations the same initial weights"
    plain = ALMT(spec, config)
    for model in (ours, plain):
        load_reference_state_dict(model, reference.state_dict())
    for module in plain.modules():
        if isinstance(module, PreNormAttention):
            module.key_space = False
    return {REFERENCE: reference, OURS: ours, OURS_PLAIN: plain}


def steppers(models: dict[str, nn.Module], x: dict[str, torch.Tensor]) -> dict[str, Callable[[], None]]:
    """One train step per call for each contender, each with its own AdamW."""
    batch = make_batch(x)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-4)
                  for name, m in models.items()}
    reference, loss_fn = models[REFERENCE], nn.MSELoss()

    def reference_step() -> None:  # train.py
        output = reference(x["vision"], x["audio"], x["text"])
        loss = loss_fn(output, x["labels"].view(-1, 1))
        loss.backward()
        optimizers[REFERENCE].step()
        optimizers[REFERENCE].zero_grad()

    calls = {REFERENCE: reference_step}
    for name in (OURS, OURS_PLAIN):
        calls[name] = (lambda n: lambda: models[n].training_step(batch, [optimizers[n]]))(name)
    for model in models.values():
        model.train()
    return calls


def check_outputs(models: dict[str, nn.Module], x: dict[str, torch.Tensor]) -> float:
    """Largest |ours - reference| of the forward outputs on the bench batch (asserted <= 1e-4)."""
    with torch.no_grad():
        want = models[REFERENCE](x["vision"], x["audio"], x["text"]).squeeze(-1)
        worst = 0.0
        for name in (OURS, OURS_PLAIN):
            got = models[name](make_batch(x)).pred
            worst = max(worst, float((got - want).abs().max()))
    assert worst <= 1e-4, f"outputs differ from the reference by {worst}"
    return worst


# ---------------------------------------------------------------- measuring
def time_rounds(calls: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per train step: ``steps`` consecutive steps per contender per round, order rotated."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up step (allocator, AdamW state)
        calls[name]()
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            for _ in range(steps):
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------- reporting
def report(times: dict[str, list[float]], worst: float, rounds: int, steps: int, argv: list[str]) -> str:
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ratio = median[REFERENCE] / median[OURS]
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE")
    lines = [
        "## ALMT train-step throughput (non-BERT part, MOSI shapes)",
        "",
        f"- Command: `{' '.join(['python bench/bench_almt_throughput.py', *argv])}`",
        f"- Date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}; `torch.set_num_threads({THREADS})`; "
        f"`THP_MEM_ALLOC_ENABLE` {'=' + thp if thp is not None else 'unset'} (process-wide: the same for "
        "every contender)",
        f"- Batch {BATCH}: text {_shape('text')} (precomputed features into `proj_l`), "
        f"audio {_shape('audio')}, vision {_shape('vision')}, float32; train step = forward + MSE + backward"
        " + AdamW(1e-4, wd 1e-4); the reference's BERT replaced by an identity",
        f"- {rounds} alternating rounds x {steps} steps in one process (order rotated each round) after one "
        f"warm-up step each; same initial weights (same seed; checked); forward outputs equal (max |diff| "
        f"{worst:.1e})",
        "",
        "| implementation | median s/step | min s/step | samples/s (median) | speed vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in times:
        lines.append(f"| {name} | {median[name]:.3f} | {best[name]:.3f} | {BATCH / median[name]:,.1f} "
                     f"| {median[REFERENCE] / median[name]:.2f}x |")
    lines += [
        "",
        "| target | measured | result |",
        "|---|---|---|",
        f"| ours >= {TARGET}x the reference's train-step throughput | {ratio:.2f}x medians "
        f"({best[REFERENCE] / best[OURS]:.2f}x mins) | {'pass' if ratio >= TARGET else '**FAIL**'} |",
    ]
    return "\n".join(lines) + "\n"


def _shape(modality: str) -> str:
    return "x".join(str(d) for d in SHAPES[modality])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="local checkout of Haoyu-ha/ALMT at da94610 (never downloaded or vendored)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--steps", type=int, default=2, help="steps per contender per round (default 2)")
    parser.add_argument("--write", type=Path, help=f"update the {NAME} section of this Markdown file")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    models = build(import_reference(args.reference.resolve()))
    x = make_inputs()
    worst = check_outputs(models, x)
    times = time_rounds(steppers(models, x), args.rounds, args.steps)
    section = report(times, worst, args.rounds, args.steps, argv)
    print(section)
    if args.write:
        write_section(args.write, section, name=NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
