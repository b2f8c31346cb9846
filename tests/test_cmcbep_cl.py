"""CMCBEP-CL (zbxshangqiu/CMCBEP-CL@c39f704): shapes, parameter counts, losses, repairs, training."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import robustmsa.methods.cmcbep_cl  # noqa: F401  (registers "cmcbep_cl")
from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import Dataset, DatasetSpec
from robustmsa.engine.batches import SplitTensors, iterate_batches
from robustmsa.methods.base import Batch, ConfigError, create_method, resolve_config
from robustmsa.methods.cmcbep_cl import (AUX_LOSSES, CMCBEPCL, MODALITY_ORDER, ChunkAttention, StdLayerNorm,
                                         assign_slots, cmd_loss, diff_loss, info_nce, lead_order)

# A tiny configuration of the real architecture (every block, narrow widths) for fast tests.
TINY = {"d_prjh": 16, "d_vout": 16, "d_aout": 16, "d_vh": 4, "d_ah": 4, "multi_head": 4, "ff_size": 32,
        "lead_encoder_heads": 4, "lead_encoder_ff": 8}
from conftest import BATCH_FIELDS as FIELDS, tiny_synth_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def make_spec(name: str = "tiny", dims=(12, 3, 5), lens=(6, 7, 9)) -> DatasetSpec:
    modalities = ("text", "audio", "vision")
    return DatasetSpec(name=name, label_family="sims" if name == "sims" else "mosi", label_range=(-3.0, 3.0),
                       dims=dict(zip(modalities, dims)), seq_lens=dict(zip(modalities, lens)), aligned=False,
                       fingerprint="test:0", source="<test>")


def random_batch(spec: DatasetSpec, b: int = 6, seed: int = 0, absent: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = (spec.seq_lens[m] for m in ("text", "audio", "vision"))
    audio_lengths = torch.randint(1, la + 1, (b,), generator=g)
    vision_lengths = torch.randint(1, lv + 1, (b,), generator=g)
    audio = torch.randn(b, la, spec.dims["audio"], generator=g)
    vision = torch.randn(b, lv, spec.dims["vision"], generator=g)
    if absent:
        audio_lengths, vision_lengths = torch.zeros_like(audio_lengths), torch.zeros_like(vision_lengths)
    audio = audio * (torch.arange(la)[None, :] < audio_lengths[:, None])[..., None]
    vision = vision * (torch.arange(lv)[None, :] < vision_lengths[:, None])[..., None]
    ids = torch.zeros(b, lt, dtype=torch.long)
    return Batch(text=torch.randn(b, lt, spec.dims["text"], generator=g), text_ids=ids,
                 text_mask=torch.ones_like(ids), text_segments=ids, audio=audio, vision=vision,
                 audio_lengths=audio_lengths, vision_lengths=vision_lengths,
                 labels=torch.empty(b).uniform_(-3, 3, generator=g), index=torch.arange(b))


def select(batch: Batch, index) -> Batch:
    return Batch(**{f: getattr(batch, f)[index] for f in FIELDS})


def tiny_model(**overrides) -> CMCBEPCL:
    return create_method("cmcbep_cl", make_spec(), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def tiny_synth() -> Dataset:
    return tiny_synth_dataset()


# ------------------------------------------------------------------ parameter counts (outside the text encoder)
# Equal to the reference's live modules (model.py's MMIM minus its unused modules; checked by loading a reference
# state dict into ours and comparing outputs, docs/methods.md). 768-d text features.
MOSI_PARTS = {"text_proj": 49_216, "vision_encoder": 3_520, "audio_encoder": 2_560, "estimator_vt": 351_681,
              "estimator_ta": 351_681, "estimator_av": 351_681, "lead_encoder": 38_048, "lead_attention": 16_640,
              "lead_blocks": 50_176, "contrastive": 12_480, "fusion": 372_032, "fusion_head": 8_385,
              "filter_x": 29_376, "filter_y": 29_376, "filter_z": 29_376, "head_x": 65, "head_y": 65, "head_z": 65,
              "difference_fusion": 372_032, "semantic_head": 12_481, "balance": 30}


@pytest.mark.parametrize("name, expected", [("mosi", 2_080_966), ("mosei", 2_086_342), ("sims", 2_126_854)])
def test_parameter_counts_for_the_registered_shapes(name, expected):
    model = create_method("cmcbep_cl", registered_spec(name))
    print(f"cmcbep_cl {name}: {model.count_parameters():,} parameters outside the text encoder")
    assert model.count_parameters() == expected
    if name == "mosi":
        parts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children() if n != "text_encoder"}
        assert parts == MOSI_PARTS and sum(parts.values()) == expected


def test_parameter_count_excludes_the_text_encoder_and_init_skips_it():
    torch.manual_seed(0)
    model = tiny_model(text_backbone="embedding")
    assert model.count_parameters(include_text_encoder=True) == model.count_parameters() + 30522 * 12
    # the text encoder keeps its own init (N(0, 1) embedding); every other weight is kaiming-normal (fan_in)
    assert float(model.text_encoder.embedding.weight[1:].detach().std()) == pytest.approx(1.0, abs=0.02)
    wide = model.estimator_vt.ffn[3].weight.detach()  # Linear(32 -> 16): std sqrt(2 / 32)
    assert float(wide.std()) == pytest.approx(math.sqrt(2 / 32), rel=0.15)
    default = tiny_model(kaiming_init=False).estimator_vt.ffn[3].weight.detach()  # PyTorch default: U(+-1/sqrt(32))
    assert float(default.abs().max()) <= 1 / math.sqrt(32)


# ------------------------------------------------------------------ configuration
def test_dataset_sections_and_reference_hyper_parameters():
    for name in ("mosi", "mosei", "sims"):
        c = resolve_config("cmcbep_cl", make_spec(name))
        assert c["config_section"] == name
        assert (c["batch_size"], c["lr"], c["lr_text"], c["weight_decay"], c["grad_clip"], c["epochs"],
                c["early_stop"]) == (120, 1e-3, 5e-5, 3e-4, 1.0, 90, 50)
        assert (c["d_prjh"], c["d_vh"], c["d_ah"], c["multi_head"], c["ff_size"], c["normlayer3"]) == (
            64, 16, 16, 8, 2560, 2)
        assert c["main_weight"] == pytest.approx(4 / 3)
        assert c["aux_weights"] == pytest.approx({"preds1": 2 / 3, "diff": 1 / 6, "scores": 1 / 3, "cmd": 0.5,
                                                  "contrastive": 0.1})
    synth = resolve_config("cmcbep_cl", make_spec("synth"))
    assert synth["config_section"] == "synth" and synth["epochs"] < 90


def test_optimiser_and_schedule():
    model = tiny_model(text_backbone="embedding")
    (optimizer,), (scheduler,) = model.configure_optimizers(epochs=90, steps_per_epoch=3)
    assert isinstance(optimizer, torch.optim.Adamax)
    text_group, main_group = optimizer.param_groups
    assert (text_group["lr"], text_group["weight_decay"]) == (5e-5, 3e-4)
    assert (main_group["lr"], main_group["weight_decay"]) == (1e-3, 3e-4)
    assert len(text_group["params"]) == 1 and len(main_group["params"]) == len(list(model.parameters())) - 1
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (scheduler.patience, scheduler.factor, scheduler.mode) == (20, 0.5, "min")
    (optimizer,), _ = tiny_model().configure_optimizers(epochs=1, steps_per_epoch=1)  # features: no text group
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"d_vout": 8}, "must equal d_prjh"),
    ({"lead_assignment": "first_sample"}, "lead_assignment must be one of"),
    ({"score_bound": "clip"}, "score_bound must be one of"),
    ({"multi_head": 5}, "divisible"),
    ({"aux_weights": {"preds1": 1.0, "nce": 1.0}}, r"unknown: \['nce'\], missing: \['cmd', 'contrastive'"),
    ({"normlayer3": 0}, "normlayer3 must be >= 1"),
])
def test_invalid_configurations_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_model(**overrides)


# ------------------------------------------------------------------ blocks
def test_layer_norm_uses_the_unbiased_std():
    x = torch.randn(3, 16)
    expected = (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=True, keepdim=True) + 1e-6)
    torch.testing.assert_close(StdLayerNorm(16)(x), expected)
    assert torch.equal(StdLayerNorm(4)(torch.full((1, 4), 2.0)), torch.zeros(1, 4))  # constant input: finite


def test_chunk_attention_is_attention_between_chunks_and_the_mask_makes_it_uniform():
    torch.manual_seed(0)
    att = ChunkAttention(16, 4, dropout=0.0)
    v, k, q = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16)
    vv, kk, qq = (lin(t).view(3, 4, 4) for lin, t in ((att.linear_v, v), (att.linear_k, k), (att.linear_q, q)))
    weights = torch.einsum("bid,bjd->bij", qq, kk).div(2.0).softmax(-1)  # scale sqrt(16 / 4)
    chunks = torch.einsum("bij,bjd->bid", weights, vv)  # (B, chunk, dim)
    expected = att.linear_merge(chunks.transpose(1, 2).reshape(3, 16))  # flattened chunk-minor
    torch.testing.assert_close(att(v, k, q), expected)
    mask = torch.tensor([True, False, True])
    uniform = att.linear_merge(vv.mean(dim=1, keepdim=True).expand(-1, 4, -1).transpose(1, 2).reshape(3, 16))
    out = att(v, k, q, mask)
    torch.testing.assert_close(out[mask], uniform[mask])
    torch.testing.assert_close(out[~mask], expected[~mask])


def test_loss_functions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    sa, sb = torch.sigmoid(a), torch.sigmoid(b)
    assert float(cmd_loss(a, b)) == pytest.approx(float((sa.mean(0) - sb.mean(0)).norm()), rel=1e-6)
    ca, cb = sa - sa.mean(0), sb - sb.mean(0)
    ca, cb = ca / (ca.norm(dim=1, keepdim=True) + 1e-6), cb / (cb.norm(dim=1, keepdim=True) + 1e-6)
    assert float(diff_loss(a, b)) == pytest.approx(float((ca.T @ cb).pow(2).mean()), rel=1e-5)
    na, nb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = na @ nb.T / 0.1
    expected = -(logits.diag() - logits.logsumexp(dim=1)).mean()
    assert float(info_nce(na, nb, 0.1)) == pytest.approx(float(expected), rel=1e-5)
    same = a.clone().requires_grad_()
    cmd_loss(same, a).backward()  # equal means: zero, with a finite (zero) gradient
    assert torch.isfinite(same.grad).all()


# ------------------------------------------------------------------ lead-modality assignment (repairs)
# The reference's six hard-coded branches (src/model.py): argsort of (S_v, S_t, S_a) -> modalities in (x, y, z).
PUBLISHED_BRANCHES = {(1, 0, 2): ("vision", "text", "audio"), (1, 2, 0): ("vision", "audio", "text"),
                      (0, 1, 2): ("text", "vision", "audio"), (0, 2, 1): ("text", "audio", "vision"),
                      (2, 1, 0): ("audio", "vision", "text"), (2, 0, 1): ("audio", "text", "vision")}


def test_lead_order_per_sample_ranked_and_published_swap():
    relevance = torch.tensor([[float(3 - rank) for rank in perm] for perm in itertools.permutations(range(3))])
    ranked = lead_order(relevance, "ranked")
    swapped = lead_order(relevance, "published_swap")
    for row, r, s in zip(relevance, ranked.tolist(), swapped.tolist()):
        argsort = tuple(int(i) for i in torch.argsort(row))
        assert r == list(argsort)  # (lowest, middle, highest): slot y (the lead) is the middle one
        assert tuple(MODALITY_ORDER[i] for i in s) == PUBLISHED_BRANCHES[argsort]
    # every row got its own order (the reference would apply row 0's to all)
    assert len({tuple(r) for r in ranked.tolist()}) == 6
    ties = lead_order(torch.zeros(2, 3))
    assert ties.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_assign_slots_is_a_per_sample_gather():
    stacked = torch.randn(6, 3, 4)
    order = torch.tensor(list(itertools.permutations(range(3))))
    x, y, z = assign_slots(stacked, order)
    for b in range(6):
        assert torch.equal(torch.stack([x[b], y[b], z[b]]), stacked[b, order[b]])


def test_eval_predictions_do_not_depend_on_the_batch():
    spec = make_spec()
    torch.manual_seed(0)
    model = tiny_model().eval()
    batch = random_batch(spec, b=8, seed=3)
    with torch.no_grad():
        stages = model.stages(batch)
        together = stages.final
        alone = torch.cat([model(select(batch, slice(i, i + 1))).pred for i in range(8)])
        shuffled = model(select(batch, torch.arange(7, -1, -1))).pred.flip(0)
    assert len({tuple(o) for o in stages.order.tolist()}) > 1  # the batch mixes lead assignments
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, together, atol=1e-5, rtol=1e-5)


def test_lead_is_the_middle_ranked_modality():
    torch.manual_seed(0)
    model = tiny_model().eval()
    batch = random_batch(make_spec(), b=8, seed=4)
    with torch.no_grad():
        s = model.stages(batch)
    expected = torch.argsort(s.relevance, dim=-1, stable=True)
    assert torch.equal(s.order, expected)
    i_vt, i_ta, i_av = s.scores.unbind(-1)
    torch.testing.assert_close(s.relevance, torch.stack([i_vt + i_av, i_vt + i_ta, i_ta + i_av], -1))


# ------------------------------------------------------------------ losses
def test_forward_backward_every_aux_loss_finite_nonzero_and_every_parameter_trained():
    torch.manual_seed(0)
    model = tiny_model().train()
    batch = random_batch(make_spec(), b=6)
    out = model(batch)
    assert out.pred.shape == (6,)
    assert set(out.aux_losses) == set(AUX_LOSSES)
    for key, value in out.aux_losses.items():
        assert value.dim() == 0 and torch.isfinite(value) and float(value.detach()) != 0.0, key
    total, parts = model.loss(batch, out)
    weights = model.config["aux_weights"]
    expected = 4 / 3 * F.smooth_l1_loss(out.pred, batch.labels) + sum(weights[k] * v for k, v in out.aux_losses.items())
    torch.testing.assert_close(total, expected)
    assert parts["criterion"] == pytest.approx(float(F.smooth_l1_loss(out.pred.detach(), batch.labels)))
    total.backward()
    # no dead modules: every parameter receives a gradient
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_contrastive_loss_is_trained_and_reaches_the_projections():
    torch.manual_seed(0)
    model = tiny_model().eval()  # no dropout: two passes compute the same thing
    batch = random_batch(make_spec(), b=6)

    def grads(contrastive_weight: float):
        model.zero_grad()
        model.config["aux_weights"] = {**model.config["aux_weights"], "contrastive": contrastive_weight}
        out = model(batch)
        total, parts = model.loss(batch, out)
        total.backward()
        return total.detach(), out.aux_losses["contrastive"].detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_cl, nce, g_with = grads(0.1)
    without, _, g_without = grads(0.0)
    assert float(nce) > 0 and float(with_cl - without) == pytest.approx(0.1 * float(nce), rel=1e-4)
    for name in ("contrastive.proj_x.weight", "contrastive.proj_y.weight", "contrastive.proj_z.weight"):
        assert not torch.allclose(g_with[name], g_without[name]), name
    # the InfoNCE term alone trains the projections and, through the slots, the encoders
    model.zero_grad()
    out = model(batch)
    out.aux_losses["contrastive"].backward()
    for name in ("contrastive.proj_x.weight", "contrastive.proj_z.weight", "vision_encoder.linear_1.weight",
                 "audio_encoder.linear_1.weight", "text_proj.weight"):
        assert float(dict(model.named_parameters())[name].grad.abs().sum()) > 0, name


def test_score_term_bounded_by_tanh_or_published_raw():
    torch.manual_seed(0)
    model = tiny_model().eval()
    batch = random_batch(make_spec(), b=5)
    with torch.no_grad():
        model.estimator_vt.score.bias.fill_(50.0)  # a grown, unbounded estimator output
        scores = model.stages(batch).scores
        bounded = model(batch).aux_losses["scores"]
        model.config["score_bound"] = "none"
        raw = model(batch).aux_losses["scores"]
    torch.testing.assert_close(bounded, -torch.tanh(scores).sum(-1).mean())
    torch.testing.assert_close(raw, -scores.sum(-1).mean())
    assert float(bounded) >= -3.0 and float(raw) < -40.0


def test_smooth_l1_criterion_is_also_the_validation_loss():
    model = tiny_model()
    pred, labels = torch.tensor([0.0, 2.0, -0.5]), torch.tensor([0.2, -1.0, -0.5])
    assert float(model.criterion(pred, labels)) == pytest.approx(float(F.smooth_l1_loss(pred, labels)))
    assert float(tiny_model(criterion="l1").criterion(pred, labels)) == pytest.approx(float((pred - labels).abs().mean()))


# ------------------------------------------------------------------ robustness of the implementation
def test_absent_modalities_give_finite_outputs_and_gradients():
    torch.manual_seed(0)
    model = tiny_model().train()
    batch = random_batch(make_spec(), b=4, absent=True)
    batch.text.zero_()
    batch.text_mask.zero_()
    out = model(batch)
    assert torch.isfinite(out.pred).all()
    total, _ = model.loss(batch, out)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(select(batch, slice(0, 1))).pred).all()  # a batch of one (the reference crashes)


def test_a_few_training_steps_lower_the_loss(tiny_synth):
    torch.manual_seed(0)
    model = create_method("cmcbep_cl", tiny_synth.spec, **TINY)
    (optimizer,), _ = model.configure_optimizers(epochs=3, steps_per_epoch=3)
    tensors = SplitTensors.from_split(tiny_synth.train)
    criteria, losses = [], []
    for epoch in range(10):
        model.train()
        for batch in iterate_batches(tensors, 32, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            parts = model.training_step(batch, [optimizer])
            criteria.append(parts["criterion"])
            losses.append(parts["loss"])
    assert np.isfinite(losses).all()
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    assert np.mean(criteria[-6:]) < np.mean(criteria[:6])
