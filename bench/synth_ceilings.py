"""Per-modality ceilings of the synthetic benchmarks (``synth``, ``synth-mosi``).

Three views of how much each modality can tell about the label, all fitted on train and reported
on test:

* **oracle** — least squares from the unimodal truths (``regression_labels_T/A/V``) alone, and from
  all three plus the sarcasm interaction ``s_T * S``: the best any model could do per modality.
* **learned** — a small torch model per modality and an end-to-end fusion model, trained for a few
  epochs with L1 loss, the epoch selected on valid MAE: text = bidirectional GRU over the ``text``
  rows (packed by the attention mask); audio and vision = two 1D convolutions with masked max and
  mean pooling over the valid frames (audio after per-sample mean removal, i.e. speaker
  normalisation); fusion = the three encoders and an MLP.
* **time-mean probe** — ridge regression (penalty selected on valid) on each modality's features
  averaged over its valid positions: what a model that ignores order and frame-level co-occurrence gets.

With the learned models, every registered corruption is also applied to the test split, one modality
at a time (``--severity``), to show what each one costs the unimodal and the fusion models.

Metrics (MMSA conventions): MAE and Pearson Corr on the raw predictions; Non0 Acc-2 = sign
agreement on the samples whose label is not 0 (a prediction of exactly 0 counts as negative).

Usage:
    python bench/synth_ceilings.py                      # synth: oracle + learned; synth-mosi: oracle
    python bench/synth_ceilings.py --learned-mosi       # also train on synth-mosi (~7 min, 2 threads)
    python bench/synth_ceilings.py --out docs/synth.md  # replace the table between the markers
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustmsa.datasets.split import Dataset, Split
from robustmsa.datasets.synth import GENERATOR_VERSION, generate, sarcasm_mask

MARK_START, MARK_END = "<!-- ceilings:start -->", "<!-- ceilings:end -->"
MODALITIES = ("text", "audio", "vision")
SHORT = {"text": "T", "audio": "A", "vision": "V"}
Row = tuple[str, str, dict[str, float]]  # (view, input, metrics)


# ------------------------------------------------------------------------------------------ metrics
def metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE, Corr and Non0 Acc-2 of ``pred`` against ``truth``."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    nonzero = truth != 0
    return {
        "MAE": float(np.mean(np.abs(pred - truth))),
        "Corr": float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 else float("nan"),
        "Non0 Acc-2": float(np.mean((pred[nonzero] > 0) == (truth[nonzero] > 0))),
    }


# ------------------------------------------------------------------------------------------ oracle
def _truths(split: Split, profile: str, which: str) -> np.ndarray:
    s_t, s_a, s_v = (split.extras[f"regression_labels_{m}"].astype(np.float64) for m in "TAV")
    columns = {"T": [s_t], "A": [s_a], "V": [s_v],
               "T+A+V (+ sarcasm)": [s_t, s_a, s_v, s_t * sarcasm_mask(s_t, s_v, profile)]}[which]
    return np.column_stack([np.ones_like(s_t), *columns])


def oracle_rows(data: Dataset) -> list[Row]:
    rows = []
    for which in ("T", "A", "V", "T+A+V (+ sarcasm)"):
        beta, *_ = np.linalg.lstsq(_truths(data.train, data.spec.name, which), data.train.regression_labels,
                                   rcond=None)
        pred = _truths(data.test, data.spec.name, which) @ beta
        rows.append(("oracle (least squares on truths)", which, metrics(pred, data.test.regression_labels)))
    return rows


# ------------------------------------------------------------------------------------------ time-mean probe
def _time_mean(split: Split, modality: str) -> np.ndarray:
    valid = split.valid_mask(modality).astype(np.float32)
    features = getattr(split, modality)
    return np.matmul(valid[:, None, :], features)[:, 0] / valid.sum(1, keepdims=True)


def probe_rows(data: Dataset, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)) -> list[Row]:
    """Ridge on standardised time-mean features, ``alpha`` selected on valid MAE."""
    rows = []
    y = data.train.regression_labels.astype(np.float64)
    for modality in MODALITIES:
        x_train, x_valid, x_test = (_time_mean(s, modality).astype(np.float64) for s in data)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_valid, x_test = ((x - mean) / std for x in (x_train, x_valid, x_test))
        gram, moment = x_train.T @ x_train, x_train.T @ (y - y.mean())
        betas = [np.linalg.solve(gram + alpha * np.eye(len(gram)), moment) for alpha in alphas]
        beta = min(betas, key=lambda b: metrics(x_valid @ b + y.mean(), data.valid.regression_labels)["MAE"])
        rows.append(("time-mean ridge probe", SHORT[modality], metrics(x_test @ beta + y.mean(),
                                                                        data.test.regression_labels)))
    return rows


# ------------------------------------------------------------------------------------------ learned
class TextEncoder(nn.Module):
    """Linear projection, then a bidirectional GRU over the valid rows; both final states."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden))
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.proj(x), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, state = self.gru(packed)
        return torch.cat([state[0], state[1]], dim=-1)


