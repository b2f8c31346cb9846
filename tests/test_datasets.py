"""Data layer: safe unpickling, validation errors, sanitising, registry loading, round trips."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest

from conftest import make_dataset, make_raw_dataset
from robustmsa.datasets import (DataValidationError, NonFiniteFeaturesWarning, UnsafePickleError, content_hash, load,
                                read_mmsa_pickle, safe_load_pickle, write_mmsa_pickle)
from robustmsa.datasets.io import ChecksumMismatchWarning
from robustmsa.datasets.safe_pickle import safe_loads
from robustmsa._io import OutputExistsError


def dump(obj, path, protocol=4):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


# ------------------------------------------------------------- safe unpickling
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_malicious_pickle_is_refused_and_payload_does_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    raw = make_raw_dataset(n=5)
    raw["test"]["annotations"] = _Payload(marker)
    path = dump(raw, tmp_path / "evil.pkl", protocol)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to unpickle a reference to (posix|os)\.system"):
        read_mmsa_pickle(path)
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(path)
    assert not marker.exists()


def test_other_globals_are_refused_too():
    import collections

    assert safe_loads(pickle.dumps(collections.OrderedDict(a=1))) == {"a": 1}
    for obj in (collections.Counter("ab"), np.random.default_rng(0), pytest):
        with pytest.raises((UnsafePickleError, TypeError, pickle.PicklingError)):
            safe_loads(pickle.dumps(obj))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_of_all_kinds_load_with_every_protocol(protocol):
    data = {"f": np.arange(6, dtype=np.float64).reshape(2, 3), "o": np.array(["a", "b"], dtype=object),
            "u": np.array(["xy", "z"]), "i": np.int64(4), "s": np.float32(2.5), "l": [1, 2.0, "x", (1, 2)],
            "b": np.array([True, False]), "c": 1 + 2j, "set": {1, 2}}
    back = safe_loads(pickle.dumps(data, protocol=protocol))
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back[key], value)
            assert back[key].dtype == value.dtype
        else:
            assert back[key] == value


def test_truncated_file_is_a_clear_error(tmp_path):
    path = dump(make_raw_dataset(n=5), tmp_path / "cut.pkl")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(pickle.UnpicklingError, match="cut.pkl: not a readable pickle"):
        read_mmsa_pickle(path)


# ------------------------------------------------------------------ validation
def corrupt_raw(change):
    raw = make_raw_dataset(n=10)
    change(raw)
    return raw


def _set(split, key, value):
    def change(raw):
        raw[split][key] = value(raw[split]) if callable(value) else value
    return change


CASES = [
    ("missing key", lambda r: r["test"].pop("audio"), "test", "audio", "required keys"),
    ("wrong rank", _set("train", "vision", lambda s: s["vision"][:, :, 0]), "train", "vision", "rank 3"),
    ("inconsistent N", _set("valid", "audio", lambda s: s["audio"][:-1]), "valid", "audio", r"rank 3 \(10, L, D\)"),
    ("text_bert shape", _set("test", "text_bert", lambda s: s["text_bert"][:, :, :-1]), "test", "text_bert",
     r"shape \(10, 3, 12\)"),
    ("labels shape", _set("test", "regression_labels", lambda s: s["regression_labels"][:-2]), "test",
     "regression_labels", r"shape \(10,\)"),
    ("length beyond padding", _set("train", "audio_lengths", lambda s: s["audio_lengths"] + 1000), "train",
     "audio_lengths", r"lengths in \[0, 30\]"),
    ("negative length", _set("test", "vision_lengths", lambda s: s["vision_lengths"] - 100), "test",
     "vision_lengths", r"lengths in \[0, 20\]"),
    ("fractional length", _set("test", "vision_lengths", lambda s: s["vision_lengths"] + 0.5), "test",
     "vision_lengths", "integer lengths"),
    ("one lengths key", lambda r: r["valid"].pop("vision_lengths"), "valid", "vision_lengths", "alongside"),
    ("labels out of range", _set("test", "regression_labels", lambda s: s["regression_labels"] * 10), "test",
     "regression_labels", r"labels in \[-3, 3\]"),
    ("nan label", _set("test", "regression_labels", lambda s: np.full(10, np.nan)), "test", "regression_labels",
     "finite labels"),
    ("mask not binary", _set("train", "text_bert", lambda s: s["text_bert"] * 2), "train", "text_bert", "0/1"),
    ("mask gap", lambda r: r["train"]["text_bert"].__setitem__((0, 1, 3), 0), "train", "text_bert",
     "1s followed by 0s"),
    ("raw_text length", _set("test", "raw_text", lambda s: s["raw_text"][:3]), "test", "raw_text", "shape"),
    ("dim mismatch across splits", _set("test", "audio", lambda s: s["audio"][:, :, :2]), "test", "audio",
     "feature dimension 5"),
    ("odd extra key", _set("test", "annotations", np.zeros(3)), "test", "annotations", "leading dimension 10"),
]


@pytest.mark.parametrize("what,change,split,key,expected", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_name_file_split_key_expected_and_found(tmp_path, what, change, split, key, expected):
    path = dump(corrupt_raw(change), tmp_path / "bad.pkl")
    with pytest.raises(DataValidationError, match=expected) as info:
        read_mmsa_pickle(path, label_family="mosi")
    message = str(info.value)
    assert str(path) in message and f"split {split!r}" in message and f"key {key!r}" in message
    assert "found" in message


def test_top_level_errors(tmp_path):
    with pytest.raises(DataValidationError, match="expected a dict with keys"):
        read_mmsa_pickle(dump([1, 2], tmp_path / "list.pkl"))
    raw = make_raw_dataset(n=5)
    raw["dev"] = raw.pop("valid")
    with pytest.raises(DataValidationError, match="MAG/MIB layout"):
        read_mmsa_pickle(dump(raw, tmp_path / "mag.pkl"))


def test_nonfinite_features_are_zeroed_counted_and_warned(tmp_path):
    raw = make_raw_dataset(n=10)
    raw["train"]["audio"][0, 0, :2] = -np.inf
    raw["train"]["audio"][1, 0, 0] = np.nan
    raw["test"]["vision"][2, 0, 0] = np.inf
    path = dump(raw, tmp_path / "inf.pkl")
    with pytest.warns(NonFiniteFeaturesWarning, match="set 4 non-finite"):
        dataset = read_mmsa_pickle(path)
    assert np.all(np.isfinite(dataset.train.audio)) and dataset.train.audio[0, 0, 0] == 0
    assert dataset.report.nonfinite["train"]["audio"] == {"nan": 1, "+inf": 0, "-inf": 2}
    assert dataset.report.total_nonfinite == 4


def test_validation_does_not_mutate_a_caller_dict():
    from robustmsa.datasets.validate import splits_from_mmsa_dict

    raw = make_raw_dataset(n=6)
    raw["test"]["audio"] = raw["test"]["audio"].astype(np.float32)
    raw["test"]["audio"][0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits, _ = splits_from_mmsa_dict(raw, source="mem", label_range=(-3, 3))
    assert np.isnan(raw["test"]["audio"][0, 0, 0]) and splits["test"].audio[0, 0, 0] == 0


def test_aligned_file_lengths_come_from_text_mask_and_are_not_written_back(tmp_path):
    path = dump(make_raw_dataset(n=10, aligned=True), tmp_path / "aligned.pkl")
    dataset = read_mmsa_pickle(path)
    assert dataset.spec.aligned and not dataset.test.has_length_keys
    np.testing.assert_array_equal(dataset.test.audio_lengths, dataset.test.text_lengths)
    out = tmp_path / "back.pkl"
    write_mmsa_pickle(dataset, out)
    assert "audio_lengths" not in safe_load_pickle(out)["test"]


def test_label_family_is_inferred_and_overridable(tmp_path):
    sims = dump(make_raw_dataset(n=10, sims=True), tmp_path / "mine.pkl")
    dataset = read_mmsa_pickle(sims)
    assert dataset.spec.label_family == "sims" and dataset.spec.label_range == (-1.0, 1.0)
    assert any("inferred" in note for note in dataset.report.notes)
    assert read_mmsa_pickle(sims, label_family="mosi").spec.label_family == "mosi"
    mosi = dump(make_raw_dataset(n=10), tmp_path / "sims_named.pkl")
    with pytest.raises(DataValidationError, match=r"labels in \[-1, 1\]"):
        read_mmsa_pickle(mosi)  # 'sims' in the name, labels beyond 1


def test_splits_are_read_only():
    dataset = make_dataset(n=5)
    with pytest.raises(ValueError, match="read-only"):
        dataset.test.audio[0, 0, 0] = 1.0


# ------------------------------------------------------------------ registry & io
def test_load_by_name_under_data_root_with_checksum_check(tmp_path, monkeypatch):
    target = tmp_path / "MOSI" / "Processed" / "unaligned_50.pkl"
    target.parent.mkdir(parents=True)
    dump(make_raw_dataset(n=8), target)
    with pytest.warns(ChecksumMismatchWarning, match="differs from the published 78e0f8b5"):
        dataset = load("mosi", data_root=tmp_path)
    assert dataset.spec.name == "mosi" and dataset.spec.fingerprint.startswith("sha256:")
    from robustmsa._io import sha256_file

    assert dataset.spec.fingerprint == f"sha256:{sha256_file(target)}"
    monkeypatch.setenv("ROBUSTMSA_DATA", str(tmp_path))
    with pytest.warns(ChecksumMismatchWarning):
        assert load("mosi").spec.source == str(target)


def test_missing_and_unknown_datasets_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MOSEI/Processed/unaligned_50.pkl.*--data-root"):
        load("mosei", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="Did you mean: mosi"):
        load("mosii", data_root=tmp_path)


def test_write_then_read_round_trip_is_identical(tmp_path):
    dataset = make_dataset(n=12)
    out = tmp_path / "rt.pkl"
    sha = write_mmsa_pickle(dataset, out)
    back = read_mmsa_pickle(out)
    assert back.spec.fingerprint == f"sha256:{sha}"
    assert content_hash(back) == content_hash(dataset)
    assert set(safe_load_pickle(out)["test"]) == set(dataset.test.to_mmsa_dict())


def test_writer_refuses_to_overwrite_and_leaves_no_temp_files(tmp_path):
    dataset = make_dataset(n=4)
    out = tmp_path / "x.pkl"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        write_mmsa_pickle(dataset, out)
    assert out.read_bytes() == b"precious"
    write_mmsa_pickle(dataset, out, force=True)
    assert read_mmsa_pickle(out).test.audio.shape == dataset.test.audio.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pkl"]
