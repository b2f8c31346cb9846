"""MMIM: parameter counts, the two-stage step, the entropy memory and its numerical safety, behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustmsa.methods.mmim  # noqa: F401  (registers "mmim")
from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import Dataset
from robustmsa.engine.batches import SplitTensors, iterate_batches
from robustmsa.methods.base import Batch, create_method, resolve_config
from robustmsa.methods.mmim import CPC, MMIM, EntropyMemory, gaussian_logdet

from conftest import BATCH_FIELDS as FIELDS, batch_of, tiny_synth_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return tiny_synth_dataset()



def sub_batch(batch: Batch, index) -> Batch:
    return Batch(**{f: getattr(batch, f)[index] for f in FIELDS})


def make(dataset: Dataset, seed: int = 0, **overrides) -> MMIM:
    torch.manual_seed(seed)
    return create_method("mmim", dataset.spec, **overrides)


# ------------------------------------------------------------------ sizes and configuration
# Outside the text encoder (768-d [CLS]): equal to the reference's architecture (same modules and widths).
@pytest.mark.parametrize("dataset, expected", [("mosi", 277_257), ("mosei", 282_633), ("sims", 323_145)])
def test_parameter_counts(dataset, expected):
    model = create_method("mmim", registered_spec(dataset), text_backbone="features")
    print(dataset, model.count_parameters())
    assert model.count_parameters() == expected
    if dataset == "mosi":  # LSTM(5, 16) + Linear; LSTM(20, 16) + Linear; 2 MMILB; 3 CPC; fusion 800-128-1
        parts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()}
        assert parts == {"text_encoder": 0, "acoustic_enc": 1_744, "visual_enc": 2_704, "mi": 50_440,
                         "cpc": 103_200, "fusion_prj": 119_169}


def test_dataset_sections_and_flags():
    mosi = resolve_config("mmim", registered_spec("mosi"))
    mosei = resolve_config("mmim", registered_spec("mosei"))
    assert (mosi["alpha"], mosi["beta"], mosi["batch_size"]) == (0.1, 0.1, 32)
    assert (mosi["epochs"], mosi["early_stop"], mosi["when"]) == (40, 10, 20)
    assert mosi["contrast"] and not mosi["add_va"] and mosi["criterion"] == "l1"
    assert mosi["mmilb_batch_fraction"] == 1.0 and mosei["mmilb_batch_fraction"] == 0.5
    model = create_method("mmim", registered_spec("mosi"), add_va=True)
    assert list(model.mi) == ["tv", "ta", "va"]


def test_optimisers_groups_and_schedule(tiny):
    model = make(tiny)
    (mmilb, main), (plateau,) = model.configure_optimizers(epochs=3, steps_per_epoch=6)
    mi = {id(p) for p in model.mi.parameters()}
    assert {id(p) for p in mmilb.param_groups[0]["params"]} == mi
    assert len(main.param_groups) == 1  # features backbone: no text-encoder group
    assert not mi & {id(p) for p in main.param_groups[0]["params"]}
    assert main.param_groups[0]["lr"] == 2e-3 and mmilb.param_groups[0]["lr"] == 1e-3  # synth: lr_main 2e-3
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau) and plateau.patience == 20
    assert plateau.optimizer is main
    embedded = make(tiny, text_backbone="embedding")
    _, main = embedded.configure_optimizers(epochs=3, steps_per_epoch=6)[0]
    assert [g["lr"] for g in main.param_groups] == [5e-5, 2e-3]
    text = {id(p) for p in embedded.text_encoder.parameters()}
    assert {id(p) for p in main.param_groups[0]["params"]} == text


# ------------------------------------------------------------------ forward, losses, training
def test_forward_backward_every_aux_loss_finite_and_nonzero(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 16)
    model.train()
    model.training_step(batch, optimizers)  # fills the entropy memory
    assert len(model.entropy_memory) == 1
    model.zero_grad()
    output = model(batch)
    assert output.pred.shape == (16,)
    assert set(output.aux_losses) == {"nce", "lld", "H"}
    for name, value in output.aux_losses.items():
        assert torch.isfinite(value) and float(value.detach()) != 0.0, name
    total, parts = model.loss(batch, output)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert set(parts) == {"criterion", "nce", "lld", "H"}


def test_a_few_epochs_lower_the_training_loss(tiny):
    model = make(tiny)
    tensors = SplitTensors.from_split(tiny.train)
    optimizers, _ = model.configure_optimizers(epochs=5, steps_per_epoch=6)
    model.train()
    epochs = []
    for epoch in range(5):  # 30 steps
        generator = torch.Generator().manual_seed(epoch)
        epochs.append([model.training_step(b, optimizers) for b in iterate_batches(tensors, 16, shuffle=True,
                                                                                      generator=generator)])
    first = np.mean([p["criterion"] for p in epochs[0]])
    last = np.mean([p["criterion"] for p in epochs[-1]])
    assert np.isfinite([p["loss"] for e in epochs for p in e]).all()
    assert last < first
    assert np.mean([p["stage0_lld"] for p in epochs[-1]]) > np.mean([p["stage0_lld"] for p in epochs[0]])


def test_eval_prediction_does_not_depend_on_the_batch_or_the_memory(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 8, "test")
    model.train()
    model.training_step(batch_of(tiny, 16), optimizers)
    model.eval()
    with torch.no_grad():
        together = model(batch).pred
        alone = torch.cat([model(sub_batch(batch, slice(i, i + 1))).pred for i in range(8)])
        model.entropy_memory.clear()
        cleared = model(batch).pred
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cleared, together)
    assert float(model(batch).aux_losses["H"]) == 0.0  # eval: the memory is not read


def test_absent_modalities_give_finite_outputs_and_steps(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 8)
    absent = Batch(**{**{f: getattr(batch, f) for f in FIELDS},
                      "audio": torch.zeros_like(batch.audio), "vision": torch.zeros_like(batch.vision),
                      "audio_lengths": torch.zeros_like(batch.audio_lengths),
                      "vision_lengths": torch.zeros_like(batch.vision_lengths),
                      "text": torch.zeros_like(batch.text)})
    model.train()
    for _ in range(3):  # the third step includes H over identical (absent) projections
        parts = model.training_step(absent, optimizers)
        assert np.isfinite(list(parts.values())).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        output = model(absent)
    assert torch.isfinite(output.pred).all()
    assert all(torch.isfinite(v) for v in output.aux_losses.values())


# ------------------------------------------------------------------ the two-stage step and the memory
def test_stage_schedule_memory_and_entropy_gate(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=2, steps_per_epoch=4)
    batch = batch_of(tiny, 16)
    model.train()
    c = model.config
    for step in range(8):
        index = step % 4
        parts = model.training_step(batch, optimizers)
        assert "stage0_lld" in parts
        assert (parts["H"] != 0.0) == (index >= 1)  # memory cleared at every epoch start
        expected = parts["criterion"] + c["alpha"] * parts["nce"] - c["beta"] * parts["lld"]
        if index > 1:  # the reference's i_batch > mem_size
            expected -= c["beta"] * parts["H"]
        assert parts["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert len(model.entropy_memory) == 1


def test_mosei_rule_runs_stage0_on_the_first_half_of_the_batches(tiny):
    model = make(tiny, mmilb_batch_fraction=0.5)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=4)
    model.train()
    ran = ["stage0_lld" in model.training_step(batch_of(tiny, 8), optimizers) for _ in range(8)]
    assert ran == [True, True, False, False] * 2
    off = make(tiny, contrast=False)
    optimizers, _ = off.configure_optimizers(epochs=1, steps_per_epoch=4)
    off.train()
    for index in range(3):
        parts = off.training_step(batch_of(tiny, 8), optimizers)
        assert "stage0_lld" not in parts
        expected = parts["criterion"] - (off.config["beta"] * parts["H"] if index > 1 else 0.0)
        assert parts["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_stage0_updates_only_the_mmilb_modules(tiny):
    model = make(tiny)
    (mmilb, _main), _ = model.configure_optimizers(epochs=1, steps_per_epoch=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.zero_grad()
    enc = {k: v.detach() for k, v in model.encode(batch_of(tiny, 8)).items()}
    (-model.mmilb_lld(enc)[0]).backward()
    mmilb.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("mi.") for k in changed)
    assert not any("entropy_prj" in k for k in changed)  # no gradient from -lld


@pytest.mark.parametrize("to_none", [False, True])
def test_zero_grad_semantics_of_the_reference(tiny, to_none):
    """torch 1.7's zero_grad (the reference's) leaves zero gradients on the entropy projections once ``H``
    has reached the loss (third batch), so Adam's weight decay moves them in the next stage 0 although
    ``-lld`` does not involve them; with ``zero_grad_to_none`` they keep their initial values."""
    model = make(tiny, zero_grad_to_none=to_none)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 8)
    model.train()
    weight = model.mi["tv"].entropy_prj[0].weight
    initial = weight.detach().clone()
    for _ in range(3):  # H enters the loss at the third batch; stage 1 never steps the MMILB optimiser
        model.training_step(batch, optimizers)
        assert torch.equal(weight, initial)
    assert weight.grad is not None
    model.training_step(batch, optimizers)
    assert torch.equal(weight, initial) == to_none


def test_entropy_memory_is_explicit_and_not_saved(tiny):
    model = make(tiny)
    assert isinstance(model.entropy_memory, EntropyMemory) and model.entropy_memory.size == 1
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    model.train()
    batch = batch_of(tiny, 16)
    model.training_step(batch, optimizers)
    pos, neg = model.entropy_memory.history("tv")
    labels = batch.labels
    assert pos[0].shape == (int((labels > 0).sum()), 4) and neg[0].shape == (int((labels < 0).sum()), 4)
    assert not pos[0].requires_grad
    assert not any("memory" in k for k in model.state_dict())
    memory = EntropyMemory(2)
    for i in range(3):
        memory.push({"tv": (torch.full((1, 4), float(i)), torch.zeros(0, 4))})
    assert len(memory) == 2 and [float(p[0, 0]) for p in memory.history("tv")[0]] == [1.0, 2.0]


# ------------------------------------------------------------------ numerical repairs
def test_gaussian_logdet_is_safe():
    assert gaussian_logdet(torch.randn(1, 4), 1e-4) is None  # a group of one sample is skipped
    x = torch.randn(200, 4, dtype=torch.float64)
    exact = torch.logdet(torch.cov(x.t(), correction=0))
    assert float(gaussian_logdet(x.float(), 1e-4)) == pytest.approx(float(exact), abs=2e-3)
    singular = torch.randn(3, 4, requires_grad=True)  # fewer samples than dimensions
    value = gaussian_logdet(singular, 1e-4)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(singular.grad).all()
    identical = torch.ones(5, 4, requires_grad=True)
    value = gaussian_logdet(identical, 1e-4)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(identical.grad).all()


def test_entropy_skips_small_sign_groups(tiny):
    model = make(tiny)
    model.train()
    batch = batch_of(tiny, 8)
    one_negative = Batch(**{**{f: getattr(batch, f) for f in FIELDS},
                            "labels": torch.tensor([1.0, 2.0, 0.4, 1.2, 0.0, 2.6, -1.0, 0.8])})
    model.entropy_memory.push({p: (torch.zeros(0, 4), torch.zeros(0, 4)) for p in model.pairs})
    parts = model.compute(one_negative, labels=one_negative.labels)
    # positives: 6 samples -> a log-determinant; negatives: 1 sample -> skipped; zero labels in neither group
    assert set(parts.H_terms) == {"tv", "ta"} and torch.isfinite(parts.H)
    pos, neg = parts.projections["tv"]
    assert pos.shape[0] == 6 and neg.shape[0] == 1


def test_cpc_is_finite_on_zero_vectors():
    cpc = CPC(6, 5)
    value = cpc(torch.zeros(4, 6), torch.randn(4, 5))
    assert torch.isfinite(value)
