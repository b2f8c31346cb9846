"""Results schema versions: records carry one, older ones migrate, future ones are refused (never overwritten).

The example stores under tests/data/records/ are real: ``v1`` was written by robustmsa before schema versions
(commit badb157), ``v2`` by the current code from the same cached model, ``future`` is a v2 cell record
rewritten as a hypothetical version 3 (see tests/data/records/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from robustmsa.results import (
    CELL_KIND,
    MIGRATIONS,
    SCHEMA_VERSION,
    CellKey,
    ResultsStore,
    SchemaVersionError,
    check_cell,
    migrate,
    record_version,
)

RECORDS = Path(__file__).parent / "data" / "records"
DIGESTS = {"10ae17e03191cf51af5c", "f02fb832f7094db89bc2"}
MODEL_KEY = "5915e70241164f6aa0b3e9bd656e94358bfe5e63c9328162141a9e7ba6adacc1"


def _store(tmp_path: Path, version: str) -> ResultsStore:
    """A copy of a committed example store (tests may write into it)."""
    root = tmp_path / version
    shutil.copytree(RECORDS / version, root)
    return ResultsStore(root)


def _key(record: dict) -> CellKey:
    return CellKey(**record["key"])


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["digest", "metric"]).reset_index(drop=True)


def test_the_committed_examples_are_what_they_claim():
    for path in (RECORDS / "v1").rglob("*.json"):
        assert "schema_version" not in json.loads(path.read_text()), path  # written before versions existed
    for path in (RECORDS / "v2").rglob("*.json"):
        assert json.loads(path.read_text())["schema_version"] == 2, path
    assert {p.stem for p in (RECORDS / "v1" / "cells" / "lf_dnn").glob("*.json")} == DIGESTS
    assert SCHEMA_VERSION == 2 and sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))  # one step per version


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_old_and_current_records_load_through_the_store(tmp_path, version):
    store = _store(tmp_path, version)
    records = list(store.records())
    assert {r["digest"] for r in records} == DIGESTS
    assert all(r["schema_version"] == SCHEMA_VERSION and r["kind"] == CELL_KIND for r in records)
    for record in records:
        check_cell(record, store.path(_key(record)))
        loaded = store.load(_key(record))
        assert loaded == record and store.has(_key(record))
    frame = store.to_frame()
    assert len(frame) == 2 * 8 and set(frame["digest"]) == DIGESTS
    assert set(frame["level"]) == {0.0, 0.5} and set(frame["method"]) == {"lf_dnn"}
    assert set(frame["text_mode"]) == {"features"} and frame["text_encoder"].isna().all()
    assert frame["value"].notna().all() and set(frame["model_key"]) == {MODEL_KEY}
    coverage = store.coverage_frame()
    assert list(coverage["modality"]) == ["text", "audio", "vision"] and (coverage["fraction"] == 1.0).all()
    assert store.load_coverage("lf_dnn", MODEL_KEY)["schema_version"] == SCHEMA_VERSION
    manifest = store.read_manifest()
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["kind"] == "robustmsa.sweep"
    assert manifest["grid"]["levels"] == [0.0, 0.5]


def test_a_v1_store_reads_exactly_like_the_v2_store_of_the_same_model(tmp_path):
    old, new = _store(tmp_path, "v1").to_frame(), _store(tmp_path, "v2").to_frame()
    pd.testing.assert_frame_equal(_sorted(old), _sorted(new))
    pd.testing.assert_frame_equal(_store(tmp_path / "a", "v1").coverage_frame(),
                                  _store(tmp_path / "b", "v2").coverage_frame())


def test_downstream_readers_go_through_the_migrating_reader(tmp_path):
    from robustmsa.leaderboard import build, load_coverage, load_runs
    from robustmsa.robustness import summarize

    store = _store(tmp_path, "v1")
    frame = load_runs([store.root])
    assert set(frame["digest"]) == DIGESTS
    assert not summarize(frame).empty
    board = build(frame, "acc2", coverage=load_coverage([store.root]))
    assert list(board["method"]) == ["lf_dnn"] and board["coverage"].iloc[0] == "T 100% A 100% V 100%"
    shutil.copy(RECORDS / "future" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json",
                store.cells / "lf_dnn" / "f02fb832f7094db89bc2.json")
    with pytest.raises(SchemaVersionError, match="version 3"):
        load_runs([store.root])


def test_migrate_is_a_chain_of_steps_and_does_not_touch_its_input():
    v1 = json.loads((RECORDS / "v1" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json").read_text())
    v2 = json.loads((RECORDS / "v2" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json").read_text())
    before = json.dumps(v1, sort_keys=True)
    up = migrate(v1, CELL_KIND)
    assert json.dumps(v1, sort_keys=True) == before  # the input is not modified
    assert record_version(v1) == 1 and up["schema_version"] == 2 and next(iter(up)) == "schema_version"
    different = {"created", "checkpoint", "train_seconds", "train_from_cache", "eval_seconds", "schema_version"}
    assert {k: v for k, v in up.items() if k not in different} == {k: v for k, v in v2.items() if k not in different}
    assert migrate(v2, CELL_KIND) == v2  # current records pass unchanged
    # records of the store's own tests (no kind): the step names the kind the reader expects
    bare = {"metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}, "key": {}, "digest": "x"}
    assert migrate(bare, CELL_KIND)["kind"] == CELL_KIND and "kind" not in migrate(bare)
    assert migrate({"schema_version": 1, "kind": "robustmsa.coverage"})["schema_version"] == 2


def test_a_future_version_is_refused_with_a_clear_error_and_never_overwritten(tmp_path):
    store = _store(tmp_path, "v2")
    future = RECORDS / "future" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json"
    target = store.cells / "lf_dnn" / future.name
    shutil.copy(future, target)
    text = target.read_text()
    key = _key(json.loads(text))
    with pytest.raises(SchemaVersionError) as caught:
        store.to_frame()
    message = str(caught.value)
    assert str(target) in message and "schema version 3" in message and "newest: 2" in message
    assert "upgrade robustmsa" in message
    assert (caught.value.found, caught.value.supported, caught.value.path) == (3, 2, target)
    with pytest.raises(SchemaVersionError):
        list(store.records())
    with pytest.raises(SchemaVersionError):  # a sweep asks has(): it stops instead of recomputing the cell
        store.has(key)
    with pytest.raises(SchemaVersionError, match="to replace it"):  # --force would write without asking has()
        store.write(key, {"metrics": {"MAE": 0.0}, "higher_is_better": {"MAE": False}})
    assert target.read_text() == text
    assert not list(store.cells.glob("*/.*.tmp"))
    with pytest.raises(SchemaVersionError, match="newest: 2"):
        migrate(json.loads(text))


def test_future_coverage_and_manifest_are_refused_too(tmp_path):
    store = _store(tmp_path, "v2")
    coverage = store.coverage_path("lf_dnn", MODEL_KEY)
    coverage.write_text(json.dumps({**json.loads(coverage.read_text()), "schema_version": 7}))
    for read in (lambda: store.load_coverage("lf_dnn", MODEL_KEY), store.coverage_frame,
                 lambda: store.write_coverage("lf_dnn", MODEL_KEY, {"modalities": {}})):
        with pytest.raises(SchemaVersionError, match="schema version 7"):
            read()
    manifest = json.loads(store.manifest_path.read_text())
    store.manifest_path.write_text(json.dumps({**manifest, "schema_version": 3}))
    with pytest.raises(SchemaVersionError, match="manifest.json"):
        store.read_manifest()
    with pytest.raises(SchemaVersionError, match="manifest.json"):  # a sweep into this directory stops first
        store.write_manifest({"kind": "robustmsa.sweep"})
    assert json.loads(store.manifest_path.read_text())["schema_version"] == 3


@pytest.mark.parametrize("bad", ["2", 0, -1, True, None, 2.0])
def test_a_malformed_version_counts_as_damaged_and_is_replaced(tmp_path, bad):
    store = _store(tmp_path, "v2")
    path = store.cells / "lf_dnn" / "f02fb832f7094db89bc2.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema_version": bad}))
    key = _key(record)
    assert not store.has(key) and [r["digest"] for r in store.records()] == ["10ae17e03191cf51af5c"]
    with pytest.raises(ValueError, match="positive integer"):
        record_version({"schema_version": bad})
    store.write(key, record)  # a sweep recomputes it
    assert store.load(key)["metrics"] == record["metrics"]


def test_invalid_cell_records_are_not_trusted(tmp_path):
    store = _store(tmp_path, "v2")
    path = store.cells / "lf_dnn" / "f02fb832f7094db89bc2.json"
    record = json.loads(path.read_text())
    key = _key(record)
    broken = [{k: v for k, v in record.items() if k != "metrics"},
              {**record, "higher_is_better": {}},
              {**record, "digest": "0" * 20},
              {**record, "metrics": {**record["metrics"], "MAE": "x"}},
              {**record, "kind": "robustmsa.coverage"},
              [record]]
    for bad in broken:
        path.write_text(json.dumps(bad))
        assert store.load(key) is None and len(list(store.records())) == 1
    path.write_text(json.dumps(record)[:-40])  # truncated
    assert store.load(key) is None and len(store.to_frame()) == 8


def test_writers_stamp_the_current_version_and_kind(tmp_path):
    store = ResultsStore(tmp_path)
    key = CellKey("m", "fp", 1, None, "h", "c", 0.0, 1)
    path = store.write(key, {"schema_version": 1, "metrics": {"MAE": 1.0}, "higher_is_better": {"MAE": False}})
    written = json.loads(path.read_text())
    assert list(written)[:2] == ["schema_version", "kind"]
    assert written["schema_version"] == SCHEMA_VERSION and written["kind"] == CELL_KIND
    cov = json.loads(store.write_coverage("m", "k" * 64, {"kind": "robustmsa.coverage", "modalities": {}}).read_text())
    assert cov["schema_version"] == SCHEMA_VERSION and cov["kind"] == "robustmsa.coverage"
    manifest = json.loads(store.write_manifest({"kind": "robustmsa.sweep", "grid": {}}).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and store.read_manifest() == manifest
    # an older record in the way is replaced by the current layout
    old = json.loads((RECORDS / "v1" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json").read_text())
    old_key = _key(old)
    target = store.path(old_key)
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(old))
    store.write(old_key, {k: v for k, v in old.items() if k not in ("key", "digest")})
    assert json.loads(target.read_text())["schema_version"] == SCHEMA_VERSION


def test_the_cli_reports_a_future_record_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from robustmsa.cli import app

    store = _store(tmp_path, "v2")
    shutil.copy(RECORDS / "future" / "cells" / "lf_dnn" / "f02fb832f7094db89bc2.json",
                store.cells / "lf_dnn" / "f02fb832f7094db89bc2.json")
    result = CliRunner().invoke(app, ["leaderboard", str(store.root), "--metric", "acc2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "schema version 3" in lines[0] and "upgrade robustmsa" in lines[0], result.output
