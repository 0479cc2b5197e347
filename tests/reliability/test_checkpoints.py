"""Atomic checkpoints: interrupted saves and damaged files are detected, the trainer falls back to
the previous good checkpoint with a warning naming what it skipped, and no good checkpoint is lost."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.fixture_utils import snapshot
from tests.reliability import helpers

pytestmark = pytest.mark.slow


def _largest_array_file(step_dir: str) -> str:
    """The biggest OCDBT data file of a checkpoint's train state (it holds most array chunks)."""
    files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state")) for n in ns]
    return max((f for f in files if f"{os.sep}d{os.sep}" in f), key=os.path.getsize)


def _flip_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def _truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def test_damaged_checkpoints_are_skipped_moved_aside_and_the_previous_one_resumes(
    reference_run, compile_cache, tmp_path
):
    job = helpers.copy_job(reference_run, tmp_path / "job")
    ck = job / "checkpoints"
    assert helpers.checkpoint_steps(job) == ["4", "6", "8"]
    # 8: one flipped byte inside compressed array data (tensorstore decodes it without an error; only
    # the fingerprint sees it). 6: a truncated data file. 10: a save killed before its commit.
    _flip_byte(_largest_array_file(str(ck / "8")))
    _truncate(_largest_array_file(str(ck / "6")))
    shutil.copytree(ck / "4", ck / "10.orbax-checkpoint-tmp")
    os.remove(ck / "10.orbax-checkpoint-tmp" / "commit_success.txt")
    before = {step: snapshot(ck / step) for step in ("4", "6", "8")}

    r = helpers.run(helpers.tiny_args(job, 5), helpers.train_env(compile_cache), tmp_path / "restart")
    assert r.returncode == 0, r.tail()
    out = r.stdout()
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert any(f"{ck}/10.orbax-checkpoint-tmp is incomplete" in w for w in warnings), warnings
    assert any(f"{ck}/8 is unreadable (CorruptCheckpointError" in w for w in warnings), warnings
    assert any(f"{ck}/6 is unreadable" in w for w in warnings), warnings
    assert f"resuming from {ck}/4" in out
    entries = helpers.checkpoint_steps(job)
    moved = {s.split(".")[0]: s for s in entries if ".corrupt-" in s}
    assert sorted(moved) == ["6", "8"], entries
    for step, name in moved.items():
        assert any(f"{ck}/{step} (" in w and f"moved aside to {ck}/{name}" in w for w in warnings), warnings
        assert snapshot(ck / name) == before[step]  # kept byte for byte, not deleted
    assert snapshot(ck / "4") == before["4"]  # the good checkpoint is untouched
    assert sorted(s for s in entries if ".corrupt-" not in s) == ["4", "5"]  # 10 was never a checkpoint
    # Training continued exactly from checkpoint 4: its rows equal the uninterrupted run's.
    assert helpers.rows(job) == helpers.rows(reference_run)[:5]


def test_process_killed_while_committing_a_save_resumes_from_the_previous_checkpoint(
    reference_run, compile_cache, tmp_path
):
    job = tmp_path / "job"
    env = helpers.train_env(compile_cache)
    args = helpers.tiny_args(job, helpers.REFERENCE_ITERS)
    # SIGKILL inside orbax's commit of checkpoint 4: every array written, the commit rename not done.
    killed = helpers.run(args, {**env, "FAULT_KILL_AT_COMMIT": "4"}, tmp_path / "killed", module=helpers.FAULT_TRAIN)
    assert killed.returncode == -9, killed.tail()
    assert helpers.checkpoint_steps(job) == ["2", "4.orbax-checkpoint-tmp"]

    r = helpers.run(args, env, tmp_path / "restart")
    assert r.returncode == 0, r.tail()
    assert f"{job}/checkpoints/4.orbax-checkpoint-tmp is incomplete" in r.stdout()
    assert f"resuming from {job}/checkpoints/2" in r.stdout()
    helpers.assert_same_export(reference_run, job)
    assert helpers.rows(job) == helpers.rows(reference_run)


def test_no_restorable_checkpoint_fails_without_moving_anything(reference_run, compile_cache, tmp_path):
    """If every checkpoint fails (e.g. the file system is broken), the run stops instead of moving them
    all aside and silently starting over from iteration 0."""
    job = helpers.copy_job(reference_run, tmp_path / "job")
    for step in helpers.checkpoint_steps(job):
        _truncate(_largest_array_file(str(job / "checkpoints" / step)))
    before = snapshot(job)
    r = helpers.run(helpers.tiny_args(job, 9), helpers.train_env(compile_cache), tmp_path / "restart")
    assert r.returncode == 2, r.tail()
    (line,) = r.error_lines()
    assert re.search(rf"CheckpointError: no checkpoint in {job}/checkpoints can be restored \(8: .*6: .*4: ", line), (
        line
    )
    assert snapshot(job) == before
