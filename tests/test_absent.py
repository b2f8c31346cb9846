"""Absent modalities (valid length 0) for every registered method: finite, trainable, and what modality_missing gives.

Two shapes of "absent" occur: (a) the padded shape with zero features and lengths 0 (what ``modality_missing`` with
``mode="absent"`` produces), and (b) what ``robustmsa data build`` writes for a modality without features: (N, 1, 1)
float32 zeros with lengths 0, so the model is built for ``dims[m] == seq_lens[m] == 1``. The real MOSI text-only
benchmark has audio and vision absent at once. A method not listed in ``TINY`` is covered with its own defaults.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import tiny_synth_dataset
from robustmsa.corruptions import create_corruption
from robustmsa.datasets.split import Dataset, DatasetSpec, Split
from robustmsa.engine import predict, train
from robustmsa.engine.batches import SplitTensors
from robustmsa.engine.reuse import unchanged_modalities
from robustmsa.methods import create_method, list_methods, resolve_config

METHODS = list_methods()
AV = ("audio", "vision")
ABSENT_SETS = [("audio",), ("vision",), AV]

#: Small widths, so that every case takes a fraction of a second.
TINY: dict[str, dict] = {
    "almt": {"token_dim": 16, "token_len": 4, "proj_heads": 2, "proj_dim_head": 8, "proj_mlp_dim": 16,
             "l_enc_heads": 2, "l_enc_dim_head": 8, "l_enc_mlp_dim": 16, "ahl_heads": 2, "ahl_dim_head": 8,
             "fusion_heads": 2, "fusion_dim_head": 8, "fusion_mlp_dim": 16, "AHL_depth": 2, "fusion_layer_depth": 1},
    "lf_dnn": {"hidden_dims": [16, 8, 8], "text_out": 16, "post_fusion_dim": 16},
    "mmim": {"d_prjh": 16},
    "mecam": {"d_prjh": 16, "attn_heads": 2, "attn_dim_head": 8},
    "cmcbep_cl": {"d_prjh": 16, "d_vout": 16, "d_aout": 16, "d_vh": 4, "d_ah": 4, "multi_head": 4, "ff_size": 32,
                  "lead_encoder_heads": 4, "lead_encoder_ff": 8},
    "mlcl": {"d_model": 16, "num_heads": 4, "layers": 1, "ct_depth": 1, "ct_dim_head": 4, "fusion_ff_dim": 32,
             "fusion_layers": 1},
    "lnln": {"token_dim": 16, "token_len": 4, "proj_heads": 2, "proj_dim_head": 8, "proj_mlp_dim": 16, "gen_heads": 2,
             "gen_dim_head": 8, "gen_mlp_dim": 16, "cc_heads": 2, "cc_dim_head": 8, "cc_mlp_dim": 16, "cc_hidden": 8,
             "disc_hidden": 8, "rec_heads": 2, "rec_dim_head": 8, "rec_mlp_dim": 16, "l_enc_heads": 2,
             "l_enc_dim_head": 8, "l_enc_mlp_dim": 16, "ahl_heads": 2, "ahl_dim_head": 4, "fusion_heads": 2,
             "fusion_dim_head": 8, "fusion_mlp_dim": 16, "fusion_layer_depth": 1},
    "tfn": {"hidden_dims": [8, 4, 8], "text_out": 8, "post_fusion_dim": 8},
    "mfn": {"hidden_dims": [16, 8, 16], "memsize": 16, "NN1Config": {"drop": 0.2, "shapes": 8},
            "NN2Config": {"drop": 0.0, "shapes": 8}, "gamma1Config": {"drop": 0.7, "shapes": 8},
            "gamma2Config": {"drop": 0.5, "shapes": 8}, "outConfig": {"drop": 0.0, "shapes": 16}},
    "mult": {"d_model": 8, "heads": 2, "nlevels": 1, "mem_min_layers": 1},
    "misa": {"hidden_size": 16, "fusion_ff_dim": 32},
    "self_mm": {"post_fusion_dim": 16},
    "tfr_net": {"d_model": 12, "heads": 2, "nlevels": 1, "mem_min_layers": 1, "fusion_gru_layers": 1},
}


def tiny(name: str, spec: DatasetSpec) -> dict:
    """``TINY[name]`` without the keys the method's configuration does not have (any more)."""
    known = resolve_config(name, spec)
    return {key: value for key, value in TINY.get(name, {}).items() if key in known}


