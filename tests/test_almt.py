"""ALMT: equality with the reference implementation (fixture), parameter counts, behaviour, schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import robustmsa.methods.almt  # noqa: F401  (registers "almt")
from robustmsa.datasets.split import DatasetSpec
from robustmsa.methods.almt import (ALMT, SequenceTooLongError, WarmupCosine, load_reference_state_dict,
                                    reference_key_map)
from robustmsa.methods.base import Batch, create_method, resolve_config
from robustmsa.methods.layers import PreNormAttention

FIXTURE = Path(__file__).parent / "data" / "almt_reference_fixture.npz"
FIXTURE_SEED = 20231206  # the seed the fixture's reference model was built with (tests/data/README.md)
# The fixture's tiny configuration (tests/data/README.md): the real architecture at small widths.
TINY = {"token_dim": 16, "proj_heads": 4, "proj_dim_head": 8, "proj_mlp_dim": 32, "l_enc_heads": 4,
        "l_enc_dim_head": 8, "l_enc_mlp_dim": 32, "ahl_heads": 4, "ahl_dim_head": 4, "fusion_heads": 4,
        "fusion_dim_head": 8, "fusion_mlp_dim": 32, "fusion_layer_depth": 2}


def make_spec(name: str = "tiny", dims=(16, 3, 4), lens=(6, 7, 5)) -> DatasetSpec:
    modalities = ("text", "audio", "vision")
    return DatasetSpec(name=name, label_family="sims" if name == "sims" else "mosi", label_range=(-3.0, 3.0),
                       dims=dict(zip(modalities, dims)), seq_lens=dict(zip(modalities, lens)), aligned=False,
                       fingerprint="test:0", source="<test>")


def make_batch(text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
               labels: torch.Tensor | None = None) -> Batch:
    b, lt = text.shape[:2]
    ids = torch.zeros(b, lt, dtype=torch.long)
    return Batch(text=text, text_ids=ids, text_mask=torch.ones_like(ids), text_segments=ids, audio=audio,
                 vision=vision, audio_lengths=torch.full((b,), audio.shape[1]),
                 vision_lengths=torch.full((b,), vision.shape[1]),
                 labels=torch.zeros(b) if labels is None else labels, index=torch.arange(b))


def random_batch(spec: DatasetSpec, b: int = 3, seed: int = 0, lens=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = lens or (spec.seq_lens["text"], spec.seq_lens["audio"], spec.seq_lens["vision"])
    return make_batch(torch.randn(b, lt, spec.dims["text"], generator=g),
                      torch.randn(b, la, spec.dims["audio"], generator=g),
                      torch.randn(b, lv, spec.dims["vision"], generator=g), torch.randn(b, generator=g))


def tiny_model(**overrides) -> ALMT:
    return create_method("almt", make_spec(), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def reference_state(fixture) -> dict[str, torch.Tensor]:
    return {key.removeprefix("state/"): torch.from_numpy(value) for key, value in fixture.items()
            if key.startswith("state/")}


def force_attention_path(model: ALMT, key_space: bool | None) -> ALMT:
    """Force every shared-input attention to the key-space (True) or projected (False) form; None: by cost."""
    for module in model.modules():
        if isinstance(module, PreNormAttention):
            module.key_space = key_space
    return model


# ------------------------------------------------------------------ reference equality
@pytest.mark.parametrize("path", [None, True, False], ids=["auto", "key-space", "projected"])
@pytest.mark.parametrize("inputs, output", [("input", "output"), ("input_short", "output_short")])
def test_matches_reference_fixture(fixture, inputs, output, path):
    model = force_attention_path(tiny_model(), path)
    report = load_reference_state_dict(model, reference_state(fixture))
    assert not report.skipped and len(report.loaded) == len(model.state_dict())
    model.eval()
    batch = make_batch(*(torch.from_numpy(fixture[f"{inputs}/{m}"]) for m in ("text", "audio", "vision")))
    with torch.no_grad():
        pred = model(batch).pred
    np.testing.assert_allclose(pred.numpy(), fixture[output], atol=1e-5, rtol=0)


def test_attention_paths_give_the_same_gradients(fixture):
    batch = random_batch(make_spec(), b=4, seed=5)
    grads = []
    for path in (True, False):
        model = force_attention_path(tiny_model(), path)
        load_reference_state_dict(model, reference_state(fixture))
        model.loss(batch, model(batch))[0].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    key_space, projected = grads
    for name, grad in projected.items():
        if name.endswith("norm_k.bias"):  # cannot move the output (softmax shift invariance): ~0
            assert key_space[name] is None and float(grad.abs().max()) < 1e-5
            continue
        torch.testing.assert_close(key_space[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_identity_output_projection_uses_the_projected_path():
    model = tiny_model(fusion_heads=1, fusion_dim_head=16)  # heads 1, dim_head == dim: no to_out, as the ref
    attention = model.fusion_layer.encoder.layers[0].attn
    assert isinstance(attention.attention.to_out, torch.nn.Identity) and not attention.use_key_space(1, 9)
    assert model(random_batch(make_spec())).pred.shape == (3,)
    assert force_attention_path(model, True)(random_batch(make_spec())).pred.shape == (3,)


def test_same_seed_gives_the_reference_initialisation(fixture):
    torch.manual_seed(FIXTURE_SEED)
    ours = tiny_model().state_dict()
    keys, stats = fixture["init_stats/keys"], fixture["init_stats/sum_sumsq"]
    assert len(keys) == len(ours)
    for key, (total, squares) in zip(keys, stats):
        value = ours[reference_key_map(str(key))].double()
        assert float(value.sum()) == pytest.approx(float(total), rel=1e-4, abs=1e-3), key
        assert float((value ** 2).sum()) == pytest.approx(float(squares), rel=1e-4, abs=1e-3), key


def test_reference_key_map_examples():
    assert reference_key_map("proj_a.1.encoder.layers.0.0.fn.to_q.weight") == \
        "proj_a.transformer.encoder.layers.0.attn.attention.to_q.weight"
    assert reference_key_map("proj_v.0.bias") == "proj_v.linear.bias"
    assert reference_key_map("l_encoder.encoder.layers.1.1.fn.net.3.weight") == \
        "l_encoder.encoder.layers.1.ff.fc2.weight"
    assert reference_key_map("h_hyper_layer.layers.2.0.norm4.bias") == \
        "h_hyper_layer.layers.2.norm_hyper.bias"
    assert reference_key_map("fusion_layer.CrossTransformerEncoder.layers.3.0.fn.to_out.0.weight") == \
        "fusion_layer.encoder.layers.3.attn.attention.to_out.weight"
    assert reference_key_map("module.regression_layer.0.weight") == "head.weight"
    assert reference_key_map("bertmodel.model.encoder.layer.0.output.dense.weight") == \
        "text_encoder.model.encoder.layer.0.output.dense.weight"
    assert reference_key_map("something.else") is None


def test_reference_load_errors_and_bert_skip(fixture):
    state = reference_state(fixture)
    model = tiny_model()
    with pytest.raises(KeyError, match=r"cannot be mapped: proj_x\.weight"):
        load_reference_state_dict(model, {**state, "proj_x.weight": torch.zeros(1)})
    partial = {k: v for k, v in state.items() if not k.startswith("regression_layer")}
    with pytest.raises(KeyError, match=r"lacks 2 key\(s\).*head\.weight"):
        load_reference_state_dict(model, partial)
    with pytest.raises(ValueError, match=r"shape mismatch.*proj_a\.transformer\.pos_embedding"):
        load_reference_state_dict(tiny_model(a_input_length=9), state)
    bert = {"bertmodel.model.embeddings.word_embeddings.weight": torch.zeros(5, 16)}
    with pytest.warns(UserWarning, match=r"skipped 1 BERT key.*'features'"):
        report = load_reference_state_dict(model, {**state, **bert})
    assert report.skipped == list(bert)


def test_bert_keys_go_into_an_hf_text_encoder(tmp_path, fixture):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path)
    model = tiny_model(text_backbone=f"hf:{tmp_path}")
    bert_state = {f"bertmodel.model.{k}": torch.randn_like(v)
                  for k, v in model.text_encoder.model.state_dict().items()}
    report = load_reference_state_dict(model, {**reference_state(fixture), **bert_state})
    assert not report.skipped
    for key, value in bert_state.items():
        assert torch.equal(model.state_dict()[reference_key_map(key)], value)


# ------------------------------------------------------------------ parameter counts (outside BERT)
MOSI_PARTS = {"h_hyper": 1_024, "proj_l": 403_200, "proj_a": 347_136, "proj_v": 365_056, "l_encoder": 593_664,
              "h_hyper_layer": 298_368, "fusion_layer": 595_072, "head": 129}


@pytest.mark.parametrize("name, dims, lens, expected", [
    ("mosi", (768, 5, 20), (50, 375, 500), 2_603_649),
    ("mosei", (768, 74, 35), (50, 500, 500), 3_223_041),
    ("sims", (768, 33, 709), (39, 400, 55), 3_232_897),
])
def test_parameter_counts_equal_the_reference(name, dims, lens, expected):
    model = create_method("almt", make_spec(name, dims, lens))
    assert model.count_parameters() == expected
    if name == "mosi":
        parts = {n: sum(p.numel() for p in c.parameters())
                 for n, c in model.named_children() if n != "text_encoder"}
        assert {"h_hyper": model.h_hyper.numel(), **parts} == MOSI_PARTS
        assert sum(MOSI_PARTS.values()) == expected


def test_parameter_count_excludes_the_text_encoder():
    features = tiny_model()
    model = tiny_model(text_backbone="embedding")  # a 30522 x 16 table, excluded from the count
    assert model.count_parameters() == features.count_parameters()
    assert model.count_parameters(include_text_encoder=True) == features.count_parameters() + 30522 * 16


def test_dataset_sections():
    depths = {name: resolve_config("almt", make_spec(name))["fusion_layer_depth"]
              for name in ("mosi", "mosei", "sims")}
    assert depths == {"mosi": 2, "mosei": 4, "sims": 4}
    synth = resolve_config("almt", make_spec("synth"))
    assert synth["config_section"] == "synth" and synth["epochs"] < 200
    mosi = resolve_config("almt", make_spec("mosi"))
    assert (mosi["lr"], mosi["weight_decay"], mosi["batch_size"], mosi["epochs"]) == (1e-4, 1e-4, 64, 200)


# ------------------------------------------------------------------ behaviour
def test_forward_shapes_and_determinism():
    spec = make_spec()
    torch.manual_seed(0)
    first = tiny_model()
    torch.manual_seed(0)
    second = tiny_model()
    batch = random_batch(spec, b=5)
    out = first(batch)
    assert out.pred.shape == (5,) and out.aux_losses == {}
    assert torch.equal(out.pred, second(batch).pred)
    assert torch.equal(out.pred, first(batch).pred)


def test_default_size_forward_on_a_small_spec():
    spec = make_spec("synth", (64, 8, 12), (24, 40, 32))
    model = create_method("almt", spec)
    assert model.proj_a.transformer.pos_embedding.shape == (1, 48, 128)
    assert model(random_batch(spec, b=2)).pred.shape == (2,)


def test_too_long_input_is_rejected_with_a_clear_message():
    model = tiny_model()
    with pytest.raises(SequenceTooLongError, match=r"audio input has length 9 .* at most 7 .*a_input_length"):
        model(random_batch(make_spec(), lens=(6, 9, 5)))
    with pytest.raises(SequenceTooLongError, match=r"text input has length 8 .* at most 6"):
        model(random_batch(make_spec(), lens=(8, 7, 5)))


def test_shorter_inputs_and_configured_lengths():
    model = tiny_model()
    assert model(random_batch(make_spec(), lens=(2, 1, 3))).pred.shape == (3,)
    longer = tiny_model(v_input_length=11)
    assert longer.proj_v.transformer.pos_embedding.shape == (1, 19, 16)
    assert longer(random_batch(make_spec(), lens=(6, 7, 11))).pred.shape == (3,)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(1)
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    n = 48
    text, audio = torch.randn(n, 6, 16, generator=g), torch.randn(n, 7, 3, generator=g)
    vision = torch.randn(n, 5, 4, generator=g)
    labels = (text[:, :, 0].mean(1) + audio[:, :, 1].mean(1)).clamp(-3, 3) * 2
    batch = make_batch(text, audio, vision, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    losses = [model.training_step(batch, [optimizer])["loss"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.count_parameters() == sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ schedule
# lr per epoch from running the reference's code (core/scheduler.py get_scheduler; train.py steps it after
# every epoch), torch 2.13
REFERENCE_LR_20 = [0, 5e-05, 1e-04, 1e-04, 9.924038765e-05, 9.698463104e-05, 9.330127019e-05,
                   8.830222216e-05, 8.213938048e-05, 7.5e-05, 6.710100717e-05, 5.868240888e-05, 5e-05,
                   4.131759112e-05, 3.289899283e-05, 2.5e-05, 1.786061952e-05, 1.169777784e-05,
                   6.698729811e-06, 3.015368961e-06]
REFERENCE_LR_15 = [0, 6.666666667e-05, 1e-04, 9.865224353e-05, 9.468163202e-05, 8.830222216e-05,
                   7.985792959e-05, 6.98039883e-05, 5.868240888e-05, 4.709275855e-05, 3.565983836e-05,
                   2.5e-05, 1.568791811e-05, 8.225609429e-06, 3.015368961e-06]
REFERENCE_LR_200 = {1: 0.0, 2: 5e-06, 20: 9.5e-05, 21: 1e-04, 22: 1e-04, 23: 9.999238476e-05,
                    100: 6.039558454e-05, 200: 3.045864905e-08}


def lr_per_epoch(epochs: int) -> list[float]:
    model = tiny_model(lr=1e-4)
    (optimizer,), (scheduler,) = model.configure_optimizers(epochs, steps_per_epoch=3)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    lrs = []
    for _ in range(epochs):  # the engine: train the epoch, then scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op, as an epoch would be for the schedule
        scheduler.step()
    return lrs


@pytest.mark.parametrize("epochs, expected", [(20, REFERENCE_LR_20), (15, REFERENCE_LR_15)])
def test_schedule_matches_the_reference(epochs, expected):
    assert lr_per_epoch(epochs) == pytest.approx(expected, rel=1e-8, abs=1e-15)


def test_schedule_200_epochs():
    lrs = lr_per_epoch(200)
    assert {e: lrs[e - 1] for e in REFERENCE_LR_200} == pytest.approx(REFERENCE_LR_200, rel=1e-8, abs=1e-15)
    assert WarmupCosine(30).first_cosine == 4  # 0.1 * 30 = 3.0000000000000004: k = 3 is still warm-up
    assert WarmupCosine(10, 0.0)(0) == 1.0 and WarmupCosine(10, 0.0)(5) == pytest.approx(0.5)
    assert math.isclose(WarmupCosine(200)(21), 1.0)
