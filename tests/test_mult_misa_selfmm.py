"""MulT, MISA and Self-MM (MMSA baselines): sizes, training, MMSA's trainer mechanics, the length handling
(MulT's last valid step, MISA's own lengths vs MMSA's text-length packing) and Self-MM's unimodal labels.

Equality with MMSA's own code is in ``test_mmsa_parity_mult_misa_selfmm.py``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import BATCH_FIELDS, batch_of, tiny_synth_dataset

from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import DatasetSpec
from robustmsa.engine.batches import SplitTensors, iterate_batches
from robustmsa.methods import create_method
from robustmsa.methods.base import Batch, ConfigError, resolve_config
from robustmsa.methods.mmsa_common import AccumulatedSteps

# The real architectures at small widths, gradient accumulation off: fast on one thread.
TINY = {
    "mult": {"d_model": 8, "heads": 2, "nlevels": 1, "mem_min_layers": 1, "update_epochs": 1, "lr": 3e-3,
             "batch_size": 16},
    "misa": {"hidden_size": 16, "fusion_ff_dim": 32, "update_epochs": 1, "lr": 3e-3, "batch_size": 16},
    "self_mm": {"update_epochs": 1, "lr_other": 3e-3, "batch_size": 16, "post_fusion_dim": 16},
}
METHODS = tuple(TINY)


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust to a busy machine)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_synth_dataset()


def make_spec(dims=(12, 3, 5), lens=(9, 14, 11)) -> DatasetSpec:
    modalities = ("text", "audio", "vision")
    return DatasetSpec(name="tiny", label_family="mosi", label_range=(-3.0, 3.0), dims=dict(zip(modalities, dims)),
                       seq_lens=dict(zip(modalities, lens)), aligned=False, fingerprint="test:0", source="<test>")


def random_batch(spec: DatasetSpec, text_lengths, audio_lengths, vision_lengths, seed: int = 0) -> Batch:
    """Random features, zero beyond each valid length (as MMSA pads)."""
    g = torch.Generator().manual_seed(seed)
    t_len, a_len, v_len = (torch.tensor(x) for x in (text_lengths, audio_lengths, vision_lengths))
    b = len(t_len)

    def padded(m, valid):
        n = spec.seq_lens[m]
        x = torch.randn(b, n, spec.dims[m], generator=g)
        return x * (torch.arange(n)[None, :] < valid[:, None])[..., None]

    mask = (torch.arange(spec.seq_lens["text"])[None, :] < t_len[:, None]).long()
    return Batch(text=padded("text", t_len), text_ids=mask * 1000, text_mask=mask, text_segments=0 * mask,
                 audio=padded("audio", a_len), vision=padded("vision", v_len), audio_lengths=a_len,
                 vision_lengths=v_len, labels=torch.randn(b, generator=g).clamp(-3, 3), index=torch.arange(b))


def replace(batch: Batch, **fields) -> Batch:
    return Batch(**{**{f: getattr(batch, f) for f in BATCH_FIELDS}, **fields})


def tiny(name: str, spec, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_method(name, spec, **{**TINY[name], **overrides})


# ------------------------------------------------------------------ configuration and size
#: Parameters outside the text encoder (768-d text features). MulT and Self-MM equal MMSA's models; MISA is
#: MMSA's minus the modules MMSA builds and never uses (sp_discriminator 516, tlayer_norm 3,072): see the parity tests.
COUNTS = {
    ("mult", "mosi"): 2_571_551, ("mult", "mosei"): 982_951, ("mult", "sims"): 1_870_701,
    ("misa", "mosi"): 1_134_445, ("misa", "mosei"): 1_431_517, ("misa", "sims"): 21_661_161,
    ("self_mm", "mosi"): 159_332, ("self_mm", "mosei"): 165_668, ("self_mm", "sims"): 381_380,
}


@pytest.mark.parametrize("name, dataset", list(COUNTS))
def test_builds_for_the_registered_shapes_with_mmsa_sizes(name, dataset):
    with torch.device("meta"):  # shapes only
        model = create_method(name, registered_spec(dataset), text_backbone="features")
    assert model.count_parameters() == COUNTS[name, dataset]


def test_dataset_sections_follow_mmsa():
    mosi, mosei, sims = (registered_spec(d) for d in ("mosi", "mosei", "sims"))
    assert resolve_config("mult", mosei)["d_model"] == 30 and resolve_config("mult", mosei)["batch_size"] == 4
    assert resolve_config("mult", sims)["nlevels"] == 2 and resolve_config("mult", mosi)["update_epochs"] == 8
    assert resolve_config("misa", mosei)["sim_weight"] == 0.8 and resolve_config("misa", sims)["recon_weight"] == 0.8
    assert resolve_config("misa", mosi)["pack_with_text_length"] is False
    assert resolve_config("self_mm", sims)["H"] == 1.0 and resolve_config("self_mm", mosei)["lr_video"] == 1e-4
    for name in METHODS:
        assert resolve_config(name, registered_spec("mosi-aligned"))["config_section"] == "mosi"
        assert resolve_config(name, registered_spec("synth"))["config_section"] == "synth"


def test_invalid_options_are_named():
    with pytest.raises(ConfigError, match="pooling"):
        create_method("mult", make_spec(), pooling="first")
    with pytest.raises(ConfigError, match="heads"):
        create_method("mult", make_spec(), d_model=10, heads=4)
    with pytest.raises(ConfigError, match="rnncell"):
        create_method("misa", make_spec(), rnncell="transformer")
    with pytest.raises(ConfigError, match="update_epochs"):
        create_method("self_mm", make_spec(), update_epochs=0)


# ------------------------------------------------------------------ training
def run_epochs(model, data, epochs: int, seed: int = 0, key: str = "loss") -> list[float]:
    """Mean training loss part ``key`` per epoch through the method's own optimisers and training_step."""
    tensors = SplitTensors.from_split(data.train)
    batch_size = int(model.config["batch_size"])
    steps = -(-len(tensors) // batch_size)
    optimizers, _ = model.configure_optimizers(epochs, steps)
    means = []
    for epoch in range(epochs):
        model.train()
        losses = [model.training_step(batch, optimizers)[key]
                  for batch in iterate_batches(tensors, batch_size, shuffle=True,
                                               generator=torch.Generator().manual_seed(seed + epoch))]
        means.append(sum(losses) / len(losses))
    return means


@pytest.mark.parametrize("name", METHODS)
def test_a_few_epochs_lower_the_training_loss(name, tiny_data):
    """The supervised loss falls (Self-MM's total rises at first: its unimodal tasks enter from epoch 2 on)."""
    model = tiny(name, tiny_data.spec)
    key = "criterion" if name == "self_mm" else "loss"
    losses = run_epochs(model, tiny_data, 3, key=key)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_accumulation_zeroes_and_steps_per_group_and_drops_the_tail():
    steps = AccumulatedSteps(2)
    steps.reset(5)
    pattern = []
    for _ in range(10):
        zero = steps.begin()
        pattern.append((steps.epoch, steps.batch_in_epoch, zero, steps.should_step()))
    assert pattern[:5] == [(1, 0, True, False), (1, 1, False, True), (1, 2, True, False), (1, 3, False, True),
                           (1, 4, True, False)]  # the fifth batch's gradient is never applied (MMSA)
    assert pattern[5] == (2, 0, True, False)  # groups restart with the epoch


@pytest.mark.parametrize("name", METHODS)
def test_update_epochs_accumulates_gradients_before_a_step(name, tiny_data):
    model = tiny(name, tiny_data.spec, update_epochs=2)
    optimizers, _ = model.configure_optimizers(1, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = list(iterate_batches(SplitTensors.from_split(tiny_data.train), 16))
    model.train()
    model.training_step(batches[0], optimizers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.training_step(batches[1], optimizers)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ MulT: lengths
MULT_SMALL = {"d_model": 8, "heads": 2, "nlevels": 2, "mem_min_layers": 3, "conv1d_kernel_size_l": 3,
              "conv1d_kernel_size_a": 1, "conv1d_kernel_size_v": 3, "update_epochs": 1}


def test_mult_last_valid_equals_mmsa_on_each_sample_cropped_to_its_lengths():
    """Default pooling: a sample's prediction is MMSA's computation on that sample alone, without padding."""
    spec = make_spec()
    torch.manual_seed(0)
    ours = create_method("mult", spec, **MULT_SMALL).eval()
    mmsa = create_method("mult", spec, **MULT_SMALL, pooling="last_padded").eval()
    mmsa.load_state_dict(ours.state_dict())
    t_len, a_len, v_len = [9, 5, 3, 2, 7, 4], [14, 1, 0, 6, 3, 10], [11, 2, 5, 0, 1, 8]
    batch = random_batch(spec, t_len, a_len, v_len)
    kernels = {"text": 3, "audio": 1, "vision": 3}
    with torch.no_grad():
        together = ours(batch).pred
        for i in range(len(t_len)):
            keep = {m: max(n, kernels[m]) for m, n in zip(("text", "audio", "vision"), (t_len[i], a_len[i], v_len[i]))}
            one = Batch(text=batch.text[i:i + 1, :keep["text"]], text_ids=batch.text_ids[i:i + 1, :keep["text"]],
                        text_mask=batch.text_mask[i:i + 1, :keep["text"]],
                        text_segments=batch.text_segments[i:i + 1, :keep["text"]],
                        audio=batch.audio[i:i + 1, :keep["audio"]], vision=batch.vision[i:i + 1, :keep["vision"]],
                        audio_lengths=batch.audio_lengths[i:i + 1], vision_lengths=batch.vision_lengths[i:i + 1],
                        labels=batch.labels[i:i + 1], index=batch.index[i:i + 1])
            torch.testing.assert_close(together[i], mmsa(one).pred[0], atol=2e-6, rtol=1e-5)


def test_mult_padding_content_matters_only_for_mmsa_pooling():
    spec = make_spec()
    torch.manual_seed(0)
    ours = create_method("mult", spec, **MULT_SMALL).eval()
    mmsa = create_method("mult", spec, **MULT_SMALL, pooling="last_padded").eval()
    mmsa.load_state_dict(ours.state_dict())
    batch = random_batch(spec, [5, 6], [7, 9], [4, 8])
    garbage = replace(batch, audio=batch.audio + 3.0 * (torch.arange(14)[None, :, None] >= 9),
                      text=batch.text + 2.0 * (batch.text_mask == 0)[..., None])
    with torch.no_grad():
        torch.testing.assert_close(ours(garbage).pred, ours(batch).pred)
        assert (mmsa(garbage).pred - mmsa(batch).pred).abs().max() > 1e-4


# ------------------------------------------------------------------ MISA
def test_misa_auxiliary_losses_are_present_finite_and_weighted(tiny_data):
    model = tiny("misa", tiny_data.spec).train()
    batch = batch_of(tiny_data, 16)
    output = model(batch)
    assert set(output.aux_losses) == {"diff", "cmd", "recon"}
    assert all(torch.isfinite(v) and v > 0 for v in output.aux_losses.values())
    total, _ = model.loss(batch, output)
    c = model.config
    expected = (torch.nn.functional.mse_loss(output.pred, batch.labels) + c["diff_weight"] * output.aux_losses["diff"]
                + c["sim_weight"] * output.aux_losses["cmd"] + c["recon_weight"] * output.aux_losses["recon"])
    torch.testing.assert_close(total, expected)
    assert model.eval()(batch).aux_losses == {}


def test_misa_own_lengths_read_frames_past_the_text_length_mmsa_packing_does_not():
    """MMSA packs audio and vision with the text length: a frame after it is ignored (the quirk, shown)."""
    spec = make_spec()
    torch.manual_seed(0)
    own = create_method("misa", spec, **TINY["misa"]).eval()
    packed = create_method("misa", spec, **TINY["misa"], pack_with_text_length=True).eval()
    packed.load_state_dict(own.state_dict())
    assert own.unimodal_encoders == ("text", "audio", "vision") and packed.unimodal_encoders == ()
    batch = random_batch(spec, [4, 5], [12, 14], [10, 11])
    late_audio = batch.audio.clone()
    late_audio[:, 8] += 5.0  # frame 8: inside every audio length, after every text length
    late_vision = batch.vision.clone()
    late_vision[:, 7] -= 5.0
    changed = replace(batch, audio=late_audio, vision=late_vision)
    with torch.no_grad():
        assert (own(changed).pred - own(batch).pred).abs().min() > 1e-4
        torch.testing.assert_close(packed(changed).pred, packed(batch).pred, atol=0, rtol=0)


def test_misa_cmd_has_finite_gradients_for_identical_codes():
    from robustmsa.methods.misa import cmd_loss, diff_loss

    x = torch.full((4, 6), 0.5, requires_grad=True)
    y = torch.full((4, 6), 0.5, requires_grad=True)
    value = cmd_loss(x, y) + diff_loss(x, y)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


# ------------------------------------------------------------------ Self-MM
def test_self_mm_unimodal_labels_move_after_the_first_epoch_and_stay_in_range(tiny_data):
    model = tiny("self_mm", tiny_data.spec)
    run_epochs(model, tiny_data, 1)
    state = model.unimodal_labels
    truth = torch.tensor(tiny_data.train.regression_labels.copy(), dtype=torch.float32)
    labels = state.as_dict()
    torch.testing.assert_close(labels["fusion"], truth)  # initialised to the multimodal label, by sample index
    for m in ("text", "audio", "vision"):  # epoch 1: no update yet (MMSA updates from epoch 2 on)
        torch.testing.assert_close(labels[m], labels["fusion"])
    first = labels
    model2 = tiny("self_mm", tiny_data.spec)
    run_epochs(model2, tiny_data, 3)
    labels = model2.unimodal_labels.as_dict()
    torch.testing.assert_close(labels["fusion"], first["fusion"])  # the fusion label never changes
    bound = float(model2.config["H"])
    for m in ("text", "audio", "vision"):
        moved = (labels[m] - labels["fusion"]).abs()
        assert float((moved > 1e-3).float().mean()) > 0.5, m
        assert float(labels[m].abs().max()) <= bound + 1e-6


def test_self_mm_unimodal_heads_have_zero_weight_until_labels_move(tiny_data):
    model = tiny("self_mm", tiny_data.spec).train()
    batch = batch_of(tiny_data, 16)
    output = model(batch)
    assert set(output.aux_losses) == {"text", "audio", "vision"}
    assert all(float(v) == 0.0 for v in output.aux_losses.values())  # tanh(|y_m - y_f|) = 0 before any update
    assert model.eval()(batch).aux_losses == {}


def test_self_mm_label_state_is_not_saved_and_resets(tiny_data):
    model = tiny("self_mm", tiny_data.spec)
    run_epochs(model, tiny_data, 1)
    assert not any("label" in key for key in model.state_dict())
    assert len(model.unimodal_labels) == len(tiny_data.train)
    model.configure_optimizers(1, 6)
    assert len(model.unimodal_labels) == 0


def test_self_mm_empty_sign_group_keeps_finite_centres():
    from robustmsa.methods.self_mm import UnimodalLabels

    state = UnimodalLabels({"fusion": 3, "text": 2, "audio": 2, "vision": 2}, bound=3.0)
    state.observe(torch.arange(4), torch.tensor([0.5, 1.0, 2.0, 0.2]))  # no negative sample
    features = {"fusion": torch.randn(4, 3), "text": torch.randn(4, 2), "audio": torch.randn(4, 2),
                "vision": torch.randn(4, 2)}
    state.update_features(features, torch.arange(4))
    state.update_centres()
    state.update_labels(features, torch.arange(4), epoch=2)
    for m in ("text", "audio", "vision"):
        assert torch.isfinite(state.labels[m]).all()
        assert torch.equal(state.centres[m]["neg"], torch.zeros(2))


def test_self_mm_parameter_groups_with_a_bert_backbone(tmp_path):
    pytest.importorskip("transformers")
    from hf_fixtures import make_tiny_bert_dir

    directory = make_tiny_bert_dir(tmp_path / "bert")
    spec = make_spec(dims=(32, 3, 5))
    model = create_method("self_mm", spec, text_backbone=f"hf:{directory}")
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert set(groups) == {"text_decay", "text_no_decay", "audio", "video", "other"}
    assert groups["text_decay"]["lr"] == 5e-5 and groups["text_no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in groups["text_no_decay"]["params"])
    assert all(names[id(p)].startswith("audio_model.") for p in groups["audio"]["params"])
    n_grouped = sum(len(g["params"]) for g in groups.values())
    assert n_grouped == len(list(model.parameters()))
    # MISA with the same backbone: the text vector is the masked mean of BERT's states
    misa = create_method("misa", spec, text_backbone=f"hf:{directory}", **TINY["misa"]).eval()
    batch = random_batch(spec, [4, 6], [5, 7], [3, 9])
    batch = replace(batch, text_ids=batch.text_mask * 110)
    assert torch.isfinite(misa(batch).pred).all()