def make(name: str, spec: DatasetSpec, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_method(name, spec, **{**tiny(name, spec), **overrides})


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return tiny_synth_dataset(n_train=48, n_valid=16, n_test=24)


def built_spec(spec: DatasetSpec, modalities) -> DatasetSpec:
    """``spec`` with ``modalities`` as ``robustmsa data build`` records an absent modality (dim 1, length 1)."""
    return dataclasses.replace(spec, dims={**spec.dims, **{m: 1 for m in modalities}},
                               seq_lens={**spec.seq_lens, **{m: 1 for m in modalities}})


def make_absent(split: Split, modalities, shape: str, samples: np.ndarray | None = None) -> Split:
    """``split`` with ``modalities`` absent: shape ``padded`` (a) keeps the arrays' shape (only ``samples``, default
    all), ``built`` (b) is (N, 1, 1) zeros for every sample; lengths 0 either way."""
    n, changes = len(split), {}
    chosen = np.ones(n, dtype=bool) if samples is None else samples
    for m in modalities:
        lengths = split.lengths(m)
        if shape == "built":
            changes[m] = np.zeros((n, 1, 1), dtype=np.float32)
            changes[f"{m}_lengths"] = np.zeros_like(lengths)
        else:
            features = np.array(getattr(split, m))
            features[chosen] = 0.0
            changes[m] = features
            changes[f"{m}_lengths"] = np.where(chosen, 0, lengths)
    return split.replace(**changes)


def case(dataset: Dataset, modalities, shape: str) -> tuple[DatasetSpec, SplitTensors]:
    spec = built_spec(dataset.spec, modalities) if shape == "built" else dataset.spec
    return spec, SplitTensors.from_split(make_absent(dataset.train, modalities, shape))


def assert_finite_step(model, batch) -> None:
    output = model(batch)
    assert torch.isfinite(output.pred).all()
    total, parts = model.loss(batch, output)
    assert torch.isfinite(total) and np.isfinite(list(parts.values())).all()
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads
    assert not [n for n, g in grads.items() if not torch.isfinite(g).all()]


# ------------------------------------------------------------------ finite in eval and train mode
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape", ["padded", "built"])
@pytest.mark.parametrize("modalities", ABSENT_SETS, ids="+".join)
def test_absent_modalities_give_finite_predictions_losses_and_gradients(dataset, name, shape, modalities, one_thread):
    spec, tensors = case(dataset, modalities, shape)
    batch = tensors.batch(torch.arange(8))
    model = make(name, spec).eval()
    assert_finite_step(model, batch)
    model.zero_grad(set_to_none=True)
    model.train()
    assert_finite_step(model, batch)
    # the method's own training step (MMIM's stage 0, its entropy memory from the second step on, ...)
    optimizers, _ = model.configure_optimizers(epochs=2, steps_per_epoch=8)
    for step in range(3):
        parts = model.training_step(tensors.batch(torch.arange(8 * step, 8 * step + 8)), optimizers)
        assert np.isfinite(list(parts.values())).all(), parts
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(batch).pred).all()


@pytest.mark.parametrize("name", METHODS)
def test_a_batch_mixing_absent_and_present_samples_stays_finite(dataset, name, one_thread):
    samples = np.arange(len(dataset.train)) % 2 == 0
    absent = SplitTensors.from_split(make_absent(dataset.train, AV, "padded", samples))
    batch = absent.batch(torch.arange(8))
    assert (batch.audio_lengths[::2] == 0).all() and (batch.audio_lengths[1::2] > 0).all()
    model = make(name, dataset.spec)
    for mode in (False, True):
        model.zero_grad(set_to_none=True)
        assert_finite_step(model.train(mode), batch)


#: Options that change how a method reads its audio / vision (published and repaired variants).
VARIANTS = [("lf_dnn", {"average": "valid"}), ("mmim", {"add_va": True, "n_layer": 2, "bidirectional": True}),
            ("mecam", {"n_layer": 2, "bidirectional": True, "d_vh": 8}),
            ("cmcbep_cl", {"lead_assignment": "published_swap", "score_bound": "none", "n_layer": 2}),
            ("mlcl", {"pooling": "last_padded"})]


@pytest.mark.parametrize("name, overrides", [v for v in VARIANTS if v[0] in METHODS], ids=lambda v: str(v))
@pytest.mark.parametrize("shape", ["padded", "built"])
def test_absent_modalities_stay_finite_under_each_variant(dataset, name, overrides, shape, one_thread):
    spec, tensors = case(dataset, AV, shape)
    model = make(name, spec, **overrides)
    for mode in (False, True):
        model.zero_grad(set_to_none=True)
        assert_finite_step(model.train(mode), tensors.batch(torch.arange(8)))


