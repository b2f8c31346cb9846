"""Atomic writes: the file appears whole or not at all, with the usual permissions, never over an existing one."""

from __future__ import annotations

import os

import pytest

from robustmsa._io import OutputExistsError, atomic_open


def test_atomic_write_uses_the_umask_permissions_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.json", mode="w") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_nothing_and_an_existing_file_is_kept(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_open(target) as handle:
            handle.write(b"theirs")
    assert target.read_bytes() == b"mine" and list(tmp_path.iterdir()) == [target]


def test_outputs_are_claimed_before_work_and_a_failed_sidecar_removes_its_output(tmp_path):
    from robustmsa._io import claim_outputs, write_sidecar

    out = tmp_path / "data.pkl"
    assert claim_outputs(out) == tmp_path / "data.pkl.json"
    (tmp_path / "data.pkl.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="data.pkl.json"):
        claim_outputs(out)
    (tmp_path / "data.pkl.json").unlink()
    out.write_bytes(b"pickle")
    (tmp_path / "data.pkl.json").mkdir()  # the sidecar cannot be written
    with pytest.raises(OSError):
        write_sidecar(out, {"kind": "x"})
    assert not out.exists()
