"""TFN, LMF, EF-LSTM and MFN: shapes, configs, training, LMF's fusion weights, alignment, absent modalities.

Parity with MMSA's own classes is in ``test_mmsa_parity_classic.py``; the generic contract in
``test_methods_contract.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import BATCH_FIELDS, batch_of, tiny_synth_dataset

from robustmsa.datasets.registry import registered_spec
from robustmsa.methods import ConfigError, create_method
from robustmsa.methods.classic_blocks import align_to_length, load_mmsa_state_dict

CLASSIC = ["tfn", "lmf", "ef_lstm", "mfn"]
# parameters without the text encoder on MOSI shapes (docs/methods.md)
MOSI_PARAMETERS = {"tfn": 9_497_043, "lmf": 505_071, "ef_lstm": 885_605, "mfn": 2_172_657}


@pytest.fixture(scope="module")
def tiny():
    return tiny_synth_dataset(n_train=64, n_valid=16, n_test=16)


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "mosi-aligned"])
def test_builds_for_registered_shapes_with_mmsa_configs(name, dataset):
    spec = registered_spec(dataset)
    model = create_method(name, spec, text_backbone="features")
    assert model.config["config_section"] == dataset.removesuffix("-aligned")
    assert model.config["criterion"] == "l1" and model.config["early_stop"] == 8
    if dataset == "mosi":
        assert model.count_parameters() == MOSI_PARAMETERS[name]


def test_dataset_sections_follow_mmsa():
    sims = registered_spec("sims")
    assert create_method("tfn", sims).config["text_out"] == 256
    assert create_method("lmf", sims).config["factor_lr"] == 0.0005
    assert create_method("ef_lstm", registered_spec("mosei")).config["hidden_dims"] == 256
    assert create_method("mfn", sims).config["memsize"] == 64
    assert create_method("lmf", registered_spec("mosi")).text_subnet.linear_1.out_features == 64  # text_hidden // 2


@pytest.mark.parametrize("name", CLASSIC)
def test_a_few_steps_lower_the_loss(name, tiny, one_thread):
    torch.manual_seed(0)
    model = create_method(name, tiny.spec)
    batch = batch_of(tiny, n=32)
    (optimizer,), _ = model.configure_optimizers(1, 1)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model.criterion(model(batch).pred, batch.labels))

    before = eval_loss()
    model.train()
    for _ in range(25):
        parts = model.training_step(batch, [optimizer])
        assert torch.isfinite(torch.tensor(parts["loss"]))
    assert eval_loss() < 0.92 * before


@pytest.mark.parametrize("name", CLASSIC)
def test_eval_prediction_does_not_depend_on_the_batch(name, tiny, one_thread):
    torch.manual_seed(0)
    model = create_method(name, tiny.spec).eval()
    batch = batch_of(tiny, n=6, split="test")
    with torch.no_grad():
        together = model(batch).pred
        alone = torch.cat([model(batch.__class__(**{f: getattr(batch, f)[i:i + 1] for f in BATCH_FIELDS})).pred
                           for i in range(len(batch))])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


def _lmf_step_changes(train_fusion_weights: bool, tiny) -> dict[str, bool]:
    """Which fusion parameters change over a few LMF training steps (and whether they got gradients)."""
    torch.manual_seed(0)
    model = create_method("lmf", tiny.spec, train_fusion_weights=train_fusion_weights)
    batch = batch_of(tiny, n=32)
    names = ("audio_factor", "video_factor", "text_factor", "fusion_weights", "fusion_bias")
    before = {n: getattr(model, n).detach().clone() for n in names}
    (optimizer,), _ = model.configure_optimizers(1, 1)
    model.train()
    for _ in range(3):
        model.training_step(batch, [optimizer])
        for n in names:
            grad = getattr(model, n).grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, n
    return {n: not torch.equal(before[n], getattr(model, n).detach()) for n in names}


def test_lmf_trains_its_fusion_weights(tiny, one_thread):
    assert all(_lmf_step_changes(True, tiny).values())


def test_lmf_can_reproduce_mmsas_frozen_fusion_weights(tiny, one_thread):
    changed = _lmf_step_changes(False, tiny)
    assert changed == {"audio_factor": True, "video_factor": True, "text_factor": True, "fusion_weights": False,
                       "fusion_bias": False}


@pytest.mark.parametrize("name, overrides", [("ef_lstm", {"alignment": "require"}),
                                             ("mfn", {"av_input": "sequence", "alignment": "require"})])
def test_alignment_require_refuses_unaligned_data_and_names_the_aligned_variant(name, overrides):
    with pytest.raises(ConfigError, match=r"'mosi' is unaligned.*use 'mosi-aligned'.*alignment=avg_pool"):
        create_method(name, registered_spec("mosi"), **overrides)
    with pytest.raises(ConfigError, match=r"'sims' is unaligned.*no word-aligned variant of 'sims'"):
        create_method(name, registered_spec("sims"), **overrides)
    create_method(name, registered_spec("mosi-aligned"), **overrides)  # aligned data is accepted


def test_mfn_average_mode_needs_no_alignment():
    create_method("mfn", registered_spec("mosi"), alignment="require")  # alignment is unused with av_input average


@pytest.mark.parametrize("name, key, value", [("ef_lstm", "alignment", "ctc"), ("mfn", "av_input", "frames"),
                                              ("tfn", "average", "median"), ("mfn", "windowsize", 3)])
def test_bad_options_are_config_errors(name, key, value):
    with pytest.raises(ConfigError, match=key):
        create_method(name, registered_spec("synth"), **{key: value})


@pytest.mark.parametrize("length, dst", [(40, 24), (32, 24), (400, 39), (55, 39), (1, 24), (24, 24), (7, 3)])
def test_avg_pool_alignment_averages_contiguous_windows(length, dst):
    x = torch.randn(2, length, 3, dtype=torch.float64)
    pool = -(-length // dst)
    padded = torch.cat([x, x[:, -1:].expand(2, pool * dst - length, 3)], dim=1)
    expected = torch.stack([padded[:, j * pool:(j + 1) * pool].mean(dim=1) for j in range(dst)], dim=1)
    torch.testing.assert_close(align_to_length(x, dst, "avg_pool"), x if length == dst else expected)
    strided = torch.stack([padded[:, j::dst].mean(dim=1) for j in range(dst)], dim=1)
    torch.testing.assert_close(align_to_length(x, dst, "avg_pool_strided"), x if length == dst else strided)


def test_mfn_sequence_mode_reads_frames_that_average_mode_ignores(tiny, one_thread):
    batch = batch_of(tiny, n=4)
    shuffled = dataclasses.replace(batch, audio=batch.audio.flip(1))  # same padded mean, other frame order
    for av_input, same in (("average", True), ("sequence", False)):
        torch.manual_seed(0)
        model = create_method("mfn", tiny.spec, av_input=av_input).eval()
        with torch.no_grad():
            assert torch.allclose(model(batch).pred, model(shuffled).pred, atol=1e-6) is same


def test_tfn_output_stays_in_mmsas_range(tiny):
    torch.manual_seed(0)
    model = create_method("tfn", tiny.spec).eval()
    with torch.no_grad():
        model.post_fusion_layer_3.bias.fill_(100.0)
        pred = model(batch_of(tiny, n=4)).pred
    assert torch.all(pred <= 3.0) and torch.all(pred > 2.99)


@pytest.mark.parametrize("name", CLASSIC)
def test_absent_modalities_built_as_n_1_1_give_finite_outputs(name, tiny, one_thread):
    """``robustmsa data build`` without audio/vision: shape (N, 1, 1) of zeros, length 0."""
    spec = dataclasses.replace(tiny.spec, dims={**tiny.spec.dims, "audio": 1, "vision": 1},
                               seq_lens={**tiny.spec.seq_lens, "audio": 1, "vision": 1})
    batch = batch_of(tiny, n=8)
    absent = dataclasses.replace(batch, audio=torch.zeros(8, 1, 1), vision=torch.zeros(8, 1, 1),
                                 audio_lengths=torch.zeros(8, dtype=torch.long),
                                 vision_lengths=torch.zeros(8, dtype=torch.long))
    torch.manual_seed(0)
    model = create_method(name, spec).train()
    output = model(absent)
    total, _ = model.loss(absent, output)
    total.backward()
    assert torch.isfinite(output.pred).all() and torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(absent).pred).all()


def test_mmsa_state_dict_loader_reports_every_mismatch(tiny):
    model = create_method("lmf", tiny.spec)
    state = {f"Model.{k}": v for k, v in model.state_dict().items()}
    load_mmsa_state_dict(model, state)  # AMIO's prefix is stripped
    del state["Model.fusion_bias"]
    state["Model.extra.weight"] = torch.zeros(1)
    state["Model.rank_factor"] = torch.zeros(1)
    state["Model.fusion_weights"] = torch.zeros(1, 9)
    with pytest.raises(ValueError, match=r"missing: fusion_bias; unexpected: extra.weight, rank_factor; "
                                         r"shape mismatch: fusion_weights"):
        load_mmsa_state_dict(model, state)
