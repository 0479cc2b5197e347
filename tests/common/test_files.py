"""Atomic writes: the target holds the old bytes or the new ones, never a mix, and no temporary file stays."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from cosmos_policy_jax.common import files


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_text_bytes_and_json_round_trip(tmp_path):
    files.atomic_write_text(tmp_path / "a.txt", "héllo\n")
    files.atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    files.atomic_write_json(tmp_path / "c.json", {"b": [1, 2], "a": None}, indent=2, sort_keys=True)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    text = (tmp_path / "c.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1, 2]} and text.index('"a"') < text.index('"b"')
    assert _names(tmp_path) == ["a.txt", "b.bin", "c.json"]


def test_creates_the_parent_directory_and_replaces_an_existing_file(tmp_path):
    target = tmp_path / "new" / "dir" / "f.txt"
    files.atomic_write_text(target, "one")
    files.atomic_write_text(target, "two")
    assert target.read_text() == "two" and _names(target.parent) == ["f.txt"]


def test_a_failed_json_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "stats.json"
    files.atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):  # half of the object is written before json meets the bad value
        files.atomic_write_json(target, {"first": list(range(1000)), "bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _names(tmp_path) == ["stats.json"]


def test_an_exception_inside_atomic_path_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "episode.hdf5"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer crashed"), files.atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"partial new content")
        assert os.path.dirname(tmp) == str(tmp_path) and not tmp.endswith(".hdf5")  # same dir, not globbed
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["episode.hdf5"]


def test_atomic_path_serves_writers_that_take_a_file_name(tmp_path):
    target = tmp_path / "arrays.npz"
    with files.atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=np.arange(3))
    np.testing.assert_array_equal(np.load(target)["x"], np.arange(3))


def test_atomic_dir_publishes_the_filled_directory(tmp_path):
    target = tmp_path / "built"
    with files.atomic_dir(target) as tmp:
        assert not target.exists()
        (pathlib.Path(tmp) / "a.txt").write_text("x")
    assert (target / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["built"]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "built"
    with pytest.raises(RuntimeError), files.atomic_dir(target) as tmp:
        (pathlib.Path(tmp) / "a.txt").write_text("x")
        raise RuntimeError("generation failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_copy_of_a_process_that_finished_first(tmp_path):
    target = tmp_path / "built"
    with files.atomic_dir(target) as tmp:
        (pathlib.Path(tmp) / "mine.txt").write_text("late")
        target.mkdir()  # another process renamed its copy in meanwhile
        (target / "theirs.txt").write_text("first")
    assert sorted(p.name for p in target.iterdir()) == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["built"]


def test_sha256_of_reads_the_whole_file_in_blocks(tmp_path):
    import hashlib

    data = os.urandom((1 << 20) + 7)  # spans two read blocks
    (tmp_path / "f.bin").write_bytes(data)
    assert files.sha256_of(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
