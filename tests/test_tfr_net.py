"""TFR-Net (robustmsa.methods.tfr_net): shapes, self-generated missing data, reconstruction loss, training."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_of, tiny_synth_dataset

from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import CLS_ID, SEP_ID, UNK_ID
from robustmsa.engine import train
from robustmsa.engine.batches import SplitTensors, iterate_paired_batches
from robustmsa.methods import ConfigError, create_method
from robustmsa.methods.tfr_net import reconstruction_loss

TINY = {"d_model": 12, "heads": 2, "nlevels": 1, "mem_min_layers": 1, "fusion_gru_layers": 1}


@pytest.fixture(scope="module")
def data():
    return tiny_synth_dataset()


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_builds_for_the_registered_shapes(dataset):
    model = create_method("tfr_net", registered_spec(dataset), text_backbone="features")
    assert model.count_parameters() > 0
    assert model.generator_a.out_features == registered_spec(dataset).dims["audio"]
    assert model.config["config_section"] == dataset


def test_mmsa_reconstruction_encoder_refuses_lengths_its_heads_do_not_divide():
    with pytest.raises(ConfigError, match="num_temporal_head"):
        create_method("tfr_net", registered_spec("sims"), reconstruction_encoder="mmsa")  # text 39, 25 heads
    create_method("tfr_net", registered_spec("mosi"), reconstruction_encoder="mmsa", nlevels=1)  # 50/375/500


def test_masks_touch_only_word_tokens_and_valid_frames(data, one_thread):
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, missing_rate=[1.0, 1.0, 1.0], **TINY)
    batch = batch_of(data, 16)
    masked = model.make_missing(batch)
    lengths = batch.text_mask.sum(1)
    rows = torch.arange(len(batch))
    # rate 1: every word token is [UNK], [CLS]/[SEP]/padding keep their ids, the attention mask is unchanged
    assert torch.equal(masked.text_ids[:, 0], torch.full_like(lengths, CLS_ID))
    assert torch.equal(masked.text_ids[rows, lengths - 1], torch.full_like(lengths, SEP_ID))
    words = masked.extra["tfr_missing_text"]
    assert torch.all(masked.text_ids[words] == UNK_ID) and torch.all(masked.text[words] == 0)
    assert not words[:, 0].any() and not words[rows, lengths - 1].any() and not words[batch.text_mask == 0].any()
    assert torch.equal(masked.text_ids[batch.text_mask == 0], batch.text_ids[batch.text_mask == 0])
    assert torch.equal(masked.text_mask, batch.text_mask)
    for m in ("audio", "vision"):
        valid = torch.arange(getattr(batch, m).shape[1])[None, :] < getattr(batch, f"{m}_lengths")[:, None]
        assert torch.equal(masked.extra[f"tfr_missing_{m}"], valid)
        assert torch.all(getattr(masked, m) == 0)
        assert torch.equal(masked.extra[f"tfr_target_{m}"], getattr(batch, m))


def test_mask_rate_and_seeded_generator(data, one_thread):
    batch = batch_of(data, 64)
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, mask_seed=5, **TINY)
    first = model.make_missing(batch).extra["tfr_missing_audio"]
    again = create_method("tfr_net", data.spec, mask_seed=5, **TINY).make_missing(batch).extra["tfr_missing_audio"]
    assert torch.equal(first, again)
    valid = torch.arange(batch.audio.shape[1])[None, :] < batch.audio_lengths[:, None]
    assert abs(first.sum().item() / valid.sum().item() - 0.2) < 0.03
    assert not torch.equal(model.make_missing(batch).extra["tfr_missing_audio"], first)  # re-drawn every step


def test_engine_noise_positions_count_as_missing(data, one_thread):
    from robustmsa.engine.noise import TrainNoise

    noise = TrainNoise("random_missing", seed=3)
    noisy, rates = noise.draw(data.train, 1)
    batch = next(iterate_paired_batches(SplitTensors.from_split(noisy), SplitTensors.from_split(data.train), 32,
                                        drawn_rates=rates))
    model = create_method("tfr_net", data.spec, missing_rate=[0.0, 0.0, 0.0], **TINY)
    masked = model.make_missing(batch)
    changed = (batch.audio != batch.extra["clean_audio"]).any(-1)
    assert changed.any() and torch.equal(masked.extra["tfr_missing_audio"], changed)
    assert torch.equal(masked.extra["tfr_target_audio"], batch.extra["clean_audio"])


def test_reconstruction_loss_reads_only_missing_positions():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    missing = torch.zeros(2, 5, dtype=torch.bool)
    missing[0, 1] = missing[1, 3] = True
    base = reconstruction_loss(pred, target, missing, "smooth_l1")
    changed = pred.clone()
    changed[~missing] += 10.0  # anything outside the missing positions is ignored
    assert torch.allclose(reconstruction_loss(changed, target, missing, "smooth_l1"), base)
    expected = torch.nn.functional.smooth_l1_loss(pred[missing], target[missing], reduction="sum") / (6 + 1e-4)
    assert torch.allclose(base, expected)
    assert reconstruction_loss(pred, target, torch.zeros_like(missing), "smooth_l1") == 0


def test_training_lowers_prediction_and_reconstruction_losses(data, one_thread):
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, rec_start_epoch=1, update_epochs=1, lr=3e-3, mask_seed=1, **TINY)
    optimizers, _ = model.configure_optimizers(1, 10)
    batch = batch_of(data, 16)
    model.train()
    logs = [model.training_step(batch, optimizers) for _ in range(25)]
    first, last = logs[:5], logs[-5:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    assert mean(last, "criterion") < 0.8 * mean(first, "criterion")
    assert mean(last, "reconstruction") < 0.9 * mean(first, "reconstruction")


def test_reconstruction_joins_the_loss_from_rec_start_epoch(data, one_thread):
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, **TINY)  # rec_start_epoch 2 (MMSA)
    optimizers, _ = model.configure_optimizers(2, 1)
    batch = batch_of(data, 8)
    epoch1 = model.training_step(batch, optimizers)
    epoch2 = model.training_step(batch, optimizers)
    assert epoch1["loss"] == pytest.approx(epoch1["criterion"])
    assert epoch2["loss"] == pytest.approx(epoch2["criterion"] + epoch2["reconstruction"], rel=1e-5)


def test_eval_ignores_padding_with_valid_masking(data):
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, **TINY).eval()
    batch = batch_of(data, 6, "test")
    lengths = batch.audio_lengths.clone()
    padded = batch.audio.clone()
    pad = torch.arange(padded.shape[1])[None, :] >= lengths[:, None]
    padded[pad] = 7.0
    other = batch.__class__(**{**{k: getattr(batch, k) for k in ("text", "text_ids", "text_mask", "text_segments",
                                                                  "vision", "audio_lengths", "vision_lengths",
                                                                  "labels", "index")}, "audio": padded})
    with torch.no_grad():
        torch.testing.assert_close(model(other).pred, model(batch).pred)


def test_absent_modality_shape_one(data):
    torch.manual_seed(0)
    model = create_method("tfr_net", data.spec, **TINY).train()
    batch = batch_of(data, 4)
    absent = batch.__class__(**{**{k: getattr(batch, k) for k in ("text", "text_ids", "text_mask", "text_segments",
                                                                   "vision", "vision_lengths", "labels", "index")},
                                "audio": torch.zeros(4, 1, 1), "audio_lengths": torch.zeros(4, dtype=torch.long)})
    spec = data.spec.__class__(**{**data.spec.to_dict(), "label_range": tuple(data.spec.label_range),
                                  "dims": {**data.spec.dims, "audio": 1},
                                  "seq_lens": {**data.spec.seq_lens, "audio": 1}})
    model = create_method("tfr_net", spec, **TINY).train()
    optimizers, _ = model.configure_optimizers(1, 1)
    parts = model.training_step(absent, optimizers)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())


def test_trains_with_the_engine(data, one_thread, tmp_path):
    trained = train("tfr_net", data, seed=1, overrides={"epochs": 2, **TINY}, use_cache=False)
    assert len(trained.history) == 2 and all(h["valid_loss"] == h["valid_loss"] for h in trained.history)
