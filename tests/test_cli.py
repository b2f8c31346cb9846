"""The command line, driven in-process with typer's runner."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_dataset, make_raw_dataset
from robustmsa.cli import app
from robustmsa.datasets import read_mmsa_pickle, safe_load_pickle, write_mmsa_pickle

runner = CliRunner()


@pytest.fixture
def tiny_pkl(tmp_path):
    path = tmp_path / "tiny.pkl"
    write_mmsa_pickle(make_dataset(n=20), path)
    return path


def test_help_is_fast_and_does_not_import_heavy_libraries():
    code = ("import sys, robustmsa.cli; heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'pandas', "
            "'scipy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_corruptions_and_datasets():
    result = runner.invoke(app, ["list", "corruptions"])
    assert result.exit_code == 0 and "random_missing" in result.output and "word_shuffle" in result.output
    result = runner.invoke(app, ["list", "datasets", "synth*"])
    assert result.exit_code == 0 and "synth-mosi" in result.output and "mosei" not in result.output


def test_corrupt_writes_pickle_and_provenance_and_refuses_overwrite(tiny_pkl, tmp_path):
    out = tmp_path / "out" / "rm.pkl"
    args = ["corrupt", "--data", str(tiny_pkl), "--corruption", "random_missing", "--severity", "0.5",
            "--seed", "7", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "realised" in result.output
    sidecar = json.loads((tmp_path / "out" / "rm.pkl.json").read_text())
    from robustmsa._io import sha256_file

    assert sidecar["output"]["sha256"] == sha256_file(out)
    assert sidecar["input"]["fingerprint"] == f"sha256:{sha256_file(tiny_pkl)}"
    assert sidecar["corruption"]["severity"] == 0.5 and sidecar["corruption"]["seed"] == 7
    rates = sidecar["splits"]["test"][0]["realised"]
    assert set(rates) == {"text", "audio", "vision"} and 0.2 < rates["audio"]["rate"] < 0.8
    # the written file is a plain MMSA pickle: same keys, float32, same shapes; train untouched
    original, written = safe_load_pickle(tiny_pkl), safe_load_pickle(out)
    for split in ("train", "valid", "test"):
        assert set(written[split]) == set(original[split])
        for key in ("text", "audio", "vision", "text_bert"):
            assert written[split][key].dtype == np.float32
            assert written[split][key].shape == original[split][key].shape
    np.testing.assert_array_equal(written["train"]["audio"], original["train"]["audio"])
    assert not np.array_equal(written["test"]["audio"], original["test"]["audio"])
    # same command again: refused, nothing changed; --force: identical bytes (deterministic)
    before = out.read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output and out.read_bytes() == before
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and out.read_bytes() == before


def test_corrupt_options_modality_splits_params_and_compose(tiny_pkl, tmp_path):
    out = tmp_path / "blur.pkl"
    result = runner.invoke(app, ["corrupt", "--data", str(tiny_pkl), "--corruption", "blur+frame_drop",
                                 "--severity", "0.4", "--modality", "vision", "--splits", "all",
                                 "--param", "max_sigma=3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name("blur.pkl.json").read_text())
    assert set(sidecar["splits"]) == {"train", "valid", "test"}
    names = [r["name"] for r in sidecar["splits"]["train"]]
    assert names == ["blur", "frame_drop"] and sidecar["splits"]["train"][0]["params"] == {"max_sigma": 3}
    written, original = safe_load_pickle(out), safe_load_pickle(tiny_pkl)
    np.testing.assert_array_equal(written["train"]["audio"], original["train"]["audio"])


@pytest.mark.parametrize("args,message", [
    (["--severity", "1.5"], "severity must be in [0, 1], got 1.5"),
    (["--corruption", "word_dropp"], "Did you mean: word_drop"),
    (["--modality", "audio", "--corruption", "word_drop"], "word_drop applies to text"),
    (["--splits", "tset"], "unknown split"),
    (["--seeding", "lnln", "--corruption", "blur"], "no LNLN counterpart"),
    (["--param", "sigma"], "KEY=VALUE"),
])
def test_corrupt_bad_input_is_one_clear_line(tiny_pkl, tmp_path, args, message):
    base = {"--data": str(tiny_pkl), "--corruption": "random_missing", "--severity": "0.3",
            "--out": str(tmp_path / "o.pkl")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = runner.invoke(app, ["corrupt", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not (tmp_path / "o.pkl").exists()


def test_corrupt_refuses_to_write_over_its_input(tiny_pkl):
    result = runner.invoke(app, ["corrupt", "--data", str(tiny_pkl), "--corruption", "word_drop", "--severity",
                                 "0.3", "--out", str(tiny_pkl), "--force"])
    assert result.exit_code == 1 and "is the input file" in result.output


def test_data_check_prints_shapes_labels_and_nonfinite(tmp_path):
    raw = make_raw_dataset(n=9)
    raw["train"]["audio"][0, 0, 0] = -np.inf
    path = tmp_path / "check.pkl"
    with open(path, "wb") as handle:
        pickle.dump(raw, handle)
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("sha256:", "train", "regression_labels", "non-finite feature values set to 0: 1", "-inf 1"):
        assert text in result.output


def test_data_check_refuses_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Payload()}))
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and "refused to unpickle" in result.output
    assert not marker.exists()


def test_data_check_reports_validation_error(tmp_path):
    raw = make_raw_dataset(n=9)
    raw["valid"]["vision_lengths"] = raw["valid"]["vision_lengths"] + 100
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(raw))
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1
    assert "split 'valid', key 'vision_lengths'" in result.output


def test_data_synth_writes_a_loadable_pickle(tmp_path):
    out = tmp_path / "synth.pkl"
    result = runner.invoke(app, ["data", "synth", "--profile", "synth", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    dataset = read_mmsa_pickle(out)
    assert len(dataset.train) > 0 and dataset.spec.dims["text"] > 0
    assert runner.invoke(app, ["data", "synth", "--out", str(out)]).exit_code == 1  # no silent overwrite
    bad = runner.invoke(app, ["data", "synth", "--profile", "nope", "--out", str(tmp_path / "n.pkl")])
    assert bad.exit_code == 1 and "synth" in bad.output


def test_corrupt_the_embedded_default_by_name(tmp_path):
    out = tmp_path / "synth_wd.pkl"
    result = runner.invoke(app, ["corrupt", "--data", "synth", "--corruption", "word_drop", "--severity", "0.3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name("synth_wd.pkl.json").read_text())
    assert sidecar["input"]["fingerprint"].startswith("synth:")
    assert abs(sidecar["splits"]["test"][0]["realised"]["text"]["rate"] - 0.3) < 0.05
