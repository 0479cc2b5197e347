"""Subprocess helpers for the reliability tests: run the training CLI (optionally with an injected
fault, see ``fault_train.py``), follow its progress, compare runs, snapshot directories.

Every run is a real ``python -m cosmos_policy_jax.train`` process on fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``), with stdout/stderr in log files next to
``log_prefix`` (pipes could fill up and block a chatty process). All runs of a session share one
persistent compilation cache, so only the first run of each program compiles.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cosmos_policy_jax.training.metrics import deterministic_row, read_metrics

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "cosmos_policy_jax.train"
FAULT_TRAIN = "tests.reliability.fault_train"
GLOBAL_BATCH = 4
DEVICES = 4
SAVE_ITER = 2
# Iterations of the shared reference run (conftest.reference_run): checkpoints at 2, 4, 6, 8, the last
# three kept (checkpoint.keep_last=3).
REFERENCE_ITERS = 8
_PROGRESS = re.compile(r"\] (\d+)/(\d+) loss ")


def tiny_args(job: Path | str, max_iter: int, *extra: str, config: str = "tiny") -> list[str]:
    """The ``tiny`` config on ``job``: global batch 4, a checkpoint every 2 iterations, a log row every one."""
    return [
        f"--config=configs/cosmos_policy.py:{config}",
        f"--config.job.path_local={job}",
        f"--config.trainer.max_iter={max_iter}",
        f"--config.checkpoint.save_iter={SAVE_ITER}",
        "--config.trainer.logging_iter=1",
        f"--config.dataloader_train.global_batch_size={GLOBAL_BATCH}",
        *extra,
    ]


def train_env(cache_dir: Path | str, *, devices: int = DEVICES, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # cache the small start-up programs too
        PYTHONPATH=str(ROOT),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclasses.dataclass
class Run:
    """One training process and its log files."""

    proc: subprocess.Popen
    out: Path
    err: Path

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"training process still running after {timeout:g} s\n{self.tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def progress(self) -> int:
        """The last iteration this process reported (its progress bar on stderr); 0 before the first."""
        found = _PROGRESS.findall(self.stderr())
        return int(found[-1][0]) if found else 0

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr().splitlines() if ln.startswith("error:")]

    def tail(self, n: int = 3000) -> str:
        return f"--- stdout ---\n{self.stdout()[-n:]}\n--- stderr ---\n{self.stderr()[-n:]}"


def start(args: list[str], env: dict[str, str], log_prefix: Path, *, module: str = TRAIN) -> Run:
    out, err = Path(f"{log_prefix}.out"), Path(f"{log_prefix}.err")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=fo, stderr=fe)
    return Run(proc, out, err)


def run(args: list[str], env: dict[str, str], log_prefix: Path, *, module: str = TRAIN, timeout: float = 600) -> Run:
    r = start(args, env, log_prefix, module=module)
    r.wait(timeout)
    return r


def wait_for(run_: Run, condition, what: str, timeout: float = 300, poll: float = 0.02) -> None:
    """Poll ``condition()`` until true; fail if the process exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if run_.returncode is not None:
            raise AssertionError(f"process exited ({run_.returncode}) before {what}\n{run_.tail()}")
        if time.monotonic() > deadline:
            run_.kill()
            raise AssertionError(f"timed out waiting for {what}\n{run_.tail()}")
        time.sleep(poll)


def rows(job: Path | str) -> list[dict]:
    """metrics.jsonl rows without the timing fields (which differ between identical runs)."""
    return [deterministic_row(r) for r in read_metrics(str(job))]


def export(job: Path | str) -> dict[str, np.ndarray]:
    return load_file(os.path.join(job, "export", "net.safetensors"))


