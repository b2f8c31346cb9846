"""Bad command-line input: one line on stderr, exit code 1, never a traceback (unless --debug).

Every check here must fail before any dataset is loaded or model trained: the ``no_work`` fixture makes
loading, training, evaluating and sweeping raise, so a check that came too late shows up as an
``AssertionError`` report instead of the expected message.
"""

from __future__ import annotations

import pickle
import shlex
import sys

import pytest
import typer
from conftest import make_dataset, make_raw_dataset
from typer.testing import CliRunner

from robustmsa import cli
from robustmsa.cli import app
from robustmsa.datasets import write_mmsa_pickle

runner = CliRunner()


def _forbidden(*args, **kwargs):
    raise AssertionError("the command loaded data or trained before checking its input")


@pytest.fixture
def no_work(monkeypatch):
    from importlib import import_module

    for module, name in (("robustmsa.datasets", "load"), ("robustmsa.engine.train", "train"),
                         ("robustmsa.engine.evaluate", "run_eval"), ("robustmsa.sweep", "run_sweep")):
        monkeypatch.setattr(import_module(module), name, _forbidden)  # module engine.train, not the function


@pytest.fixture
def tiny_pkl(tmp_path):
    path = tmp_path / "tiny.pkl"
    write_mmsa_pickle(make_dataset(n=12), path)
    return path


