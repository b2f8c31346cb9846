"""LNLN: equality with the reference (fixture), parameter counts, gradient reversal, paired batches, engine noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_synth_dataset
from robustmsa.corruptions.functional import word_positions
from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import DatasetSpec
from robustmsa.engine.batches import (PAIRED_FIELDS, SplitTensors, clean_twin, iterate_batches,
                                      iterate_paired_batches)
from robustmsa.engine.noise import TrainNoise
from robustmsa.engine.train import effective_train_noise, train
from robustmsa.methods.base import Batch, ConfigError, create_method, resolve_config
from robustmsa.methods.lnln import LNLN, grad_reverse

FIXTURE = Path(__file__).parent / "data" / "lnln_reference_fixture.npz"
FIXTURE_SEED = 20240926  # tests/data/README.md
# The fixture's tiny configuration: the real architecture at width 16, 4 heads of 8 (AHL: 4 of 4), MLP 16.
TINY = {"token_dim": 16, "proj_heads": 4, "proj_dim_head": 8, "proj_mlp_dim": 16, "gen_heads": 4, "gen_dim_head": 8,
        "gen_mlp_dim": 16, "cc_heads": 4, "cc_dim_head": 8, "cc_mlp_dim": 16, "cc_hidden": 8, "disc_hidden": 8,
        "rec_heads": 4, "rec_dim_head": 8, "rec_mlp_dim": 16, "l_enc_heads": 4, "l_enc_dim_head": 8,
        "l_enc_mlp_dim": 16, "ahl_heads": 4, "ahl_dim_head": 4, "fusion_heads": 4, "fusion_dim_head": 8,
        "fusion_mlp_dim": 16, "fusion_layer_depth": 2}
# Parameters without the text encoder of the reference's models/lnln.py:LNLN with configs/train_*.yaml (its
# BertTextEncoder excluded), counted by building it; the same sums by hand are in docs/methods.md.
REFERENCE_COUNTS = {"mosi": 6_483_012, "mosei": 7_102_404, "sims": 7_112_260}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_spec() -> DatasetSpec:
    modalities = ("text", "audio", "vision")
    return DatasetSpec(name="tiny", label_family="mosi", label_range=(-3.0, 3.0), dims=dict(zip(modalities, (16, 3, 4))),
                       seq_lens=dict(zip(modalities, (6, 7, 5))), aligned=False, fingerprint="test:0", source="<test>")


def plain_batch(text, audio, vision, labels, extra=None) -> Batch:
    b, lt = text.shape[:2]
    ids = torch.zeros(b, lt, dtype=torch.long)
    return Batch(text=text, text_ids=ids, text_mask=torch.ones_like(ids), text_segments=ids, audio=audio, vision=vision,
                 audio_lengths=torch.full((b,), audio.shape[1]), vision_lengths=torch.full((b,), vision.shape[1]),
                 labels=labels, index=torch.arange(b), extra=extra or {})


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def fixture_model(fixture, **overrides) -> LNLN:
    """Our model built like the fixture's reference model: same seed, then the same perturbation."""
    torch.manual_seed(FIXTURE_SEED)
    model = create_method("lnln", tiny_spec(), **{**TINY, **overrides})
    generator = torch.Generator().manual_seed(FIXTURE_SEED + 1)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in fixture["noise_order"]:  # the reference's parameter order
            params[str(key)].add_(0.2 * torch.randn(params[str(key)].shape, generator=generator))
    return model


def fixture_batches(fixture):
    f = {k: torch.from_numpy(v) for k, v in fixture.items() if k.startswith("input/")}
    plain = plain_batch(f["input/text_m"], f["input/audio_m"], f["input/vision_m"], f["input/labels"])
    b, lt = f["input/text"].shape[:2]
    extra = {"clean_text": f["input/text"], "clean_text_ids": torch.zeros(b, lt, dtype=torch.long),
             "clean_audio": f["input/audio"], "clean_vision": f["input/vision"],
             "clean_audio_lengths": plain.audio_lengths, "clean_vision_lengths": plain.vision_lengths,
             "drawn_rate_text": f["input/rate_text"], "missing_rate_text": f["input/rate_text"]}
    return plain, plain_batch(plain.text, plain.audio, plain.vision, plain.labels, extra)


