"""Exact resume after a crash (SIGKILL) and after preemption (SIGTERM), through the training CLI.

One interrupted job is run once (module fixture) and compared with the shared uninterrupted
reference run: killed with SIGKILL at a random iteration after the first checkpoint, restarted with
the same command, sent SIGTERM a little after it resumed, restarted again and trained to the end.
"""

from __future__ import annotations

import os
import random
import re
import signal
from dataclasses import dataclass

import pytest

from tests.reliability import helpers
from tests.reliability.conftest import shared_once

pytestmark = pytest.mark.slow


RESUMED = "[cosmos_policy_jax] resuming from "


@dataclass
class Interrupted:
    job: str
    kill_at: int  # iteration reported when SIGKILL was sent
    killed_rc: int
    resumed_from: int  # checkpoint the first restart resumed from
    term_rc: int
    term_out: str
    preempted_at: int  # iteration the SIGTERM'd process checkpointed and stopped at
    rows_after_term: list[dict]
    steps_after_term: list[str]
    final_out: str
    final_rc: int


def _resumed_from(out: str) -> int:
    found = re.findall(re.escape(RESUMED) + r"(\S+)", out)
    assert len(found) == 1, out
    return int(os.path.basename(found[0]))


@pytest.fixture(scope="module")
def interrupted(reference_run, compile_cache, shared_dir) -> Interrupted:
    # Shared by the xdist workers: the scenario runs once per session.
    return Interrupted(**shared_once(shared_dir, "interrupted", lambda d: _interrupt(d, compile_cache)))


def _interrupt(tmp, compile_cache) -> dict:
    job = tmp / "job"
    env = helpers.train_env(compile_cache)
    args = helpers.tiny_args(job, helpers.REFERENCE_ITERS)
    # A random iteration after the first checkpoint (2) and before the last ones; printed on failure.
    kill_at = random.SystemRandom().randint(helpers.SAVE_ITER + 1, helpers.REFERENCE_ITERS - 3)

    first = helpers.start(args, env, tmp / "1-killed")
    helpers.wait_for(first, lambda: first.progress() >= kill_at, f"iteration {kill_at}")
    reported = first.progress()
    first.proc.send_signal(signal.SIGKILL)
    killed_rc = first.wait(60)

    second = helpers.start(args, env, tmp / "2-terminated")
    helpers.wait_for(second, lambda: RESUMED in second.stdout(), "the resume message")
    resumed_from = _resumed_from(second.stdout())
    # SIGTERM once the restarted process has trained a step of its own.
    helpers.wait_for(second, lambda: second.progress() >= resumed_from + 1, f"iteration {resumed_from + 1}")
    second.proc.send_signal(signal.SIGTERM)
    term_rc = second.wait(120)
    term_out = second.stdout()
    stopped = re.findall(r"preempted at iteration (\d+); checkpoint saved", term_out)
    preempted_at = int(stopped[0]) if stopped else -1
    rows_after_term = helpers.rows(job)
    steps_after_term = helpers.checkpoint_steps(job)

    third = helpers.run(args, env, tmp / "3-finished")
    return dict(
        job=str(job),
        kill_at=reported,
        killed_rc=killed_rc,
        resumed_from=resumed_from,
        term_rc=term_rc,
        term_out=term_out,
        preempted_at=preempted_at,
        rows_after_term=rows_after_term,
        steps_after_term=steps_after_term,
        final_out=third.stdout(),
        final_rc=third.returncode,
    )


def test_sigkill_restart_resumes_from_the_last_checkpoint(interrupted):
    r = interrupted
    assert r.killed_rc == -signal.SIGKILL
    # The newest checkpoint at or before the kill (its save may have been cut short: then the one before).
    last_ckpt = r.kill_at - r.kill_at % helpers.SAVE_ITER
    assert r.resumed_from in (last_ckpt, last_ckpt - helpers.SAVE_ITER), (r.kill_at, r.resumed_from)
    assert r.resumed_from >= helpers.SAVE_ITER


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(interrupted):
    r = interrupted
    assert r.term_rc == 143, r.term_out
    assert r.resumed_from < r.preempted_at < helpers.REFERENCE_ITERS, (r.resumed_from, r.preempted_at)
    # The step it was in was finished and logged, and a finalised checkpoint of exactly that step exists.
    assert r.rows_after_term[-1]["iteration"] == r.preempted_at
    assert str(r.preempted_at) in r.steps_after_term, r.steps_after_term
    assert not [s for s in r.steps_after_term if "tmp" in s], r.steps_after_term
    # The next start resumes from it.
    assert r.final_rc == 0, r.final_out
    assert _resumed_from(r.final_out) == r.preempted_at


def test_interrupted_run_equals_the_uninterrupted_one(interrupted, reference_run):
    r = interrupted
    assert r.final_rc == 0, r.final_out
    # Bit-identical final parameters and identical logged metrics (data order included: every row's
    # losses depend on the batch), for the rows before the interruptions and after both restarts.
    helpers.assert_same_export(reference_run, r.job)
    got, want = helpers.rows(r.job), helpers.rows(reference_run)
    assert [x["iteration"] for x in got] == list(range(1, helpers.REFERENCE_ITERS + 1))
    for a, b in zip(got, want, strict=True):
        assert a == b, f"iteration {a['iteration']} (killed at {r.kill_at}, preempted at {r.preempted_at})"