class FrameEncoder(nn.Module):
    """Optional per-sample mean removal, two 1D convolutions over frames, masked max and mean pooling."""

    def __init__(self, dim: int, hidden: int, kernel: int, normalize: bool) -> None:
        super().__init__()
        self.normalize = normalize
        self.conv = nn.Sequential(
            nn.Conv1d(dim, hidden, kernel, padding=kernel // 2), nn.ReLU(),
            nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2), nn.ReLU(),
        )
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[:, None, :]
        x = x.transpose(1, 2)  # (B, D, L)
        if self.normalize:  # per-sample mean removal (speaker normalisation)
            x = (x - (x * valid).sum(-1, keepdim=True) / lengths[:, None, None].clamp(min=1)) * valid
        h = self.conv(x)  # (B, H, L)
        pooled_max = h.masked_fill(~valid, float("-inf")).amax(-1)
        pooled_max = torch.where(lengths[:, None] > 0, pooled_max, 0.0)  # an absent modality pools to 0
        pooled_mean = (h * valid).sum(-1) / lengths[:, None].clamp(min=1)
        return torch.cat([pooled_max, pooled_mean], dim=-1)


class Regressor(nn.Module):
    """Encoders of the chosen modalities, concatenated, then an MLP head."""

    def __init__(self, modalities: tuple[str, ...], dims: dict[str, int], hidden: int = 64) -> None:
        super().__init__()
        self.modalities = modalities
        encoders = {
            "text": lambda: TextEncoder(dims["text"], hidden),
            "audio": lambda: FrameEncoder(dims["audio"], hidden, kernel=5, normalize=True),
            "vision": lambda: FrameEncoder(dims["vision"], hidden, kernel=3, normalize=False),
        }
        self.encoders = nn.ModuleDict({m: encoders[m]() for m in modalities})
        width = sum(e.out_dim for e in self.encoders.values())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.encoders[m](batch[m], batch[f"{m}_lengths"]) for m in self.modalities]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)


def _tensors(split: Split) -> dict[str, torch.Tensor]:
    out = {"label": torch.from_numpy(np.array(split.regression_labels, dtype=np.float32))}
    for m in MODALITIES:
        out[m] = torch.from_numpy(np.array(getattr(split, m), dtype=np.float32))
        out[f"{m}_lengths"] = torch.from_numpy(np.array(split.lengths(m), dtype=np.int64))
    return out


@torch.no_grad()
def _predict(model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 256) -> np.ndarray:
    model.eval()
    n = len(data["label"])
    return torch.cat([model({k: v[i:i + batch_size] for k, v in data.items()})
                      for i in range(0, n, batch_size)]).numpy()


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4