# ------------------------------------------------------------------ the reference
def test_same_seed_gives_the_reference_initialisation(fixture):
    torch.manual_seed(FIXTURE_SEED)
    state = create_method("lnln", tiny_spec(), **TINY).state_dict()
    assert sorted(state) == sorted(str(k) for k in fixture["init/keys"])
    ours = np.array([[float(state[str(k)].double().sum()), float(state[str(k)].double().pow(2).sum())]
                     for k in fixture["init/keys"]])
    np.testing.assert_allclose(ours, fixture["init/sum_sumsq"], rtol=1e-6, atol=1e-6)


def test_outputs_losses_and_gradients_equal_the_reference(fixture):
    """With the published gradient-reversal placement and LNLN's drawn-rate target: the reference, exactly."""
    model = fixture_model(fixture, grl_scope="all", completeness_target="drawn")
    plain, paired = fixture_batches(fixture)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(plain).pred, torch.from_numpy(fixture["output/eval"]), atol=1e-5, rtol=1e-5)
    model.train()
    output = model(paired)
    total, parts = model.loss(paired, output)
    total.backward()
    ours = [float(total.detach()), parts["criterion"], parts["cc"], parts["adv"], parts["rec"]]
    np.testing.assert_allclose(ours, fixture["output/losses"], rtol=1e-5, atol=1e-6)
    grads = {k: p.grad for k, p in model.named_parameters()}
    for key, (g_sum, g_sumsq) in zip(fixture["grad/keys"], fixture["grad/sum_sumsq"]):
        grad = grads[str(key)]
        if grad is None:  # key-space attention: the key LayerNorm's shift has no effect, its true gradient is 0
            assert str(key).endswith("attn.norm_k.bias") and abs(g_sumsq) < 1e-12
            continue
        np.testing.assert_allclose([float(grad.double().sum()), float(grad.double().pow(2).sum())],
                                   [g_sum, g_sumsq], rtol=1e-4, atol=1e-5, err_msg=str(key))


def test_repaired_reversal_changes_only_the_generator_side(fixture):
    """grl_scope=discriminator: same outputs and losses; gradients differ only upstream of the generator."""
    plain, paired = fixture_batches(fixture)
    grads = {}
    for scope in ("all", "discriminator"):
        model = fixture_model(fixture, grl_scope=scope, completeness_target="drawn").train()
        total, _ = model.loss(paired, model(paired))
        total.backward()
        grads[scope] = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    upstream = ("generator.", "h_p", "proj_a.", "proj_v.")  # the generator reads h_p, h_a and h_v
    for key, grad in grads["all"].items():
        if key.startswith(upstream):
            continue
        torch.testing.assert_close(grads["discriminator"][key], grad, atol=1e-6, rtol=1e-5, msg=key)
    assert not torch.allclose(grads["discriminator"]["generator.encoder.layers.0.ff.fc2.weight"],
                              grads["all"]["generator.encoder.layers.0.ff.fc2.weight"])


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_parameter_counts_equal_the_reference(dataset):
    model = create_method("lnln", registered_spec(dataset), text_backbone="features")
    assert model.count_parameters() == REFERENCE_COUNTS[dataset]


def test_dataset_sections_and_config_errors():
    config = {name: resolve_config("lnln", registered_spec(name)) for name in ("mosi", "mosei", "sims")}
    assert [config[n]["fusion_layer_depth"] for n in ("mosi", "mosei", "sims")] == [2, 4, 4]
    assert [config[n]["beta"] for n in ("mosi", "mosei", "sims")] == [0.8, 0.8, 0.6]
    assert all((c["alpha"], c["gamma"], c["sigma"], c["train_noise"]) == (0.9, 0.1, 1.0, "random_missing")
               for c in config.values())
    with pytest.raises(ConfigError, match="grl_scope must be one of"):
        create_method("lnln", tiny_spec(), **TINY, grl_scope="everywhere")
    with pytest.raises(ConfigError, match="ahl_depth"):
        create_method("lnln", tiny_spec(), **TINY, ahl_depth=4)


# ------------------------------------------------------------------ gradient reversal
def test_grad_reverse_is_identity_forward_and_flips_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    upstream = torch.randn(3, 4)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -0.5 * upstream)


