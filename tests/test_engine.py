"""Engine: training with validation selection, cache, determinism, train-time noise, evaluation records."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_synth_dataset

from robustmsa.cli import app
from robustmsa.datasets.split import Dataset
from robustmsa.engine.cache import DamagedCacheWarning
from robustmsa.engine.evaluate import evaluate_split, run_eval
from robustmsa.engine.noise import TrainNoise
from robustmsa.engine.train import predict, train
from robustmsa.methods import create_method, list_methods
from robustmsa.methods.base import ConfigError
from robustmsa.engine.batches import SplitTensors, iterate_batches


@pytest.fixture(scope="module")
def small() -> Dataset:
    """The embedded synth benchmark, cut to a few hundred samples so that training takes a second or two."""
    return tiny_synth_dataset(240, 80, 120)


@pytest.fixture(autouse=True)
def threads():
    torch.set_num_threads(2)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_a_few_steps_and_the_loss_falls(name, small):
    torch.manual_seed(0)
    model = create_method(name, small.spec)
    optimizers, schedulers = model.configure_optimizers(epochs=5, steps_per_epoch=4)
    with warnings.catch_warnings():  # step past a warm-up epoch at lr 0 (ALMT's reference schedule starts there)
        warnings.simplefilter("ignore", UserWarning)
        for scheduler in schedulers:
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
    batch = next(iterate_batches(SplitTensors.from_split(small.train), 64))
    model.train()
    # the supervised part: multi-stage objectives (MMIM's entropy term) may add terms that do not fall
    losses = [model.training_step(batch, optimizers).get("criterion") for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < losses[0]
    model.eval()
    out = model(batch)
    assert out.pred.shape == (64,)


def test_cache_hit_then_retrain_on_damaged_entry(small, tmp_path):
    first = train("lf_dnn", small, seed=3, epochs=3, cache=tmp_path)
    assert not first.from_cache and first.cache_path and len(first.history) == 3
    second = train("lf_dnn", small, seed=3, epochs=3, cache=tmp_path)
    assert second.from_cache and second.history == first.history
    np.testing.assert_array_equal(predict(first.model, small.test), predict(second.model, small.test))
    other_seed = train("lf_dnn", small, seed=4, epochs=3, cache=tmp_path)
    assert not other_seed.from_cache and other_seed.key != first.key
    with open(first.cache_path, "r+b") as handle:  # damage the entry
        handle.seek(100)
        handle.write(b"\x00garbage\x00" * 20)
    with pytest.warns(DamagedCacheWarning, match="retraining"):
        third = train("lf_dnn", small, seed=3, epochs=3, cache=tmp_path)
    assert not third.from_cache
    assert train("lf_dnn", small, seed=3, epochs=3, cache=tmp_path).from_cache  # repaired


def test_same_seed_gives_same_metrics_on_cpu(small, tmp_path):
    a = train("lf_dnn", small, seed=7, epochs=2, use_cache=False)
    b = train("lf_dnn", small, seed=7, epochs=2, use_cache=False)
    assert evaluate_split(a, small.test) == evaluate_split(b, small.test)


def test_selection_uses_validation_and_early_stopping(small):
    trained = train("lf_dnn", small, seed=1, epochs=12, overrides={"early_stop": 2}, use_cache=False)
    losses = [h["valid_loss"] for h in trained.history]
    assert trained.best_epoch == int(np.argmin(losses)) + 1
    assert len(trained.history) <= 12 and len(trained.history) - trained.best_epoch <= 2


def test_train_noise_redraws_every_epoch_with_half_clean(small):
    noise = TrainNoise("random_missing", seed=5)
    r1, r2 = noise.rates(200, 1), noise.rates(200, 2)
    for modality in ("text", "audio", "vision"):
        assert (r1[modality] == 0).sum() >= 100 and not np.array_equal(r1[modality], r2[modality])
    noisy1, noisy2 = noise(small.train, 1), noise(small.train, 2)
    assert noisy1.audio.tobytes() != noisy2.audio.tobytes()
    assert noisy1.corruptions[-1]["per_sample_rates"]
    trained = train("lf_dnn", small, seed=1, epochs=2, train_noise="random_missing", use_cache=False)
    assert trained.train_noise == "random_missing"
    with pytest.raises(ValueError, match="train-time noise supports"):
        TrainNoise("blur", 1)


def test_unknown_config_key_is_a_clear_error(small):
    with pytest.raises(ConfigError, match="unknown config key 'lrr'.*Did you mean 'lr'"):
        create_method("lf_dnn", small.spec, lrr=0.1)


def test_run_eval_record_has_config_hashes_versions_and_aggregates(small, tmp_path):
    record = run_eval("lf_dnn", small, corruption="random_missing", severity=0.5, seeds=[1111, 1112], epochs=2,
                      cache=str(tmp_path))
    assert record["config"]["seeds"] == [1111, 1112]
    assert record["hashes"]["dataset_fingerprint"].startswith("synth:")
    assert len(record["per_seed"]) == 2 and record["environment"]["torch"]
    clean = record["results"]["clean"]["MAE"]
    assert clean["n"] == 2 and clean["std"] >= 0
    assert record["corruption_record"][0]["name"] == "random_missing"
    per_seed_delta = [r["corrupted"]["MAE"] - r["clean"]["MAE"] for r in record["per_seed"]]
    assert record["results"]["delta"]["MAE"]["mean"] == pytest.approx(np.mean(per_seed_delta))
    json.dumps(record, default=str)


def test_cli_eval_writes_record_and_uses_cache_on_second_run(tmp_path):
    runner = CliRunner()
    out = tmp_path / "results.json"
    args = ["eval", "--method", "lf_dnn", "--noise", "0.3", "--epochs", "2", "--cache-dir", str(tmp_path / "c"),
            "--quiet", "--output", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "Has0_acc_2" in first.output and "random_missing@0.3" in first.output
    record = json.loads(out.read_text())
    assert record["per_seed"][0]["from_cache"] is False
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and json.loads(out.read_text())["per_seed"][0]["from_cache"] is True


def test_cli_eval_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--method", "almtt", "--quiet"])
    assert result.exit_code == 1 and "Did you mean: almt" in result.output
    result = runner.invoke(app, ["eval", "--method", "lf_dnn", "--set", "nope=1", "--quiet",
                                 "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unknown lf_dnn config key 'nope'" in result.output
    result = runner.invoke(app, ["eval", "--method", "lf_dnn", "--text-backbone", "hf:/nonexistent", "--quiet",
                                 "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1 and "nothing is downloaded" in result.output


def test_list_methods_shows_parameter_counts():
    result = CliRunner().invoke(app, ["list", "methods", "--dataset", "mosi"])
    assert result.exit_code == 0, result.output
    assert "lf_dnn" in result.output and "almt" in result.output
