"""The job-directory lock: a second holder is refused naming the first; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cosmos_policy_jax.training import joblock

ROOT = Path(__file__).resolve().parents[2]

_HOLD = textwrap.dedent(
    """
    import os, sys, time
    from cosmos_policy_jax.training import joblock
    import subprocess
    lock = joblock.acquire(sys.argv[1])
    # a child started like a spawned data worker (fork + exec) must not keep the lock alive
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _holder(job: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(job)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so the test can kill the holder and its forked child together
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_naming_the_first_then_a_dead_holder_is_taken_over(tmp_path, caplog):
    job = tmp_path / "job"
    proc = _holder(job)
    try:
        with pytest.raises(joblock.JobLockedError, match=rf"in use by another run \(host .*, pid {proc.pid}, started "):
            joblock.acquire(str(job))
        proc.send_signal(signal.SIGKILL)  # the holder dies; its child lives on
        proc.wait(timeout=10)
        with joblock.acquire(str(job)) as lock:
            assert json.loads(Path(lock.path).read_text())["pid"] == os.getpid()
        assert any(f"pid {proc.pid}" in r.getMessage() and "taking over" in r.getMessage() for r in caplog.records)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    # released cleanly: no holder recorded, and the next taker reports nothing to take over
    assert Path(job, joblock.LOCK_NAME).read_text() == ""
    caplog.clear()
    joblock.acquire(str(job)).release()
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]


def test_release_lets_the_next_run_in_at_once(tmp_path):
    first = joblock.acquire(str(tmp_path))
    start = time.monotonic()
    with pytest.raises(joblock.JobLockedError):
        joblock.acquire(str(tmp_path))
    assert time.monotonic() - start < 5  # non-blocking: refused, not queued
    first.release()
    joblock.acquire(str(tmp_path)).release()


def test_job_path_that_is_a_file_or_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(joblock.JobDirectoryError, match=r"afile is a file, not a directory"):
        joblock.acquire(str(afile))
    with pytest.raises(joblock.JobDirectoryError, match=r"afile/job: cannot create"):
        joblock.acquire(str(afile / "job"))


def test_outcome_of_process_0_reaches_every_process(tmp_path):
    held = joblock.acquire(str(tmp_path))
    seen = []

    def share(message: str) -> str:  # stands in for the broadcast from process 0
        seen.append(message)
        return message

    with pytest.raises(joblock.JobLockedError, match="in use by another run"):
        joblock.acquire_for_job(str(tmp_path), True, share)
    held.release()
    # a non-main process takes no lock and stops with process 0's message
    with pytest.raises(joblock.JobLockedError, match="busy elsewhere"):
        joblock.acquire_for_job(str(tmp_path), False, lambda m: "JobLockedError:busy elsewhere")
    assert joblock.acquire_for_job(str(tmp_path), False, lambda m: "ok") is None
    lock = joblock.acquire_for_job(str(tmp_path), True, share)
    assert lock is not None and seen[-1] == "ok"
    lock.release()
