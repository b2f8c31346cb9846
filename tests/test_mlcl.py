"""MLCL: parameter counts, reference-equal building blocks, losses, repairs (pooling, masks, vt weights, dims)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustmsa.methods.mlcl  # noqa: F401  (registers "mlcl")
from robustmsa.datasets import load
from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import Dataset, DatasetSpec
from robustmsa.engine.batches import SplitTensors, iterate_batches
from robustmsa.methods.base import Batch, ConfigError, create_method, resolve_config
from robustmsa.methods.mlcl import MLCL, PAIRS, CrossModalTransformer, info_nce
from robustmsa.methods.mult_layers import MulTEncoder, fairseq_positions, length_positions, sinusoidal_table

# The real architecture at small widths (heads divide d_model).
TINY = {"d_model": 16, "num_heads": 4, "layers": 2, "ct_depth": 2, "ct_dim_head": 4, "fusion_ff_dim": 32}
from conftest import BATCH_FIELDS as FIELDS, tiny_synth_dataset


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust to a busy machine)
    yield
    torch.set_num_threads(before)


def make_spec(dims=(12, 3, 5), lens=(7, 9, 6), name: str = "tiny") -> DatasetSpec:
    modalities = ("text", "audio", "vision")
    return DatasetSpec(name=name, label_family="mosi", label_range=(-3.0, 3.0), dims=dict(zip(modalities, dims)),
                       seq_lens=dict(zip(modalities, lens)), aligned=False, fingerprint="test:0", source="<test>")


def random_batch(spec: DatasetSpec, b: int = 6, seed: int = 0, text_lengths=None, audio_lengths=None,
                 vision_lengths=None) -> Batch:
    """Random features, zero beyond each valid length (as MMSA pads); [CLS]/[SEP] ids at both ends."""
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = (spec.seq_lens[m] for m in ("text", "audio", "vision"))

    def lengths(given, n, low):
        return torch.tensor(given) if given is not None else torch.randint(low, n + 1, (b,), generator=g)

    t_len, a_len, v_len = lengths(text_lengths, lt, 3), lengths(audio_lengths, la, 1), lengths(vision_lengths, lv, 1)

    def padded(n, d, valid):
        x = torch.randn(b, n, d, generator=g)
        return x * (torch.arange(n)[None, :] < valid[:, None])[..., None]

    mask = (torch.arange(lt)[None, :] < t_len[:, None]).long()
    ids = torch.randint(1000, 2000, (b, lt), generator=g) * mask
    ids[:, 0] = 101
    ids[torch.arange(b), t_len - 1] = 102
    return Batch(text=padded(lt, spec.dims["text"], t_len), text_ids=ids, text_mask=mask,
                 text_segments=torch.zeros_like(ids), audio=padded(la, spec.dims["audio"], a_len),
                 vision=padded(lv, spec.dims["vision"], v_len), audio_lengths=a_len, vision_lengths=v_len,
                 labels=torch.randn(b, generator=g).clamp(-3, 3), index=torch.arange(b))


def sub_batch(batch: Batch, rows) -> Batch:
    return Batch(**{f: getattr(batch, f)[rows] for f in FIELDS})


def tiny_model(spec: DatasetSpec | None = None, seed: int = 0, **overrides) -> MLCL:
    torch.manual_seed(seed)
    return create_method("mlcl", spec or make_spec(), **{**TINY, **overrides})


# ------------------------------------------------------------------ configuration and size
# Parameters outside the text encoder with 768-d text features; the reference's MLCL (MOSEI: 74/35) has the same
# non-BERT modules (its six CrossTransformers are all constructed, cross_vt unused) plus AutomaticWeightedLoss's 10.
@pytest.mark.parametrize("name, expected", [("mosi", 99_809_921), ("mosei", 99_906_689), ("sims", 100_635_905)])
def test_parameter_counts_for_the_registered_shapes(name, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_method("mlcl", registered_spec(name), text_backbone="features")
    count = model.count_parameters()
    print(f"mlcl {name}: {count:,} parameters outside the text encoder")
    assert count == expected
    d, spec = 384, registered_spec(name)
    convs = 3 * d * (768 + spec.dims["audio"] + spec.dims["vision"])
    assert count - convs == 99_809_921 - 3 * d * (768 + 5 + 20)  # only the convolutions depend on the data
    assert sum(p.numel() for p in model.cross.parameters()) == 6 * 13_394_688


def test_configuration_sections():
    config = resolve_config("mlcl", registered_spec("mosi"))
    published = {"d_model": 384, "num_heads": 16, "layers": 3, "attn_dropout": 0.5, "relu_dropout": 0.3,
                 "res_dropout": 0.3, "embed_dropout": 0.2, "rdrop": 0.1, "ct_depth": 4, "ct_dim_head": 64,
                 "ct_dropout": 0.5, "head_dropout": 0.5, "fusion_layers": 2, "fusion_ff_dim": 2048,
                 "fusion_dropout": 0.1, "temperature": 0.1, "alpha": 0.01, "beta": 0.08, "gamma": 0.11,
                 "train_criterion": "l1", "criterion": "mse", "lr": 2e-5, "weight_decay": 0.0, "batch_size": 70,
                 "epochs": 50, "pooling": "last_valid", "init": "bert"}
    assert {k: config[k] for k in published} == published
    assert resolve_config("mlcl", registered_spec("mosei"))["config_section"] == "mosei"
    assert resolve_config("mlcl", registered_spec("sims"))["config_section"] == "sims"
    synth = resolve_config("mlcl", load("synth").spec)
    assert synth["config_section"] == "synth" and synth["d_model"] % synth["num_heads"] == 0


def test_invalid_configurations_are_rejected():
    with pytest.raises(ConfigError, match="must divide"):
        tiny_model(d_model=18)
    with pytest.raises(ConfigError, match="pooling"):
        tiny_model(pooling="mean")
    with pytest.raises(ConfigError, match="init"):
        tiny_model(init="xavier")


def test_optimiser_is_adam_without_weight_decay():
    model = tiny_model(lr=2e-5)
    (optimizer,), schedulers = model.configure_optimizers(epochs=50, steps_per_epoch=10)
    assert type(optimizer) is torch.optim.Adam and not schedulers
    assert optimizer.param_groups[0]["lr"] == 2e-5 and optimizer.param_groups[0]["weight_decay"] == 0.0
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.count_parameters(True)


@torch.no_grad()
def test_bert_initialisation_of_linear_and_layernorm_only():
    model = tiny_model(d_model=64, num_heads=4)
    fc = model.cross["ta"].blocks[0].ff.fc1
    assert float(fc.weight.std()) == pytest.approx(0.02, rel=0.1) and not fc.bias.any()
    assert float(model.head[0].weight.std()) == pytest.approx(0.02, rel=0.1)
    assert float(model.trans_a.layers[0].fc1.weight.std()) == pytest.approx(0.02, rel=0.1)  # MulT's xavier replaced
    # not nn.Linear: the Conv1d keeps torch's default, MulT's packed attention projection its Xavier init
    assert float(model.proj_a.weight.abs().max()) > 0.1
    in_proj = model.trans_a.layers[0].self_attn.in_proj_weight
    assert float(in_proj.abs().max()) <= (6 / (4 * 64)) ** 0.5 + 1e-6 and float(in_proj.std()) > 0.05
    default = tiny_model(d_model=64, num_heads=4, init="torch")
    assert float(default.cross["ta"].blocks[0].ff.fc1.weight.std()) > 0.05


# ------------------------------------------------------------------ building blocks equal the reference
def test_mult_encoder_matches_the_reference_numbers():
    # Numbers from the reference MCLC_MSA/modules/transformer.py TransformerEncoder(16, 4, 2) built after
    # torch.manual_seed(0), eval mode, on x = torch.randn(2, 6, 16) drawn next with x[1, 4:] = 0 (no mask, fairseq
    # positions); our module creates its parameters in the same order, so the same seed gives the same weights.
    torch.manual_seed(0)
    encoder = MulTEncoder(16, 4, 2).eval()
    x = torch.randn(2, 6, 16)
    x[1, 4:] = 0
    with torch.no_grad():
        full = encoder(x)
        last = encoder(x, select=torch.tensor([5, 5]))
    expected_last = [[0.123261, -0.613974, -2.701841, 0.496958], [1.067639, -1.215592, -0.729098, 1.105998]]
    expected_row2 = [[-0.509424, -0.097797, 0.703735, -0.040434], [1.136582, -0.225874, 0.814874, 1.238464]]
    torch.testing.assert_close(full[:, -1, :4], torch.tensor(expected_last), atol=1e-5, rtol=0)
    torch.testing.assert_close(full[:, 2, :4], torch.tensor(expected_row2), atol=1e-5, rtol=0)
    torch.testing.assert_close(last, full[:, -1], atol=1e-6, rtol=0)


def test_cross_transformer_matches_the_reference_numbers():
    # The reference MLCL_model.py CrossTransformer(16, 16, depth=2, heads=4, dim_head=8) after torch.manual_seed(1),
    # eval, on latent, context = torch.randn(3, 16), torch.randn(3, 16) drawn next.
    torch.manual_seed(1)
    block = CrossModalTransformer(16, depth=2, heads=4, dim_head=8, ff_mult=4).eval()
    latent, context = torch.randn(3, 16), torch.randn(3, 16)
    expected = [[0.447661, 2.273178, -1.070345, -0.753240], [-0.578851, -0.800592, 0.219254, 0.269638],
                [-1.693197, -0.153408, 0.955679, 0.022970]]
    with torch.no_grad():
        torch.testing.assert_close(block(latent, context)[:, :4], torch.tensor(expected), atol=1e-5, rtol=0)


def test_sinusoidal_positions_are_fairseqs():
    table = sinusoidal_table(5, 6)
    assert not table[0].any()  # padding_idx 0
    half, rate = 3, np.log(10000) / 2
    angles = [2 * np.exp(-rate * i) for i in range(half)]
    expected = [np.sin(a) for a in angles] + [np.cos(a) for a in angles]
    np.testing.assert_allclose(table[2].numpy(), expected, atol=1e-6)
    x = torch.tensor([[[1.0], [0.0], [2.0]]])
    assert fairseq_positions(x).tolist() == [[1, 0, 3]]
    assert length_positions(torch.tensor([2, 0]), 3).tolist() == [[1, 2, 0], [0, 0, 0]]


def test_info_nce():
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / 0.1
    manual = -torch.log_softmax(logits, dim=1).diag().mean()
    torch.testing.assert_close(info_nce(q, k, 0.1), manual)
    assert float(info_nce(q[:1], k[:1])) == 0.0  # one sample: no negatives
    assert torch.isfinite(info_nce(torch.zeros(4, 8), k))  # all-zero vectors normalise to zero, not NaN


# ------------------------------------------------------------------ forward, losses, training
def test_forward_backward_and_the_three_contrastive_losses():
    model = tiny_model().train()
    batch = random_batch(make_spec())
    output = model(batch)
    assert output.pred.shape == (6,) and set(output.aux_losses) == {"umcl", "tmcl", "bmcl"}
    for name, value in output.aux_losses.items():
        assert torch.isfinite(value) and float(value.detach()) > 0, name
    total, parts = model.loss(batch, output)
    main = torch.nn.functional.l1_loss(output.pred, batch.labels)
    expected = (main + 0.01 / 3 * output.aux_losses["umcl"] + 0.08 / 3 * output.aux_losses["tmcl"]
                + 0.11 / 3 * output.aux_losses["bmcl"])
    torch.testing.assert_close(total, expected)
    assert parts["criterion"] == pytest.approx(float(main.detach()))
    total.backward()
    for pair in PAIRS:  # at, vt and va are reached only through BMCL
        grads = [p.grad for p in model.cross[pair].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), pair
        assert any(float(g.abs().sum()) > 0 for g in grads), pair
    model.eval()
    with torch.no_grad():
        assert model(batch).aux_losses == {}  # evaluation computes the prediction only, as the reference's test()


def test_the_six_cross_modal_blocks_have_their_own_parameters_and_each_is_used_once():
    model = tiny_model().train()
    ids = {pair: {id(p) for p in model.cross[pair].parameters()} for pair in PAIRS}
    for i, a in enumerate(PAIRS):
        for b in PAIRS[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
            assert not all(torch.equal(x, y) for x, y in zip(model.cross[a].parameters(),
                                                             model.cross[b].parameters())), (a, b)
    calls = {pair: [] for pair in PAIRS}
    for pair in PAIRS:  # the reference computes C_vt with cross_av; each module must be called once, on its pair
        model.cross[pair].register_forward_hook(lambda m, args, out, pair=pair: calls[pair].append(args))
    model(random_batch(make_spec()))
    assert all(len(c) == 1 for c in calls.values())
    t1, _ = calls["ta"][0]
    v1_latent, t1_context = calls["vt"][0]
    torch.testing.assert_close(t1_context, t1)
    torch.testing.assert_close(calls["av"][0][1], v1_latent)  # av's context is v1, vt's latent is v1


@pytest.mark.parametrize("dims", [(12, 5, 20), (12, 33, 709), (12, 1, 2)], ids=["mosi-5-20", "sims-33-709", "1-2"])
def test_audio_and_vision_widths_come_from_the_data(dims):
    spec = make_spec(dims=dims)
    model = tiny_model(spec).train()
    assert model.proj_a.in_channels == dims[1] and model.proj_v.in_channels == dims[2]
    output = model(random_batch(spec))
    assert torch.isfinite(output.pred).all()
    model.loss(random_batch(spec), output)[0].backward()


def tiny_synth(n_train: int = 96) -> Dataset:
    return tiny_synth_dataset(n_train)


def test_training_lowers_the_loss_on_tiny_synth_data():
    data = tiny_synth()
    model = tiny_model(data.spec, seed=1, lr=3e-3).train()
    optimizers, _ = model.configure_optimizers(epochs=10, steps_per_epoch=3)
    tensors = SplitTensors.from_split(data.train)
    epochs = []
    for epoch in range(10):
        generator = torch.Generator().manual_seed(epoch)
        epochs.append(np.mean([model.training_step(batch, optimizers)["loss"]
                               for batch in iterate_batches(tensors, 32, shuffle=True, generator=generator)]))
    assert np.isfinite(epochs).all()
    assert np.mean(epochs[-3:]) < 0.85 * epochs[0]


# ------------------------------------------------------------------ pooling, masks, absent modalities
@pytest.mark.parametrize("pooling", ["last_valid", "last_padded"])
def test_eval_prediction_does_not_depend_on_the_other_samples(pooling):
    spec = make_spec()
    model = tiny_model(spec, pooling=pooling).eval()
    batch = random_batch(spec, b=8, seed=3)
    with torch.no_grad():
        together = model(batch).pred
        alone = torch.cat([model(sub_batch(batch, slice(i, i + 1))).pred for i in range(8)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


def test_padding_does_not_leak_with_last_valid_pooling():
    spec = make_spec()
    batch = random_batch(spec, b=4, seed=4, text_lengths=[4, 7, 5, 3], audio_lengths=[3, 9, 5, 1],
                         vision_lengths=[2, 6, 4, 6])
    noisy = sub_batch(batch, slice(None))  # garbage beyond the valid lengths, and longer padding
    g = torch.Generator().manual_seed(9)
    for name, lengths in (("text", batch.text_lengths), ("audio", batch.audio_lengths),
                          ("vision", batch.vision_lengths)):
        x = getattr(batch, name)
        pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
        x = torch.where(pad[..., None], torch.randn(x.shape, generator=g), x)
        setattr(noisy, name, torch.cat([x, torch.randn(x.shape[0], 3, x.shape[2], generator=g)], dim=1))
    for name in ("text_ids", "text_mask", "text_segments"):
        setattr(noisy, name, torch.cat([getattr(batch, name), torch.zeros(4, 3, dtype=torch.long)], dim=1))
    model = tiny_model(spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pred, model(batch).pred, atol=1e-5, rtol=1e-4)
        published = tiny_model(spec, pooling="last_padded").eval()
        assert not torch.allclose(published(noisy).pred, published(batch).pred, atol=1e-3)  # the defect repaired


def test_last_padded_pooling_is_the_published_computation():
    spec = make_spec()
    model = tiny_model(spec, pooling="last_padded").eval()
    batch = random_batch(spec, b=3, seed=5)
    with torch.no_grad():
        h = model.proj_a(batch.audio.transpose(1, 2)).transpose(1, 2)
        expected = model.trans_a(h)[:, -1]  # no mask, fairseq positions, index L - 1
        got = model.encode_sequence(model.proj_a, model.trans_a, batch.audio, batch.audio_lengths)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        text = model.proj_l(batch.text.transpose(1, 2))[:, :, -1]
        torch.testing.assert_close(model.encode_text(batch), text, atol=1e-6, rtol=0)


def test_last_valid_pooling_reads_the_sep_token_and_the_last_valid_frame():
    spec = make_spec()
    model = tiny_model(spec).eval()
    batch = random_batch(spec, b=3, seed=6, text_lengths=[3, 7, 5], audio_lengths=[2, 9, 4])
    with torch.no_grad():
        conv = model.proj_l(batch.text.transpose(1, 2)).transpose(1, 2)  # the rows beyond each length are zero
        torch.testing.assert_close(model.encode_text(batch), conv[torch.arange(3), torch.tensor([2, 6, 4])],
                                   atol=1e-6, rtol=0)
        got = model.encode_sequence(model.proj_a, model.trans_a, batch.audio, batch.audio_lengths)
        for i, n in enumerate([2, 9, 4]):  # each sample alone, cut to its valid length, no mask needed
            h = model.proj_a(batch.audio[i:i + 1, :n].transpose(1, 2)).transpose(1, 2)
            torch.testing.assert_close(got[i], model.trans_a(h, positions=torch.arange(1, n + 1)[None])[0, -1],
                                       atol=1e-5, rtol=0)


def test_absent_modalities_are_finite_and_equal_the_published_all_zero_encoding():
    spec = make_spec()
    model = tiny_model(spec)
    batch = random_batch(spec, b=5, seed=7)
    absent = sub_batch(batch, slice(None))
    absent.audio, absent.vision = torch.zeros_like(batch.audio), torch.zeros_like(batch.vision)
    absent.audio_lengths, absent.vision_lengths = torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    model.train()
    output = model(absent)
    total, _ = model.loss(absent, output)
    assert torch.isfinite(output.pred).all() and torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    published = tiny_model(spec, pooling="last_padded").eval()
    with torch.no_grad():
        assert torch.isfinite(model(absent).pred).all()
        ours = model.encode_sequence(model.proj_a, model.trans_a, absent.audio, absent.audio_lengths)
        reference = published.encode_sequence(published.proj_a, published.trans_a, absent.audio,
                                              absent.audio_lengths)
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)  # the encoder's learned "empty" output


def test_word_aligned_batches():
    spec = make_spec(lens=(8, 8, 8))
    text_lengths = [8, 5, 3, 6]
    batch = random_batch(spec, b=4, seed=8, text_lengths=text_lengths, audio_lengths=text_lengths,
                         vision_lengths=text_lengths)
    model = tiny_model(spec).eval()
    with torch.no_grad():
        together = model(batch).pred
        alone = torch.cat([model(sub_batch(batch, slice(i, i + 1))).pred for i in range(4)])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


def test_default_synth_model_runs_on_an_engine_batch():
    data = tiny_synth(16)
    model = create_method("mlcl", data.spec).train()
    batch = SplitTensors.from_split(data.train).batch(torch.arange(16))
    output = model(batch)
    assert output.pred.shape == (16,) and all(float(v.detach()) > 0 for v in output.aux_losses.values())
