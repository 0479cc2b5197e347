"""Two local processes (jax.distributed on 127.0.0.1, 2 fake CPU devices each) train ``tiny`` through the
CLI with the same loss at every step as one process with 4 devices and the same global batch; when one
of them is killed the other exits non-zero within a bounded time; and their checkpoint (one
data-iterator file per process) resumes in a single process, which continues like the single-process run.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.reliability import helpers

pytestmark = pytest.mark.slow

# Float tolerance: the two layouts reduce gradients in a different order (gloo across processes);
# measured differences are ~2e-7 relative.
RTOL = 1e-5
HEARTBEAT_S = 10  # at least; helpers.lose_peer widens it from this machine's measured step time
KILL_AFTER = 5  # process 1 is killed once process 0 has logged this many iterations (checkpoints at 2, 4)


def _assert_rows_close(got: list[dict], want: list[dict]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a["iteration"] == b["iteration"] and a["optimizer_step"] == b["optimizer_step"]
        for key in ("loss", "grad_norm", "lr"):
            np.testing.assert_allclose(a[key], b[key], rtol=RTOL, err_msg=f"{key} at iteration {a['iteration']}")


def test_two_processes_match_one_survive_a_dead_peer_and_resume_in_one(
    reference_run, compile_cache, tmp_path, one_multiprocess_job_at_a_time
):
    job = tmp_path / "job"
    env = helpers.train_env(compile_cache, devices=2, COSMOS_POLICY_HEARTBEAT_TIMEOUT_S=HEARTBEAT_S)
    # Many iterations: the run is ended by killing a process, not by reaching max_iter.
    args = helpers.tiny_args(job, 10_000)
    rc, waited, p0, heartbeat = helpers.lose_peer(
        args,
        env,
        tmp_path,
        after=KILL_AFTER,
        sig=signal.SIGKILL,
        heartbeat_s=HEARTBEAT_S,
        step_time_s=helpers.measured_step_time(reference_run),
    )
    # The surviving process does not wait forever for its dead peer.
    assert rc != 0, p0.tail()
    assert waited < heartbeat + 60, waited

    ref = helpers.rows(reference_run)
    got = helpers.rows(job)
    n = len(got)
    assert KILL_AFTER <= n < len(ref), n
    assert [r["iteration"] for r in got] == list(range(1, n + 1))
    _assert_rows_close(got, ref[:n])  # the same loss at every step as one process with 4 devices
    complete = [s for s in helpers.checkpoint_steps(job) if s.isdigit()]
    last = max(int(s) for s in complete)
    data_files = sorted(p.name for p in (job / "checkpoints" / str(last) / "data_iter").glob("process_*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    # One process with 4 devices resumes the two-process checkpoint and trains to the reference's end.
    r = helpers.run(helpers.tiny_args(job, helpers.REFERENCE_ITERS), helpers.train_env(compile_cache), tmp_path / "one")
    assert r.returncode == 0, r.tail()
    assert f"[cosmos_policy_jax] resuming from {job}/checkpoints/{last}" in r.stdout()
    assert not [s for s in helpers.checkpoint_steps(job) if "corrupt" in s]  # restored, not discarded
    _assert_rows_close(helpers.rows(job), ref)
    a, b = helpers.export(job), helpers.export(reference_run)
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
