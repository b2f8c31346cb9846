"""MECAM: the repaired attention (registered, trained, deterministic, non-degenerate), the intra-modal
contrastive losses, parameter counts and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustmsa.methods.mecam  # noqa: F401  (registers "mecam")
from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import Dataset
from robustmsa.engine.batches import SplitTensors, iterate_batches
from robustmsa.methods.base import Batch, create_method, resolve_config
from robustmsa.methods.encoders import RNNEncoder
from robustmsa.methods.mecam import (
    MECAM,
    TalkingHeadsCrossAttention,
    intra_modal_contrastive,
    rnn_with_states,
    sentiment_classes,
)
from robustmsa.methods.mmim import MMILB, MMIM, FusionSubNet

from conftest import BATCH_FIELDS as FIELDS, batch_of, tiny_synth_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return tiny_synth_dataset()



def replaced(batch: Batch, **changes) -> Batch:
    return Batch(**{**{f: getattr(batch, f) for f in FIELDS}, **changes})


def make(dataset: Dataset, seed: int = 0, **overrides) -> MECAM:
    torch.manual_seed(seed)
    return create_method("mecam", dataset.spec, **overrides)


# ------------------------------------------------------------------ sizes and configuration
# Outside the text encoder (768-d): MMIM's encoders and MMILB (with v -> a, d_vout 32) + two talking-heads
# attentions (8 heads x 64 over the text tokens: 804,528 for audio, 812,736 for vision) + the fusion network;
# no CPC.
@pytest.mark.parametrize("dataset, expected",
                         [("mosi", 1_821_681), ("mosei", 1_827_057), ("sims", 1_867_569)])
def test_parameter_counts(dataset, expected):
    model = create_method("mecam", registered_spec(dataset), text_backbone="features")
    print(dataset, model.count_parameters())
    assert model.count_parameters() == expected
    if dataset == "mosi":
        parts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()}
        assert parts == {"text_encoder": 0, "acoustic_enc": 1_744, "visual_enc": 2_976, "mi": 78_480,
                         "attn_audio": 804_528, "attn_vision": 812_736, "fusion_prj": 121_217}


def test_readme_hyper_parameters_and_reuse_of_mmim():
    mosi = resolve_config("mecam", registered_spec("mosi"))
    mosei = resolve_config("mecam", registered_spec("mosei"))
    assert (mosi["alpha"], mosi["beta"], mosi["batch_size"], mosi["lr_main"]) == (0.2, 0.05, 32, 5e-4)
    assert (mosei["alpha"], mosei["beta"], mosei["batch_size"]) == (0.1, 0.05, 64)
    assert mosei["mmilb_batch_fraction"] == 0.5
    assert (mosi["d_vh"], mosi["d_vout"], mosi["d_ah"], mosi["d_aout"]) == (16, 32, 16, 16)
    assert (mosi["early_stop"], mosi["epochs"], mosi["weight_decay_main"]) == (20, 40, 1e-4)
    assert (mosi["cl_temperature"], mosi["cl_negative_weight"], mosi["cl_weight"]) == (0.03, 0.8, 0.2)
    model = create_method("mecam", registered_spec("mosi"))
    assert issubclass(MECAM, MMIM) and isinstance(model.fusion_prj, FusionSubNet)
    assert list(model.mi) == ["tv", "ta", "va"] and all(isinstance(m, MMILB) for m in model.mi.values())
    assert not hasattr(model, "cpc")


# ------------------------------------------------------------------ the attention repair
def test_attention_is_registered_trained_and_gets_gradients(tiny):
    model = make(tiny)
    names = {n for n, _ in model.named_parameters()}
    for module in ("attn_audio", "attn_vision"):
        for part in ("to_q", "to_k", "to_v", "mix_pre", "mix_post", "to_out"):
            assert f"{module}.{part}.weight" in names
    attention = {id(p) for m in (model.attn_audio, model.attn_vision) for p in m.parameters()}
    (_mmilb, main), _ = model.configure_optimizers(epochs=1, steps_per_epoch=4)
    assert attention <= {id(p) for group in main.param_groups for p in group["params"]}
    model.train()
    output = model(batch_of(tiny, 8))
    model.loss(batch_of(tiny, 8), output)[0].backward()
    for module in (model.attn_audio, model.attn_vision):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    before = model.attn_vision.to_k.weight.detach().clone()
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=4)
    model.training_step(batch_of(tiny, 8), optimizers)
    assert not torch.equal(before, model.attn_vision.to_k.weight)


def test_eval_predictions_are_deterministic_and_batch_independent(tiny):
    model = make(tiny).eval()
    batch = batch_of(tiny, 8, "test")
    with torch.no_grad():
        first, second = model(batch).pred, model(batch).pred
        alone = torch.cat([model(Batch(**{f: getattr(batch, f)[i:i + 1] for f in FIELDS})).pred
                           for i in range(8)])
        again = make(tiny).eval()(batch).pred  # a model built with the same seed: same weights, same outputs
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, first)


def test_prediction_depends_on_audio_and_vision_through_the_attention(tiny):
    model = make(tiny).eval()
    batch = batch_of(tiny, 8, "test")
    enc = model.encode(batch)
    with torch.no_grad():
        base = model.attn_audio(enc["audio_states"], enc["audio_mask"], enc["text_states"], batch.text_mask)
        shifted = model.attn_audio(enc["audio_states"].roll(1, dims=1) * enc["audio_mask"][..., None],
                                   enc["audio_mask"], enc["text_states"], batch.text_mask)
        other_text = model.attn_audio(enc["audio_states"], enc["audio_mask"], enc["text_states"].flip(0),
                                      batch.text_mask.flip(0))
        pred = model(batch).pred
        noisy = model(replaced(batch, audio=batch.audio + torch.randn_like(batch.audio),
                               vision=batch.vision + torch.randn_like(batch.vision))).pred
    assert not torch.allclose(base, shifted, atol=1e-4)  # queries (A/V frame states) matter
    assert not torch.allclose(base, other_text, atol=1e-4)  # keys / values (text tokens) matter
    assert not torch.allclose(pred, noisy, atol=1e-4)


def test_padding_is_masked(tiny):
    model = make(tiny).eval()
    batch = batch_of(tiny, 8, "test")
    lengths = batch.audio_lengths.clone()
    assert (lengths < batch.audio.shape[1]).any()
    frames = torch.arange(batch.audio.shape[1])[None, :, None] >= lengths[:, None, None]
    tokens = ~batch.text_mask.bool()[..., None]
    assert tokens.any()
    with torch.no_grad():
        pred = model(batch).pred
        padded = model(replaced(batch, audio=batch.audio + 5.0 * frames,
                                text=batch.text + 5.0 * tokens)).pred
    torch.testing.assert_close(padded, pred)


def test_attention_without_valid_tokens_or_frames_is_finite():
    attention = TalkingHeadsCrossAttention(query_dim=6, text_dim=10, out_dim=4, heads=2, dim_head=3).eval()
    states, text = torch.randn(3, 5, 6), torch.randn(3, 7, 10)
    state_mask = torch.tensor([[True] * 5, [False] * 5, [True, True, False, False, False]])
    text_mask = torch.tensor([[1] * 7, [0] * 7, [1, 1, 1, 0, 0, 0, 0]])
    out = attention(states, state_mask, text, text_mask)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], attention.to_out.bias)  # no valid frame: the output bias alone
    maps = attention.attention_maps(states, text, text_mask)
    assert torch.isfinite(maps).all()


def test_pooled_attention_equals_the_per_frame_computation():
    torch.manual_seed(1)
    attention = TalkingHeadsCrossAttention(query_dim=6, text_dim=10, out_dim=4, heads=2, dim_head=3).eval()
    states, text = torch.randn(2, 5, 6), torch.randn(2, 7, 10)
    state_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    text_mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    maps = attention.attention_maps(states, text, text_mask)
    v = attention.to_v(attention.norm_text(text)).view(2, 7, 2, 3).transpose(1, 2)
    per_frame = (maps @ v).transpose(1, 2).reshape(2, 5, 6)  # (B, L_q, H * dh)
    mean = torch.stack([per_frame[b, state_mask[b]].mean(0) for b in range(2)])
    torch.testing.assert_close(attention(states, state_mask, text, text_mask), attention.to_out(mean))


def test_rnn_with_states_matches_the_shared_encoder():
    torch.manual_seed(0)
    encoder = RNNEncoder(5, 7, 3, dropout=0.0)
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([6, 3, 0, 1])
    final, states, mask = rnn_with_states(encoder, x, lengths)
    torch.testing.assert_close(final, encoder(x, lengths))
    assert mask.tolist()[1] == [True, True, True, False, False, False] and not mask[2].any()
    assert (states[~mask] == 0).all() and states.shape == (4, 6, 7)
    single, _ = encoder.rnn(x[1:2, :3])
    torch.testing.assert_close(states[1, :3], single[0])


# ------------------------------------------------------------------ the contrastive repair
def test_intra_modal_contrastive_equals_the_head_formula():
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    classes = torch.tensor([0.0, 1.0, 0.0, 2.0, 1.0, 0.0])
    tau, w = 0.03, 0.8
    n = torch.nn.functional.normalize(z, dim=1)
    s = (n @ n.t() / tau).double()
    expected = []
    for i in range(6):
        pos = classes == classes[i]
        numerator = torch.exp(s[i][pos]).sum()
        denominator = torch.exp(s[i]).sum() + torch.exp(w * s[i][~pos]).sum() + pos.sum()
        expected.append(-torch.log(numerator / denominator))
    value = intra_modal_contrastive(z, classes, tau, w)
    assert float(value) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-4)
    assert torch.isfinite(intra_modal_contrastive(torch.zeros(4, 5), torch.zeros(4)))  # absent modality


def test_positive_classes():
    labels = torch.tensor([-3.0, -2.6, -0.4, 0.0, 0.4, 0.6, 1.4, 2.8])
    expected = [-3.0, -3.0, -0.0, 0.0, 0.0, 1.0, 1.0, 3.0]
    assert sentiment_classes(labels, "mosi", "classes").tolist() == expected
    assert torch.equal(sentiment_classes(labels, "mosi", "exact"), labels)
    sims = torch.tensor([-1.0, -0.7, -0.6, -0.1, 0.0, 0.1, 0.2, 0.7, 0.8])
    assert sentiment_classes(sims, "sims", "classes").tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError, match="cl_positives"):
        create_method("mecam", registered_spec("mosi"), cl_positives="bins")


def test_nce_is_the_weighted_sum_of_three_intra_modal_terms(tiny):
    model = make(tiny).train()
    batch = batch_of(tiny, 16)
    parts = model.compute(batch, labels=batch.labels)
    assert set(parts.nce_terms) == {"text", "audio", "vision"}
    torch.testing.assert_close(parts.nce, 0.2 * sum(parts.nce_terms.values()))
    model.eval()
    assert float(model(batch).aux_losses["nce"]) == 0.0  # eval forwards use no labels


# ------------------------------------------------------------------ behaviour
def test_forward_backward_every_aux_loss_finite_and_nonzero(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 16)
    model.train()
    model.training_step(batch, optimizers)  # fills the entropy memory
    model.zero_grad()
    output = model(batch)
    for name, value in output.aux_losses.items():
        assert torch.isfinite(value) and float(value.detach()) != 0.0, name
    total, _ = model.loss(batch, output)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


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
    assert np.isfinite([p["loss"] for e in epochs for p in e]).all()
    assert np.mean([p["criterion"] for p in epochs[-1]]) < np.mean([p["criterion"] for p in epochs[0]])
    assert np.mean([p["loss"] for p in epochs[-1]]) < np.mean([p["loss"] for p in epochs[0]])


def test_absent_modalities_give_finite_outputs_and_steps(tiny):
    model = make(tiny)
    optimizers, _ = model.configure_optimizers(epochs=1, steps_per_epoch=10)
    batch = batch_of(tiny, 8)
    absent = replaced(batch, audio=torch.zeros_like(batch.audio), vision=torch.zeros_like(batch.vision),
                      audio_lengths=torch.zeros_like(batch.audio_lengths),
                      vision_lengths=torch.zeros_like(batch.vision_lengths),
                      text=torch.zeros_like(batch.text), text_mask=torch.zeros_like(batch.text_mask))
    model.train()
    for _ in range(3):
        parts = model.training_step(absent, optimizers)
        assert np.isfinite(list(parts.values())).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(absent).pred).all()
