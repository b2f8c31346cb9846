"""Contract tests run on every registered method (a new method is covered without new test code)."""

from __future__ import annotations

import pytest
import torch

from conftest import BATCH_FIELDS
from robustmsa.datasets import load
from robustmsa.datasets.registry import registered_spec
from robustmsa.engine.batches import SplitTensors
from robustmsa.methods import create_method, list_methods

METHODS = list_methods()


@pytest.fixture(scope="module")
def synth_batch():
    data = load("synth")
    return data.spec, SplitTensors.from_split(data.test).batch(torch.arange(8))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_builds_for_the_registered_shapes(name, dataset):
    model = create_method(name, registered_spec(dataset), text_backbone="features")
    assert model.count_parameters() > 0
    assert model.count_parameters() <= model.count_parameters(include_text_encoder=True)


@pytest.mark.parametrize("name", METHODS)
def test_eval_prediction_of_a_sample_does_not_depend_on_its_batch(name, synth_batch):
    spec, batch = synth_batch
    torch.manual_seed(0)
    model = create_method(name, spec).eval()
    with torch.no_grad():
        together = model(batch).pred
        alone = torch.cat([model(batch.__class__(**{f: getattr(batch, f)[i:i + 1] for f in BATCH_FIELDS})).pred
                           for i in range(len(batch))])
        reversed_order = model(batch.__class__(**{f: getattr(batch, f).flip(0) for f in BATCH_FIELDS})).pred.flip(0)
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reversed_order, together, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", METHODS)
def test_absent_modalities_give_finite_outputs_and_gradients(name, synth_batch):
    spec, batch = synth_batch
    torch.manual_seed(0)
    model = create_method(name, spec).train()
    absent = batch.__class__(**{**{f: getattr(batch, f) for f in BATCH_FIELDS
           if f not in ("audio", "vision", "audio_lengths", "vision_lengths")},
        "audio": torch.zeros_like(batch.audio), "vision": torch.zeros_like(batch.vision),
        "audio_lengths": torch.zeros_like(batch.audio_lengths), "vision_lengths": torch.zeros_like(batch.vision_lengths)})
    output = model(absent)
    assert torch.isfinite(output.pred).all()
    total, parts = model.loss(absent, output)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


ENCODER_FIELDS = {"text": ("text", "text_ids", "text_mask", "text_segments"), "audio": ("audio", "audio_lengths"),
                  "vision": ("vision", "vision_lengths")}


def _perturbed(batch, modality: str):
    """``batch`` with every input except ``modality``'s replaced by different values."""
    fields = {f: getattr(batch, f) for f in BATCH_FIELDS}
    generator = torch.Generator().manual_seed(7)
    for other, names in ENCODER_FIELDS.items():
        if other == modality:
            continue
        for name in names:
            value = fields[name]
            if value.is_floating_point():
                fields[name] = torch.randn(value.shape, generator=generator)
            elif name.endswith("lengths"):
                fields[name] = torch.clamp(value - 3, min=0)
            elif name == "text_mask":
                fields[name] = value.flip(1)
            else:
                fields[name] = value.flip(0)
    return batch.__class__(**fields)


@pytest.mark.parametrize("name", [m for m in METHODS if create_method(m, registered_spec("mosi")).unimodal_encoders])
def test_unimodal_encoders_read_only_their_modality_and_reproduce_forward(name, synth_batch):
    """What the engine's encoding reuse relies on (``Method.unimodal_encoders``)."""
    spec, batch = synth_batch
    torch.manual_seed(0)
    model = create_method(name, spec).eval()
    with torch.no_grad():
        encoded = {m: model.encode_modality(batch, m) for m in model.unimodal_encoders}
        torch.testing.assert_close(model.forward_encoded(batch, encoded).pred, model(batch).pred, atol=0, rtol=0)
        for modality in model.unimodal_encoders:
            torch.testing.assert_close(model.encode_modality(_perturbed(batch, modality), modality),
                                       encoded[modality], atol=1e-6, rtol=1e-5)
