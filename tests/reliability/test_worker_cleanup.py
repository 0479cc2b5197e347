"""A trainer killed by SIGKILL takes its grain data workers and their shared memory with it.

A ``demo`` run with ``dataloader_train.num_workers=2`` is killed once its workers have filled shared
memory with batches (the trainer reads its first batch before compiling); 10 s later none of its
child processes (the two workers, multiprocessing's resource tracker) is alive and none of the
``/dev/shm`` segments that appeared while it ran is left. The workers never mapped jaxlib.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability import helpers

pytestmark = pytest.mark.slow
SHM = Path("/dev/shm")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")
def test_sigkill_of_the_trainer_leaves_no_worker_and_no_shared_memory(compile_cache, tmp_path):
    args = [
        "--config=configs/cosmos_policy.py:demo",
        f"--config.job.path_local={tmp_path / 'job'}",
        "--config.dataloader_train.num_workers=2",
        "--config.dataloader_train.dataset.demo_num_episodes=16",
        "--config.dataloader_train.dataset.demo_num_rollouts=8",
        "--config.dataloader_val.dataset.demo_num_episodes=16",
        "--config.dataloader_val.dataset.demo_num_rollouts=8",
        "--config.trainer.logging_iter=1",
        "--config.trainer.run_validation=False",
    ]
    env = helpers.train_env(compile_cache, devices=1, COSMOS_POLICY_DATA_ROOT=tmp_path / "data")
    shm_before = set(os.listdir(SHM))
    run = helpers.start(args, env, tmp_path / "demo")
    kids: list[int] = []
    try:

        def workers_busy() -> bool:
            workers = [k for k in _children(run.proc.pid) if "--multiprocessing-fork" in _cmdline(k)]
            return len(workers) == 2 and bool(set(os.listdir(SHM)) - shm_before)

        helpers.wait_for(run, workers_busy, "two workers writing batches to /dev/shm")
        time.sleep(1)  # let them fill their buffers
        kids = _children(run.proc.pid)
        workers = [k for k in kids if "--multiprocessing-fork" in _cmdline(k)]
        for w in workers:
            assert "jaxlib" not in Path(f"/proc/{w}/maps").read_text(), f"worker {w} loaded jax"
        ours = set(os.listdir(SHM)) - shm_before
        assert ours
        run.kill()
        time.sleep(10)
        assert [k for k in kids if _alive(k)] == [], "children of the killed trainer still alive"
        assert sorted(ours & set(os.listdir(SHM))) == []
    finally:
        run.kill()
        for k in kids:  # never leave them behind, even when the test fails
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""