def assert_same_export(a: Path | str, b: Path | str) -> None:
    pa, pb = export(a), export(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def checkpoint_steps(job: Path | str) -> list[str]:
    """Entries of ``{job}/checkpoints`` (finalised steps, moved-aside and temporary directories), sorted."""
    d = os.path.join(job, "checkpoints")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def sample_in_micro_batch(micro_batch: int) -> int:
    """A sample index that the tiny config's pipeline (1 process, 4 devices) puts in ``micro_batch``."""
    from configs.cosmos_policy import get_config
    from cosmos_policy_jax.data.pipeline import BatchPlan
    from cosmos_policy_jax.data.registry import make_source

    cfg = get_config("tiny")
    loader = cfg.dataloader_train
    source = make_source(loader.dataset, seed=loader.seed, layout=dict(cfg.model.latent_layout))
    plan = BatchPlan(
        num_samples=len(source),
        dp_rank=0,
        dp_size=1,
        shards_per_process=DEVICES,
        batch_per_shard=GLOBAL_BATCH // DEVICES,
        shuffle=bool(loader.shuffle),
        seed=int(loader.seed),
        drop_last=bool(loader.drop_last),
    )
    epoch, indices = plan.batch_indices(micro_batch)
    assert epoch == 0
    return int(indices[0])


def copy_job(job: Path | str, dest: Path, *, checkpoints: bool = True) -> Path:
    """A private copy of a job directory (optionally without its checkpoints) for a test to modify."""
    shutil.copytree(job, dest, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints"))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A lost peer is noticed after the heartbeat timeout; on a loaded machine a starved process can miss
# heartbeats too, so the timeout is at least this many measured training steps.
HEARTBEAT_STEPS = 20


def measured_step_time(job: Path | str) -> float | None:
    """Median ``step_time_s`` of a finished job on this machine (None if it logged none)."""
    times = [r["step_time_s"] for r in read_metrics(str(job)) if r.get("step_time_s")]
    return float(np.median(times)) if times else None


def lose_peer(
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    *,
    after: int,
    sig: int,
    heartbeat_s: float,
    step_time_s: float | None = None,
) -> tuple[int, float, Run, float]:
    """Train ``args`` as two processes (coordinator on 127.0.0.1), send ``sig`` to process 1 once process
    0 has logged ``after`` iterations, and wait for process 0 to end.

    The heartbeat timeout is ``max(heartbeat_s, HEARTBEAT_STEPS * step_time_s)``. If process 0 ends
    before ``after`` (the peer was not touched yet: a heartbeat missed on a busy machine, not the fault
    under test), the job directory is cleared and the run retried once with three times the timeout,
    saying so on stderr. Returns (process 0's exit code, seconds from the signal to its exit, process
    0's Run, the heartbeat timeout used). Both processes are killed on the way out, whatever happened.
    """
    heartbeat = max(float(heartbeat_s), HEARTBEAT_STEPS * (step_time_s or 0.0))
    job = next(a.split("=", 1)[1] for a in args if a.startswith("--config.job.path_local="))
    for attempt in range(2):
        env = {**env, "COSMOS_POLICY_HEARTBEAT_TIMEOUT_S": str(math.ceil(heartbeat))}
        try:
            return (*_lose_peer_once(args, env, log_dir / f"attempt{attempt}", after, sig, heartbeat), heartbeat)
        except _ExitedEarly as e:
            if attempt == 1:
                raise AssertionError(f"process 0 ended before iteration {after} twice\n{e}") from None
            print(
                f"lose_peer: process 0 ended before iteration {after} with a {heartbeat:g} s heartbeat "
                f"(a busy machine?); retrying once with {3 * heartbeat:g} s\n{e}",
                file=sys.stderr,
            )
            shutil.rmtree(job, ignore_errors=True)
            heartbeat *= 3
    raise AssertionError("unreachable")


class _ExitedEarly(Exception):
    pass


def _lose_peer_once(args, env, log_dir: Path, after: int, sig: int, heartbeat: float) -> tuple[int, float, Run]:
    mp = ["--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes=2"]
    procs = [start([*args, *mp, f"--process_id={i}"], env, log_dir / f"p{i}") for i in range(2)]
    try:
        try:
            wait_for(procs[0], lambda: procs[0].progress() >= after, f"iteration {after}", timeout=600)
        except AssertionError as e:
            if procs[0].returncode is not None:
                raise _ExitedEarly(str(e)[-3000:]) from None
            raise
        procs[1].proc.send_signal(sig)
        lost_at = time.monotonic()
        rc = procs[0].wait(heartbeat + 110)
        return rc, time.monotonic() - lost_at, procs[0]
    finally:
        for p in procs:
            p.kill()