def one_error_line(result) -> str:
    """The single stderr line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


UNKNOWN_NAMES = [
    ("eval --method almtt", "unknown method 'almtt'. Did you mean: almt? Available: "),
    ("train --method lf_dnnn", "unknown method 'lf_dnnn'. Did you mean: lf_dnn?"),
    ("sweep --methods almt,lf_dnnx --out {tmp}/run", "unknown method 'lf_dnnx'. Did you mean: lf_dnn?"),
    ("audit --method mmimm", "unknown method 'mmimm'. Did you mean: mmim?"),
    ("eval --method ALMT", "Did you mean: almt?"),
    ("eval --method almt --corruption word_dropp", "unknown corruption 'word_dropp'. Did you mean: word_dr"),
    ("eval --method almt --corruption word_drop+blurr", "unknown corruption 'blurr'. Did you mean: blur?"),
    ("sweep --methods almt --corruptions random_missing,blurr --out {tmp}/run", "Did you mean: blur?"),
    ("corrupt --data synth --corruption frame_dorp --severity 0.3 --out {tmp}/o.pkl",
     "unknown corruption 'frame_dorp'. Did you mean: frame_drop"),
    ("eval --method almt --dataset mosii",
     "--dataset 'mosii' is neither an existing file nor a registered dataset. Did you mean: mosi"),
    ("train --method almt --data {tmp}/missing.pkl", "is neither an existing file nor a registered"),
    ("sweep --methods almt --dataset synht --out {tmp}/run", "Did you mean: synth"),
    ("audit --method mmim --dataset sim", "Did you mean: sims"),
    ("corrupt --data synthh --corruption word_drop --severity 0.3 --out {tmp}/o.pkl",
     "--data 'synthh' is neither an existing file nor a registered dataset. Did you mean: synth"),
    ("data check mosii", "'mosii' is neither an existing file nor a registered dataset. Did you mean: mosi"),
    ("list methods --dataset mosii", "unknown dataset 'mosii'. Did you mean: mosi"),
    ("data synth --profile synthh --out {tmp}/s.pkl", "unknown synth profile 'synthh'. Did you mean: synth"),
    ("audit --method mmim --probe gradiant", "unknown probe 'gradiant'. Did you mean: gradient?"),
    ("eval --method almt --train-noise random_misssing", "Did you mean: random_missing?"),
    ("eval --method almt --label-family mosei", "unknown label family 'mosei'. Did you mean: mosi?"),
    ("eval --method almt --text-backbone embeding", "Did you mean: embedding?"),
    ("corrupt --data synth --corruption word_drop --severity 0.3 --splits tset --out {tmp}/o.pkl",
     "unknown split 'tset'. Did you mean: test?"),
]


def invoke(command: str, tmp_path):
    return runner.invoke(app, shlex.split(command.replace("{tmp}", str(tmp_path))))


@pytest.mark.parametrize("command,message", UNKNOWN_NAMES, ids=[c for c, _ in UNKNOWN_NAMES])
def test_unknown_names_suggest_close_ones_and_list_the_rest(command, message, tmp_path, no_work):
    line = one_error_line(invoke(command, tmp_path))
    assert message in line
    assert "Available: " in line


BAD_VALUES = [
    ("eval --method almt --noise 1.5", "--noise: severity must be in [0, 1], got 1.5"),
    ("eval --method almt --noise -0.1", "--noise: severity must be in [0, 1], got -0.1"),
    ("eval --method almt --noise nan", "--noise: severity must be in [0, 1], got nan"),
    ("corrupt --data synth --corruption blur --severity 2 --out {tmp}/o.pkl", "severity must be in [0, 1]"),
    ("sweep --methods almt --levels 0:2:0.5 --out {tmp}/run", "STOP must be in [0, 1], got 2"),
    ("sweep --methods almt --levels -0.5,0.5 --out {tmp}/run", "level must be in [0, 1]"),
    ("sweep --methods almt --levels a:b --out {tmp}/run", "expected START:STOP:STEP"),
    ("sweep --methods almt --levels a:b:c --out {tmp}/run", "START 'a' is not a number"),
    ("sweep --methods almt --levels 0:1 --out {tmp}/run", "expected START:STOP:STEP"),
    ("sweep --methods almt --levels '' --out {tmp}/run", "no levels"),
    ("sweep --methods almt --levels 0:1:0 --out {tmp}/run", "STEP must be > 0"),
    ("sweep --methods almt --levels 0.5,0.5 --out {tmp}/run", "level 0.5 is given more than once"),
    ("sweep --methods almt --levels 0:1:1e-12 --out {tmp}/run", "at most 10000"),
    ("sweep --methods , --out {tmp}/run", "--methods: no names given"),
    ("sweep --methods almt --corruptions ' ' --out {tmp}/run", "--corruptions: no names given"),
    ("eval --method almt --set epochs", "--set expects KEY=VALUE, got 'epochs'"),
    ("eval --method almt --set =3", "--set expects KEY=VALUE, got '=3'"),
    ("eval --method almt --set epochs=", "no value after '='"),
    ("eval --method almt --set epochs=abc", "almt's epochs is an integer"),
    ("eval --method almt --set epochs=2.5", "almt's epochs is an integer"),
    ("eval --method almt --set lr=fast", "almt's lr is a number"),
    ("eval --method almt --set lr=[1,", "not a valid YAML value"),
    ("train --method almt --set epochz=3", "--set epochz: unknown almt config key 'epochz'. Did you mean: ep"),
    ("sweep --methods lf_dnn,almt --set hidden_dims=[8,8,8] --out {tmp}/run", "unknown almt config key"),
    ("eval --method almt --seeds 0", "--seeds must be in [1, 1000], got 0"),
    ("sweep --methods almt --seeds -2 --out {tmp}/run", "--seeds must be in [1, 1000], got -2"),
    ("eval --method almt --seeds 1000000000000", "--seeds must be in [1, 1000]"),
    ("eval --method almt --corruption-seed -1", "--corruption-seed must be in [0, 4294967295]"),
    (f"train --method almt --seed {2 ** 32}", "--seed must be in [0, 4294967295]"),
    ("eval --method almt --epochs 0", "--epochs must be >= 1, got 0"),
    ("audit --method mmim --samples 0", "--samples must be >= 1, got 0"),
    ("eval --method almt --corruption modality_missing", "needs exactly one modality"),
    ("eval --method almt --text-backbone hf:{tmp}/no_model", "does not exist"),
    ("eval --method almt --device gpu", "--device 'gpu'"),
    ("corrupt --data synth --corruption blur --severity 0.3 --param max_sigma=big --out {tmp}/o.pkl",
     "blur's max_sigma is a finite number"),
    ("data check {tmp}", "is a directory"),
]


@pytest.mark.parametrize("command,message", BAD_VALUES, ids=[c for c, _ in BAD_VALUES])
def test_bad_values_are_one_line_before_any_work(command, message, tmp_path, no_work):
    assert message in one_error_line(invoke(command, tmp_path))


def test_set_values_are_typed_by_the_method_config():
    assert cli._check_overrides({"lr": "2e-4", "epochs": 3}, ["almt"]) == {"lr": 2e-4, "epochs": 3}
    assert cli._check_overrides({"lr": 1}, ["almt", "lf_dnn"]) == {"lr": 1}
    with pytest.raises(typer.Exit):
        cli._check_overrides({"finetune_text": "maybe"}, ["lf_dnn"])


def test_missing_and_broken_files_are_one_line(tiny_pkl, tmp_path):
    raw = make_raw_dataset(n=6)
    raw["valid"]["vision_lengths"] = raw["valid"]["vision_lengths"] + 100
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(raw))
    assert "split 'valid', key 'vision_lengths'" in one_error_line(invoke(f"data check {bad}", tmp_path))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(tiny_pkl.read_bytes()[:100])
    one_error_line(runner.invoke(app, ["data", "check", str(truncated)]))
    assert "no cell records" in one_error_line(runner.invoke(app, ["plot", str(tmp_path / "no_run")]))
    build = "data build --labels {tmp}/x.csv --text-encoder minilm --out {tmp}/b.pkl"
    assert "no such" in one_error_line(invoke(build, tmp_path))


@pytest.mark.parametrize("where", ["front", "end", "env"])
def test_debug_shows_the_traceback_of_an_expected_error(where, tmp_path, monkeypatch):
    raw = make_raw_dataset(n=6)
    raw["train"]["text"] = raw["train"]["text"][:, :, :, None]  # rank 4: a validation error
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(raw))
    args = ["data", "check", str(bad)]
    args = {"front": ["--debug", *args], "end": [*args, "--debug"], "env": args}[where]
    if where == "env":
        monkeypatch.setenv("ROBUSTMSA_DEBUG", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "DataValidationError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_debug_shows_where_a_command_line_check_failed(no_work):
    result = runner.invoke(app, ["--debug", "eval", "--method", "almtt"])
    assert result.exit_code == 1 and "Traceback" in result.stderr and "_check_methods" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown method 'almtt'")
    assert "Traceback" not in runner.invoke(app, ["eval", "--method", "almtt"]).output  # reset per invocation


def test_unexpected_exceptions_are_one_line_with_their_type(tiny_pkl, monkeypatch):
    import robustmsa.datasets.inspect

    def boom(dataset):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(robustmsa.datasets.inspect, "describe", boom)
    line = one_error_line(runner.invoke(app, ["data", "check", str(tiny_pkl)]))
    assert line == "error: RuntimeError: boom second line (run with --debug for the traceback)"
    debug = runner.invoke(app, ["--debug", "data", "check", str(tiny_pkl)])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "in boom" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "error: RuntimeError: boom second line"


def test_main_reports_exceptions_outside_commands(monkeypatch, capsys):
    def broken_app():
        raise RuntimeError("no app")

    monkeypatch.setattr(cli, "app", broken_app)
    monkeypatch.setattr(sys, "argv", ["robustmsa", "list", "corruptions"])
    monkeypatch.delenv("ROBUSTMSA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: no app (run with --debug for the traceback)"
    monkeypatch.setattr(sys, "argv", ["robustmsa", "--debug", "list", "corruptions"])
    with pytest.raises(SystemExit):
        cli.main()
    assert "Traceback" in capsys.readouterr().err


def test_shared_training_options_keep_their_names_and_defaults():
    from typer.main import get_command

    commands = get_command(app).commands
    expected = {"epochs": (["--epochs"], None), "device": (["--device"], "auto"),
                "text_backbone": (["--text-backbone"], None), "set_": (["--set"], None),
                "train_noise": (["--train-noise"], None), "cache_dir": (["--cache-dir"], None),
                "dataset": (["--dataset"], "synth"), "data": (["--data"], None),
                "label_family": (["--label-family"], None), "quiet": (["--quiet"], False),
                "data_root": (["--data-root"], None)}
    for verb in ("eval", "train", "sweep", "audit"):
        params = {p.name: p for p in commands[verb].params}
        for name, (opts, default) in expected.items():
            assert params[name].opts == opts, (verb, name)
            assert params[name].default == default, (verb, name)
        assert params["cache_dir"].envvar == "ROBUSTMSA_CACHE"
    assert {p.name for p in commands["eval"].params} >= {"no_cache", "noise", "corruption", "seeds", "output"}