@pytest.mark.parametrize("scope", ["discriminator", "all"])
def test_adversarial_gradient_into_the_generator_is_reversed(fixture, scope):
    """d L_adv / d generator flips with the reversal; d L_sp / d generator flips only with grl_scope=all."""
    _, paired = fixture_batches(fixture)
    model = fixture_model(fixture, grl_scope=scope).train()
    generator = [p for p in model.generator.parameters()]

    def generator_grads(alpha: float, part: str) -> list[torch.Tensor]:
        model.config["grl_alpha"] = alpha  # alpha -1 = no reversal
        output = model(paired)
        loss = output.aux_losses["adv"] if part == "adv" else model.criterion(output.pred, paired.labels)
        return torch.autograd.grad(loss, generator, allow_unused=True)

    for reversed_, plain in zip(generator_grads(1.0, "adv"), generator_grads(-1.0, "adv")):
        if plain is not None:
            torch.testing.assert_close(reversed_, -plain)
    assert any(g is not None and g.abs().sum() > 0 for g in generator_grads(1.0, "adv"))
    for reversed_, plain in zip(generator_grads(1.0, "sp"), generator_grads(-1.0, "sp")):
        if plain is not None:
            torch.testing.assert_close(reversed_, plain if scope == "discriminator" else -plain)


# ------------------------------------------------------------------ paired batches
@pytest.fixture(scope="module")
def tiny():
    return tiny_synth_dataset(96, 32, 32)


def _realised_numpy(noisy, clean) -> dict[str, np.ndarray]:
    """Per-sample fraction of eligible positions that are missing in the twin and were not in the clean data."""
    eligible = word_positions(clean.text_bert)
    dropped = (noisy.text_bert[:, 0] != clean.text_bert[:, 0]) | np.any(noisy.text != clean.text, axis=-1)
    out = {"text": (dropped & eligible).sum(1) / np.maximum(eligible.sum(1), 1)}
    for m in ("audio", "vision"):
        valid = clean.valid_mask(m)
        zeroed = np.all(getattr(noisy, m) == 0, axis=-1) & ~np.all(getattr(clean, m) == 0, axis=-1)
        out[m] = (zeroed & valid).sum(1) / np.maximum(valid.sum(1), 1)
    return out


def test_paired_batches_carry_the_clean_twin_and_the_realised_rates(tiny):
    noise = TrainNoise("random_missing", seed=3)
    clean = SplitTensors.from_split(tiny.train)
    epochs = {}
    for epoch in (1, 2):
        noisy, drawn = noise.draw(tiny.train, epoch)
        batches = list(iterate_paired_batches(SplitTensors.from_split(noisy), clean, 40, drawn_rates=drawn))
        assert [len(b) for b in batches] == [40, 40, 16]
        expected = _realised_numpy(noisy, tiny.train)
        for batch in batches:
            index = batch.index.numpy()
            twin = clean_twin(batch)
            for name in PAIRED_FIELDS:  # the clean twin is the uncorrupted data
                assert torch.equal(getattr(twin, name), getattr(clean, name)[batch.index])
                assert torch.equal(getattr(batch, name), getattr(SplitTensors.from_split(noisy), name)[batch.index])
            for m in ("text", "audio", "vision"):
                np.testing.assert_allclose(batch.extra[f"missing_rate_{m}"].numpy(), expected[m][index], atol=1e-6)
                np.testing.assert_allclose(batch.extra[f"drawn_rate_{m}"].numpy(), drawn[m][index], atol=1e-6)
                # a sample drawn clean is clean; realised rates follow the drawn ones
                assert np.all(batch.extra[f"missing_rate_{m}"].numpy()[drawn[m][index] == 0] == 0)
        for m in ("audio", "vision"):
            realised = expected[m]
            assert np.corrcoef(realised, drawn[m])[0, 1] > 0.9 and abs(realised.mean() - drawn[m].mean()) < 0.05
        epochs[epoch] = (noisy, drawn)
    (n1, d1), (n2, d2) = epochs[1], epochs[2]
    for m in ("text", "audio", "vision"):  # rates and masks are re-drawn every epoch
        assert not np.array_equal(d1[m], d2[m])
    assert n1.audio.tobytes() != n2.audio.tobytes() and n1.text.tobytes() != n2.text.tobytes()


