"""Shared fixtures: tiny MMSA-format splits and pickles built in memory (no files needed)."""

from __future__ import annotations

import numpy as np
import pytest

from robustmsa.datasets.split import CLS_ID, SEP_ID, Dataset, Split


def make_raw_split(n: int = 40, lt: int = 12, la: int = 30, lv: int = 20, dt: int = 8, da: int = 5, dv: int = 6,
                   seed: int = 0, aligned: bool = False, sims: bool = False) -> dict:
    """A raw MMSA split dict with random features, variable lengths and end padding."""
    rng = np.random.default_rng(seed)
    text_len = rng.integers(3, lt + 1, size=n)
    text_len[0] = lt  # one full row (no padding)
    text_len[1] = 2  # [CLS] [SEP] only
    positions = np.arange(lt)[None, :]
    mask = (positions < text_len[:, None]).astype(np.float64)
    ids = rng.integers(1000, 3000, size=(n, lt)).astype(np.float64)
    ids[:, 0] = CLS_ID
    ids[np.arange(n), text_len - 1] = SEP_ID
    ids *= mask
    text = rng.normal(size=(n, lt, dt)) * mask[..., None]
    raw = {
        "raw_text": np.array([f"sentence {i}" for i in range(n)], dtype=object),
        "id": np.array([f"vid{i // 3}$_${i % 3}" for i in range(n)], dtype=object),
        "text": text,
        "text_bert": np.stack([ids, mask, np.zeros_like(mask)], axis=1),
        "regression_labels": (rng.uniform(-1, 1, size=n) if sims else rng.uniform(-3, 3, size=n)).astype(np.float32),
        "annotations": np.array(["Positive"] * n, dtype=object),
    }
    if aligned:
        raw["audio"] = rng.normal(size=(n, lt, da)) * mask[..., None]
        raw["vision"] = rng.normal(size=(n, lt, dv)) * mask[..., None]
    else:
        a_len = rng.integers(1, la + 1, size=n)
        v_len = rng.integers(1, lv + 1, size=n)
        a_len[0], v_len[0] = la, lv
        raw["audio"] = rng.normal(size=(n, la, da)) * (np.arange(la)[None, :] < a_len[:, None])[..., None]
        raw["vision"] = rng.normal(size=(n, lv, dv)) * (np.arange(lv)[None, :] < v_len[:, None])[..., None]
        raw["audio_lengths"] = a_len
        raw["vision_lengths"] = v_len
    return raw


def make_raw_dataset(**kwargs) -> dict:
    seed = kwargs.pop("seed", 0)
    return {name: make_raw_split(seed=seed + i, **kwargs) for i, name in enumerate(("train", "valid", "test"))}


def make_split(name: str = "test", **kwargs) -> Split:
    from robustmsa.datasets.validate import splits_from_mmsa_dict

    raw = make_raw_dataset(**kwargs)
    splits, _ = splits_from_mmsa_dict(raw, source="<test>", label_range=(-3, 3))
    return splits[name]


def make_dataset(**kwargs) -> Dataset:
    from robustmsa.datasets.io import _spec
    from robustmsa.datasets.validate import splits_from_mmsa_dict

    splits, report = splits_from_mmsa_dict(make_raw_dataset(**kwargs), source="<test>", label_range=(-3, 3))
    return Dataset(_spec("tiny", "mosi", splits, "test:0", "<test>"), splits, report)


@pytest.fixture
def split() -> Split:
    return make_split(n=60)


@pytest.fixture
def big_split() -> Split:
    return make_split(n=400, lt=30, la=60, lv=50)


# ------------------------------------------------------------------ shared by the method tests
BATCH_FIELDS = ("text", "text_ids", "text_mask", "text_segments", "audio", "vision", "audio_lengths",
                "vision_lengths", "labels", "index")


def tiny_synth_dataset(n_train: int = 96, n_valid: int = 32, n_test: int = 32) -> Dataset:
    """The embedded synth benchmark cut to a few samples per split (training takes well under a second)."""
    from robustmsa.datasets import load

    full = load("synth")
    return Dataset(full.spec, {"train": full.train.select(slice(0, n_train)),
                               "valid": full.valid.select(slice(0, n_valid)),
                               "test": full.test.select(slice(0, n_test))})


def batch_of(dataset: Dataset, n: int = 8, split: str = "train"):
    """The first ``n`` samples of ``split`` as a Batch."""
    import torch

    from robustmsa.engine.batches import SplitTensors

    return SplitTensors.from_split(dataset[split]).batch(torch.arange(n))


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny tensors (fastest, immune to a busy second core); restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