# ------------------------------------------------------------------ training on text alone
def text_only_dataset(dataset: Dataset) -> Dataset:
    """Audio and vision absent as ``data build`` writes them, the label a function of the text.

    Every token row of a sample (padding included, as a contextual encoder's outputs are) holds one random vector
    whose first coordinates set the label, so that every method's text path can read it: the [CLS] row, the last
    valid window, or an LSTM state after the padding.
    """
    rng = np.random.default_rng(0)
    splits = {}
    for name, split in dataset.splits.items():
        n, length, dim = split.text.shape
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        labels = np.clip(vectors[:, :4].sum(axis=1), -3.0, 3.0).astype(np.float32)
        text = np.repeat(vectors[:, None, :], length, axis=1)
        splits[name] = make_absent(split.replace(text=text, regression_labels=labels), AV, "built")
    splits["valid"] = splits["train"]  # the selection loss is then the loss on the training samples
    return Dataset(dataclasses.replace(built_spec(dataset.spec, AV), fingerprint="text-only:" + dataset.spec.fingerprint),
                   splits)


@pytest.mark.parametrize("name", METHODS)
def test_a_few_training_epochs_on_text_alone_lower_the_loss(dataset, name, tmp_path, one_thread):
    data = text_only_dataset(dataset)
    overrides = {**tiny(name, data.spec), "batch_size": 16, "early_stop": 100}
    labels = torch.tensor(data.train.regression_labels)
    start = make(name, data.spec, seed=3)  # what train() starts from with seed 3
    before = float(start.criterion(torch.from_numpy(predict(start, data.train)), labels))
    trained = train(name, data, seed=3, epochs=16, overrides=overrides, use_cache=False, device="cpu")
    after = float(trained.model.criterion(torch.from_numpy(predict(trained.model, data.train)), labels))
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["valid_loss"]) for h in trained.history)
    assert after < 0.98 * before, (before, after, trained.history)


# ------------------------------------------------------------------ modality_missing at severity 1 = absent
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("modality", AV)
def test_modality_missing_at_severity_one_predicts_as_the_absent_modality(dataset, name, modality, one_thread):
    model = make(name, dataset.spec).eval()
    clean = dataset.test
    missing = create_corruption("modality_missing", 1.0, modalities=[modality], mode="absent")(clean, 5)
    absent = make_absent(clean, [modality], "padded")
    assert (missing.lengths(modality) == 0).all()
    expected = predict(model, absent, batch_size=8)
    np.testing.assert_array_equal(predict(model, missing, batch_size=8), expected)
    if model.unimodal_encoders:  # the engine's reuse: the untouched modalities' clean encodings
        _, encodings = predict(model, clean, batch_size=8, keep_encodings=True)
        untouched = unchanged_modalities(clean, missing)
        assert modality not in untouched and untouched
        staged = predict(model, missing, batch_size=8, reuse=encodings, reuse_modalities=untouched)
        np.testing.assert_array_equal(staged, expected)


# ------------------------------------------------------------------ MMIM's entropy (MMIM, MECAM)
@pytest.mark.parametrize("name", [m for m in ("mmim", "mecam") if m in METHODS])
def test_the_entropy_leaves_out_samples_whose_modality_is_absent(dataset, name, one_thread):
    samples = np.arange(len(dataset.train)) % 3 == 0
    mixed = SplitTensors.from_split(make_absent(dataset.train, ["vision"], "padded", samples)).batch(torch.arange(24))
    present = torch.nonzero(mixed.vision_lengths > 0).flatten()
    kept = SplitTensors.from_split(dataset.train).batch(present)
    model = make(name, dataset.spec).eval()
    with torch.no_grad():
        model.entropy_memory.push(model.compute(mixed, labels=mixed.labels).projections)
        with_absent = model.compute(mixed, labels=mixed.labels)
        without = model.compute(kept, labels=kept.labels)
        both_absent = SplitTensors.from_split(make_absent(dataset.train, AV, "built")).batch(torch.arange(24))
        model_built = make(name, built_spec(dataset.spec, AV)).eval()
        model_built.entropy_memory.push(model_built.compute(both_absent, labels=both_absent.labels).projections)
        nothing = model_built.compute(both_absent, labels=both_absent.labels)
    assert "tv" in with_absent.H_terms
    torch.testing.assert_close(with_absent.H_terms["tv"], without.H_terms["tv"])
    assert nothing.H_terms == {} and float(nothing.H) == 0.0