def train(data: Dataset, modalities: tuple[str, ...], cfg: TrainConfig, seed: int) -> Regressor:
    """Train on train; return the model of the epoch with the best valid MAE."""
    torch.manual_seed(seed)
    train, valid = _tensors(data.train), _tensors(data.valid)
    model = Regressor(modalities, dict(data.spec.dims))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n = len(train["label"])
    best_mae, best_state = float("inf"), None
    for _ in range(cfg.epochs):
        model.train()
        for index in torch.randperm(n, generator=generator).split(cfg.batch_size):
            batch = {k: v[index] for k, v in train.items()}
            loss = nn.functional.l1_loss(model(batch), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        mae = metrics(_predict(model, valid), valid["label"].numpy())["MAE"]
        if mae < best_mae:
            best_mae, best_state = mae, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


def evaluate(models: list[Regressor], split: Split) -> dict[str, float]:
    """Test metrics of each model on ``split``, averaged over the models (training seeds)."""
    data = _tensors(split)
    runs = [metrics(_predict(model, data), split.regression_labels) for model in models]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def learned_models(data: Dataset, cfg: TrainConfig, seeds: list[int]) -> dict[str, list[Regressor]]:
    """One model per training seed for each of T, A, V and their fusion (keys ``text``, ..., ``fusion``)."""
    return {("fusion" if len(modalities) > 1 else modalities[0]): [train(data, modalities, cfg, s)
                                                                    for s in seeds]
            for modalities in (("text",), ("audio",), ("vision",), MODALITIES)}


def learned_rows(data: Dataset, models: dict[str, list[Regressor]]) -> list[Row]:
    view = f"learned (mean of {len(models['fusion'])} seeds)"
    return [(view, SHORT[m], evaluate(models[m], data.test)) for m in MODALITIES] + [
        (view, "T+A+V (fusion)", evaluate(models["fusion"], data.test))]


def corruption_table(data: Dataset, models: dict[str, list[Regressor]], severity: float, seed: int) -> str:
    """Test metrics of the learned models under every registered corruption, one modality at a time."""
    from robustmsa.corruptions import create_corruption, get_corruption, list_corruptions

    def cells(split: Split, modality: str | None) -> str:
        fusion = evaluate(models["fusion"], split)
        if modality:
            single = f"{evaluate(models[modality], split)['Corr']:.3f}"
        else:  # clean: all three unimodal models
            single = " / ".join(f"{SHORT[m]} {evaluate(models[m], split)['Corr']:.3f}" for m in MODALITIES)
        return f"{single} | {fusion['Corr']:.3f} | {fusion['MAE']:.3f} | {100 * fusion['Non0 Acc-2']:.1f}"

    lines = [(f"Learned models under each corruption at severity {severity} "
              f"(test split, corruption seed {seed}):"), "",
             "| corruption | modality | unimodal model Corr | fusion Corr | fusion MAE | fusion Non0 Acc-2 |",
             "|---|---|---|---|---|---|", f"| none (clean) | — | {cells(data.test, None)} |"]
    for name in list_corruptions():
        for modality in get_corruption(name).supported:
            corrupted = create_corruption(name, severity, modalities=modality)(data.test, seed)
            lines.append(f"| {name} | {modality} | {cells(corrupted, modality)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ report
def table(profile: str, rows: list[Row]) -> str:
    lines = [f"#### `{profile}`", "", "| view | input | MAE | Corr | Non0 Acc-2 |", "|---|---|---|---|---|"]
    for view, which, m in rows:
        lines.append(f"| {view} | {which} | {m['MAE']:.3f} | {m['Corr']:.3f} | {100 * m['Non0 Acc-2']:.1f} |")
    return "\n".join(lines)


def write_report(path: Path, body: str) -> None:
    """Replace the text between the ceilings markers of ``path``; without markers, append a marked block."""
    block = f"{MARK_START}\n{body}\n{MARK_END}"
    text = path.read_text() if path.exists() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=["synth", "synth-mosi"])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (learned part)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--learned-mosi", action="store_true",
                        help="also train the learned models on synth-mosi")
    parser.add_argument("--severity", type=float, default=0.5,
                        help="severity of the corruption check (learned part)")
    parser.add_argument("--out", type=Path, help="Markdown file whose ceilings block is replaced")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal floats slow late epochs on CPU several-fold

    cfg = TrainConfig(epochs=args.epochs)
    sections = []
    for profile in args.profiles:
        started = time.perf_counter()
        data = generate(profile, seed=args.data_seed)
        generated = time.perf_counter() - started
        rows = oracle_rows(data)
        learned = profile != "synth-mosi" or args.learned_mosi
        corruptions = ""
        if learned:
            models = learned_models(data, cfg, args.seeds)
            rows += learned_rows(data, models)
            corruptions = "\n\n" + corruption_table(data, models, args.severity, seed=args.data_seed)
        rows += probe_rows(data)
        elapsed = time.perf_counter() - started
        section = table(profile, rows) + corruptions + (
            f"\n\nData seed {args.data_seed}, generator version {GENERATOR_VERSION}; "
            f"generation {generated:.1f} s; "
            + (f"learned: {cfg.epochs} epochs, training seeds {args.seeds}, {args.threads} CPU threads; "
               if learned else "learned part not run (`--learned-mosi`); ")
            + f"total {elapsed:.0f} s.")
        print(section + "\n", flush=True)
        sections.append(section)
    if args.out:
        write_report(args.out, "\n\n".join(sections))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