def test_plain_batches_are_unpaired_and_give_no_auxiliary_losses(tiny):
    batch = next(iterate_batches(SplitTensors.from_split(tiny.train), 8))
    assert clean_twin(batch) is None
    torch.manual_seed(0)
    model = create_method("lnln", tiny.spec, **TINY).train()
    assert model(batch).aux_losses == {}
    paired = next(iterate_paired_batches(SplitTensors.from_split(tiny.train), SplitTensors.from_split(tiny.train), 8))
    assert set(model(paired).aux_losses) == {"cc", "adv", "rec"}
    assert all(float(paired.extra[f"missing_rate_{m}"].abs().sum()) == 0 for m in ("text", "audio", "vision"))


def test_a_few_paired_training_steps_lower_the_loss(tiny):
    noisy, drawn = TrainNoise("random_missing", seed=1).draw(tiny.train, 1)
    batch = next(iterate_paired_batches(SplitTensors.from_split(noisy), SplitTensors.from_split(tiny.train), 32,
                                        drawn_rates=drawn))
    torch.manual_seed(0)
    model = create_method("lnln", tiny.spec, **TINY, lr=1e-3, warmup_fraction=0.0)
    optimizers, _ = model.configure_optimizers(epochs=5, steps_per_epoch=1)
    model.train()
    steps = [model.training_step(batch, optimizers) for _ in range(12)]
    for part in ("loss", "criterion", "cc", "rec"):
        values = [s[part] for s in steps]
        assert np.isfinite(values).all() and np.mean(values[-3:]) < values[0], (part, values)


# ------------------------------------------------------------------ engine: default noise, paired training
def test_effective_train_noise():
    config = {"train_noise": "random_missing"}
    assert effective_train_noise(dict(config), None) == "random_missing"
    overridden = dict(config)
    assert effective_train_noise(overridden, "word_drop") == "word_drop" and overridden["train_noise"] == "word_drop"
    off = dict(config)
    assert effective_train_noise(off, "none") is None and off["train_noise"] is None
    plain: dict = {}
    assert effective_train_noise(plain, None) is None and plain == {}  # methods without a default: unchanged
    assert effective_train_noise(plain, "frame_drop") == "frame_drop" and plain == {}


def test_engine_trains_lnln_on_paired_noisy_batches_by_default(tiny, tmp_path, monkeypatch):
    seen = []
    forward = LNLN.forward

    def spy(self, batch):
        seen.append((self.training, clean_twin(batch) is not None))
        return forward(self, batch)

    monkeypatch.setattr(LNLN, "forward", spy)
    trained = train("lnln", tiny, seed=2, epochs=2, overrides=TINY, cache=tmp_path)
    assert trained.train_noise == "random_missing" and trained.config["train_noise"] == "random_missing"
    assert {s for s in seen if s[0]} == {(True, True)}  # training batches are paired ...
    assert {s for s in seen if not s[0]} == {(False, False)}  # ... validation batches are not
    explicit = train("lnln", tiny, seed=2, epochs=2, overrides=TINY, cache=tmp_path, train_noise="random_missing")
    assert explicit.from_cache and explicit.key == trained.key  # the default and the explicit noise: one model
    off = train("lnln", tiny, seed=2, epochs=1, overrides=TINY, use_cache=False, train_noise="none")
    assert off.train_noise is None and off.config["train_noise"] is None and off.key != trained.key


def test_a_sweep_names_lnln_cells_and_records_by_the_noise_it_trained_with(tmp_path):
    from conftest import tiny_synth_dataset
    from robustmsa.engine.evaluate import run_eval
    from robustmsa.results import ResultsStore
    from robustmsa.sweep import run_sweep

    data = tiny_synth_dataset(n_train=32, n_valid=16, n_test=16)
    run_sweep(["lnln"], data, ["word_drop"], [0.0, 0.5], [1111], tmp_path / "run", epochs=1, overrides=TINY,
              cache=tmp_path / "cache", audit_samples=0)
    assert set(ResultsStore(tmp_path / "run").to_frame()["train_noise"]) == {"random_missing"}
    record = run_eval("lnln", data, severity=0.5, seeds=[1111], epochs=1, overrides=TINY, cache=str(tmp_path / "cache"))
    assert record["config"]["train_noise"] == "random_missing" and record["per_seed"][0]["from_cache"]
