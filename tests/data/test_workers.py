"""Data worker hygiene: jax stays out of spawned data workers only, and a worker leaves with its parent."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cosmos_policy_jax.data import workers

ROOT = Path(__file__).resolve().parents[2]


def _jax_importable(queue) -> None:
    try:
        import jax  # noqa: F401
    except ImportError as e:
        queue.put(str(e))
    else:
        queue.put("imported")


def _spawned_child_imports_jax(mark: bool) -> str:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    if mark:
        with workers.starting_data_workers():
            proc = ctx.Process(target=_jax_importable, args=(queue,))
            proc.start()
    else:
        proc = ctx.Process(target=_jax_importable, args=(queue,))
        proc.start()
    out = queue.get(timeout=120)
    proc.join(timeout=30)
    return out


def test_jax_is_kept_out_of_data_workers_only():
    assert "COSMOS_POLICY_DATA_WORKER" not in os.environ
    assert _spawned_child_imports_jax(mark=True) == "jax is not loaded in data worker processes"
    assert "COSMOS_POLICY_DATA_WORKER" not in os.environ  # the mark is only set while workers start
    assert _spawned_child_imports_jax(mark=False) == "imported"  # e.g. eval's LIBERO env workers
    # the parent itself is never affected
    assert not workers.keep_jax_out_of_spawned_worker(["python", "-m", "pytest"])


_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; from cosmos_policy_jax.data import workers; "
        "workers.exit_with_parent(int(sys.argv[1]), poll_s=0.1); print('ready', flush=True); time.sleep(60)",
        str(os.getpid())], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def test_a_worker_leaves_when_its_parent_is_killed():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        os.kill(child, 0)  # alive while the parent lives
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the worker outlived its parent by 10 s"
            time.sleep(0.05)
    finally:
        parent.kill()
        if Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
