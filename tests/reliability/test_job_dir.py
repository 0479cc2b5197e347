"""One run per job directory, and resuming a job whose metrics.jsonl was torn by a crash.

Two ``train`` processes started together on one job directory: one trains to the end, the other stops at
once with exit 2 and one line naming the holder of the job's lock; metrics.jsonl has each iteration once.
A finished job whose metrics.jsonl ends in a torn line (a crash mid-write) resumes with exit 0, and a
resume asked to stop at an iteration already passed is refused without touching the job directory.
"""

from __future__ import annotations

import pytest

from cosmos_policy_jax.training.metrics import read_metrics
from tests.fixture_utils import snapshot
from tests.reliability import helpers

pytestmark = pytest.mark.slow


def test_two_runs_on_one_job_dir_one_is_refused_naming_the_holder(compile_cache, tmp_path):
    job = tmp_path / "job"
    args = helpers.tiny_args(job, 4)
    env = helpers.train_env(compile_cache)
    a = helpers.start(args, env, tmp_path / "a")
    b = helpers.start(args, env, tmp_path / "b")
    codes = {a.wait(600), b.wait(600)}
    assert codes == {0, 2}, a.tail() + b.tail()
    loser, winner = (a, b) if a.returncode == 2 else (b, a)
    (line,) = loser.error_lines()
    assert "JobLockedError" in line and f"{job} is in use by another run" in line, line
    assert f"pid {winner.proc.pid}, started " in line, line
    assert "Traceback" not in loser.stderr()
    assert [r["iteration"] for r in read_metrics(str(job))] == [1, 2, 3, 4]
    assert helpers.checkpoint_steps(job) == ["2", "4"]


def test_torn_metrics_resume_and_a_stop_already_passed(reference_run, compile_cache, tmp_path):
    job = helpers.copy_job(reference_run, tmp_path / "job")
    with open(job / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 9, "loss": 0.12')  # the crash hit mid-row
    env = helpers.train_env(compile_cache)

    before = snapshot(job)
    passed = helpers.run(helpers.tiny_args(job, 4), env, tmp_path / "passed", timeout=300)
    assert passed.returncode == 2, passed.tail()
    (line,) = passed.error_lines()
    assert "trainer.max_iter=4 is already passed" in line and "iteration 8" in line, line
    assert snapshot(job) == before  # config.yaml, metrics, checkpoints: nothing rewritten

    resumed = helpers.run(helpers.tiny_args(job, helpers.REFERENCE_ITERS + 2), env, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.tail()
    assert "is not a JSON object (torn by a crash?); dropping it" in resumed.stderr()
    iterations = [r["iteration"] for r in read_metrics(str(job))]
    assert iterations == list(range(1, helpers.REFERENCE_ITERS + 3)), iterations
