"""Two local processes (jax.distributed on 127.0.0.1, 2 fake CPU devices each) train ``tiny`` through the
CLI with the same loss at every step as one process with 4 devices and the same global batch, and their
checkpoint (one data-iterator file per process) resumes in a single process."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reliability import helpers

pytestmark = pytest.mark.slow

ITERS = 4
# Float tolerance: the two layouts reduce gradients in a different order (gloo across processes).
RTOL = 1e-5


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(reference_run, compile_cache, tmp_path):
    job = tmp_path / "job"
    port = helpers.free_port()
    env = helpers.train_env(compile_cache, devices=2)
    args = helpers.tiny_args(job, ITERS)
    mp = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes=2"]
    procs = [helpers.start([*args, *mp, f"--process_id={i}"], env, tmp_path / f"p{i}") for i in range(2)]
    try:
        rcs = [p.wait(600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert rcs == [0, 0], procs[0].tail() + procs[1].tail()
    ref = helpers.rows(reference_run)
    got = helpers.rows(job)
    assert [r["iteration"] for r in got] == list(range(1, ITERS + 1))
    for a, b in zip(got, ref[:ITERS]):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=RTOL, err_msg=f"iteration {a['iteration']}")
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=RTOL, err_msg=f"iteration {a['iteration']}")
        assert a["optimizer_step"] == b["optimizer_step"]
    data_files = sorted(p.name for p in (job / "checkpoints" / str(ITERS) / "data_iter").glob("process_*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    # One process, 4 devices, one more step from the two-process checkpoint.
    r = helpers.run(helpers.tiny_args(job, ITERS + 1), helpers.train_env(compile_cache), tmp_path / "single")
    assert r.returncode == 0, r.tail()
    assert f"resuming from {job}/checkpoints/{ITERS}" in r.stdout()
    assert not [s for s in helpers.checkpoint_steps(job) if "corrupt" in s]
    last = helpers.rows(job)[-1]
    assert last["iteration"] == ITERS + 1
    # Same data position and parameters: the next step matches the single-process run's.
    np.testing.assert_allclose(last["loss"], ref[ITERS]["loss"], rtol=RTOL)
    np.testing.assert_allclose(last["grad_norm"], ref[ITERS]["grad_norm"], rtol=RTOL)
