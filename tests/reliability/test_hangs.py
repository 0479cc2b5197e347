"""No silent hangs: a data loader that stops producing and a peer process that hangs both end the run
with a non-zero exit within a bounded time (a peer that dies: test_multiprocess_equivalence.py)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.reliability import helpers

pytestmark = pytest.mark.slow

LOADER_TIMEOUT_S = 5


def test_stuck_data_loader_raises_after_the_timeout_and_exits(compile_cache, tmp_path):
    job = tmp_path / "job"
    stuck_batch = 3  # the loader thread blocks forever on a sample of the 4th batch
    env = helpers.train_env(compile_cache, FAULT_STALL_INDEX=helpers.sample_in_micro_batch(stuck_batch))
    args = helpers.tiny_args(job, helpers.REFERENCE_ITERS, f"--config.dataloader_train.timeout={LOADER_TIMEOUT_S}")
    r = helpers.start(args, env, tmp_path / "stuck", module=helpers.FAULT_TRAIN)
    helpers.wait_for(r, lambda: "[fault] stalling" in r.stdout(), "the loader to get stuck")
    stuck_at = time.monotonic()
    rc = r.wait(120)  # the stuck thread must not keep the process alive at exit
    waited = time.monotonic() - stuck_at
    assert rc == 3, r.tail()
    (line,) = r.error_lines()
    assert f"DataLoaderTimeout: no batch from the data loader within {LOADER_TIMEOUT_S} s" in line
    assert "dataloader_train.timeout" in line
    # Prefetching may get stuck a little before the trainer asks for that batch, never after the timeout.
    assert waited < LOADER_TIMEOUT_S + 60, waited
    # The last checkpoint before the stall is complete (an in-flight save is finished, not abandoned).
    assert "2" in helpers.checkpoint_steps(job) and not [s for s in helpers.checkpoint_steps(job) if "tmp" in s]


def test_a_hung_peer_stops_the_other_process(compile_cache, tmp_path, one_multiprocess_job_at_a_time):
    """Two processes; process 1 is stopped (SIGSTOP): its connections stay open and it just goes silent,
    like a frozen or unreachable node, so only the coordination service's heartbeat notices. Process 0
    must exit non-zero, not wait forever. (A killed peer: test_multiprocess_equivalence.py.)"""
    heartbeat_s = 10
    env = helpers.train_env(compile_cache, devices=2, COSMOS_POLICY_HEARTBEAT_TIMEOUT_S=heartbeat_s)
    args = helpers.tiny_args(tmp_path / "job", 10_000)
    rc, waited, p0, heartbeat = helpers.lose_peer(
        args, env, tmp_path, after=2, sig=signal.SIGSTOP, heartbeat_s=heartbeat_s
    )
    assert rc != 0, p0.tail()
    assert waited < heartbeat + 60, waited
