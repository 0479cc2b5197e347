"""A tiny demo policy trained for a few steps (once per session) and policy servers run as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_BATCH = 4


def _env(data_root: str) -> dict[str, str]:
    # The in-process comparison runs under tests/conftest.py's matmul precision; the server must match.
    return {**os.environ, "COSMOS_POLICY_DATA_ROOT": data_root, "JAX_PLATFORMS": "cpu",
            "JAX_DEFAULT_MATMUL_PRECISION": "highest", "PYTHONPATH": REPO}  # fmt: skip


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory) -> dict[str, str]:
    """A demo-task policy (tiny DiT) trained for 2 steps by the real CLI: checkpoints, export and assets."""
    root = tmp_path_factory.mktemp("serve_job")
    job, data = str(root / "job"), str(root / "data")
    cmd = [sys.executable, "-m", "cosmos_policy_jax.train", "--config=configs/cosmos_policy.py:demo,tiny",
           f"--config.job.path_local={job}", "--config.trainer.max_iter=2", "--config.checkpoint.save_iter=2",
           "--config.trainer.run_validation=False", "--config.checkpoint.async_save=False"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=_env(data), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"job": job, "data": data}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, job: dict[str, str], *args: str):
        self.port = free_port()
        cmd = [sys.executable, "-m", "cosmos_policy_jax.serve", f"--checkpoint={job['job']}", f"--port={self.port}",
               f"--max_batch={MAX_BATCH}", "--batch_window_ms=20", "--log_every=5", *args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(job["data"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        deadline = time.time() + 240
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError("server exited:\n" + "".join(self.lines[-30:]))
            self.lines.append(line)
            if line.startswith("[serve] ready"):
                return
        raise AssertionError("server did not start:\n" + "".join(self.lines[-30:]))

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit status, remaining output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return self.proc.returncode, "".join(self.lines) + (rest or "")


def observation(rng: np.random.Generator, cameras, size: int = 32, instruction: str = "reach the red target") -> dict:
    obs = {cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, 2).astype(np.float32)
    obs["instruction"] = instruction
    return obs


@pytest.fixture(scope="session")
def local(trained_job):
    """The trained policy in-process (``load_policy``), at the servers' compiled batch size."""
    from cosmos_policy_jax.policy.api import load_policy

    old = os.environ.get("COSMOS_POLICY_DATA_ROOT")
    os.environ["COSMOS_POLICY_DATA_ROOT"] = trained_job["data"]
    try:
        yield load_policy(trained_job["job"], batch_size=MAX_BATCH)
    finally:
        os.environ.pop("COSMOS_POLICY_DATA_ROOT") if old is None else os.environ.update(COSMOS_POLICY_DATA_ROOT=old)
