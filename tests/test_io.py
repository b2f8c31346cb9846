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


def test_temporary_files_name_their_writer_and_only_dead_writers_files_are_removed(tmp_path):
    import subprocess
    import sys
    import time

    from robustmsa._io import _host_tag, _temp_owner, remove_stale_temps

    seen = []
    with atomic_open(tmp_path / "out.json", mode="w") as handle:
        seen = [p.name for p in tmp_path.iterdir()]
        handle.write("{}")
    assert len(seen) == 1 and _temp_owner(seen[0]) == (_host_tag(), os.getpid())
    assert seen[0].startswith(".out.json.") and seen[0].endswith(".tmp")

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(gone.stdout)
    host = _host_tag()
    names = {"dead": f".a.json.{host}.{dead}.x1y2z3.tmp", "me": f".b.json.{host}.{os.getpid()}.x1y2z3.tmp",
             "parent": f".c.json.{host}.{os.getppid()}.x1y2z3.tmp",
             "elsewhere": f".d.json.other-host.{dead}.x1y2z3.tmp", "old_elsewhere": ".e.json.other-host.1.ab.tmp",
             "old_format": ".f.json.k2j3h4.tmp", "not_ours": "g.tmp"}
    sub = tmp_path / "cells" / "m"
    sub.mkdir(parents=True)
    for name in names.values():
        (sub / name).write_text("partial")
    week_ago = time.time() - 7 * 24 * 3600
    for key in ("old_elsewhere", "old_format"):
        os.utime(sub / names[key], (week_ago, week_ago))
    assert remove_stale_temps(tmp_path) == []  # not recursive: nothing at the top
    removed = remove_stale_temps(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == sorted(names[k] for k in ("dead", "old_elsewhere", "old_format"))
    assert sorted(p.name for p in sub.iterdir()) == sorted(names[k] for k in ("me", "parent", "elsewhere",
                                                                               "not_ours"))
    assert remove_stale_temps(tmp_path / "missing") == []
