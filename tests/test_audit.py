"""Input-coverage audit: a deliberately blind method is caught, ALMT uses all of its input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_synth_dataset
from robustmsa.audit import input_coverage
from robustmsa.cli import app
from robustmsa.methods import create_method
from robustmsa.methods.base import Method, Output


class HalfBlindAudio(Method):
    """Reads text and vision fully, but only the first half of each valid audio sequence."""

    name = "half_blind_audio"

    def __init__(self, spec, config=None) -> None:
        super().__init__(spec, config or {})
        self.text = nn.Linear(spec.dims["text"], 1)
        self.audio = nn.Linear(spec.dims["audio"], 1)
        self.vision = nn.Linear(spec.dims["vision"], 1)

    def forward(self, batch) -> Output:
        positions = torch.arange(batch.audio.shape[1])
        first_half = (positions[None, :] < (batch.audio_lengths[:, None] + 1) // 2).float()
        audio = (self.audio(batch.audio).squeeze(-1) * first_half).sum(1)
        text = (self.text(batch.text).squeeze(-1) * batch.text_mask.float()).sum(1)
        valid_v = (positions[None, : batch.vision.shape[1]] < batch.vision_lengths[:, None]).float()
        vision = (self.vision(batch.vision).squeeze(-1) * valid_v).sum(1)
        return Output(pred=text + audio + vision)


@pytest.fixture(scope="module")
def dataset():
    return tiny_synth_dataset()


@pytest.mark.parametrize("probe", ["gradient", "occlusion"])
def test_the_audit_finds_a_method_that_ignores_the_second_half_of_the_audio(dataset, probe):
    torch.manual_seed(0)
    report = input_coverage(HalfBlindAudio(dataset.spec), dataset.test, samples=12, buckets=4, probe=probe)
    audio = report.modalities["audio"]
    assert 0.4 < audio.fraction < 0.6
    assert audio.bucket_fractions[:2] == [1.0, 1.0] and audio.bucket_fractions[3] == 0.0
    assert report.modalities["text"].fraction == 1.0 and report.modalities["vision"].fraction == 1.0
    assert report.flagged() == ["audio"]
    assert report.to_dict()["flagged"] == ["audio"]


def test_almt_uses_every_valid_position(dataset):
    torch.manual_seed(0)
    model = create_method("almt", dataset.spec, token_dim=16, token_len=4, proj_heads=2, proj_dim_head=8,
                          proj_mlp_dim=16, l_enc_heads=2, l_enc_dim_head=8, l_enc_mlp_dim=16, ahl_heads=2,
                          ahl_dim_head=8, fusion_heads=2, fusion_dim_head=8, fusion_mlp_dim=16)
    report = input_coverage(model, dataset.test, samples=8)
    assert all(c.fraction == 1.0 for c in report.modalities.values()) and report.flagged() == []
    assert model.training  # the audit restores the mode it found


def test_a_cls_reading_method_is_flagged_on_text_features(dataset):
    """MMIM reads the [CLS] row of precomputed text features: word corruptions of other rows cannot reach it."""
    torch.manual_seed(0)
    report = input_coverage(create_method("mmim", dataset.spec), dataset.test, samples=8)
    assert report.modalities["text"].fraction < 0.3 and "text" in report.flagged()


def test_the_sample_is_chosen_by_the_seed_and_bad_options_are_clear_errors(dataset):
    model = HalfBlindAudio(dataset.spec)
    assert input_coverage(model, dataset.test, samples=5, seed=1).samples == \
        input_coverage(model, dataset.test, samples=5, seed=1).samples
    with pytest.raises(ValueError, match="probe"):
        input_coverage(model, dataset.test, probe="saliency")
    with pytest.raises(ValueError, match="modalities"):
        input_coverage(model, dataset.test, modalities=["smell"])


def test_audit_command_prints_and_writes_the_report(tmp_path):
    out = tmp_path / "coverage.json"
    result = CliRunner().invoke(app, ["audit", "--method", "lf_dnn", "--epochs", "1", "--samples", "8", "--quiet",
                                      "--cache-dir", str(tmp_path / "cache"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "input coverage" in result.output and "coverage" in result.output
    record = json.loads(out.read_text())
    assert record["kind"] == "robustmsa.coverage" and set(record["modalities"]) == {"text", "audio", "vision"}


def test_the_sweep_audits_each_model_and_the_leaderboard_flags_ignored_input(dataset, tmp_path):
    from robustmsa.leaderboard import build, load_coverage, load_runs
    from robustmsa.sweep import run_sweep

    out = tmp_path / "run"
    run_sweep(["mmim", "lf_dnn"], dataset, ["word_drop"], [0.0, 0.5], [1111], out, epochs=1,
              cache=tmp_path / "cache", audit_samples=8)
    coverage = load_coverage([out])
    assert set(coverage["method"]) == {"mmim", "lf_dnn"} and set(coverage["modality"]) == {"text", "audio", "vision"}
    board = build(load_runs([out]), "acc2", coverage=coverage).set_index("method")
    assert "text" in board.loc["mmim", "flag"] and board.loc["mmim", "coverage"].startswith("T ")
    assert board.loc["lf_dnn", "flag"] == ""
