"""The training loop (REFERENCE.md section 7 with the JAX ecosystem's parts).

One trainer iteration = one optimizer step = ``grad_accum_iter`` calls of the jitted micro-step.
The host never waits on the device between sync points: metrics stay on device until a logging
point, and batches are prepared by a background thread. At every sync point (logging, checkpoint,
validation, end, preemption) the optimizer-step count is read back; micro-batches dropped as
non-finite are made up for there, so checkpoints always sit on window boundaries and
``iteration`` always equals the number of optimizer steps applied.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time

import jax
import numpy as np
import yaml
from absl import logging
from jax.experimental import multihost_utils

from cosmos_policy_jax import config_lib, xla_env
from cosmos_policy_jax.parallel.rules import data_parallel_size, process_data_parallel_info
from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training import flops as flops_lib
from cosmos_policy_jax.training import joblock, setup
from cosmos_policy_jax.training.assets import build_policy_assets, write_export_manifest
from cosmos_policy_jax.training.callbacks import Callback, build_callbacks, read_jsonl_lines
from cosmos_policy_jax.training.data import DataFeed, global_batch_size
from cosmos_policy_jax.training.state import TrainState, announce
from cosmos_policy_jax.training.validation import Validator

# Metrics that measure time/speed/memory: they differ between otherwise identical runs.
TIMING_KEYS = ("step_time_s", "samples_per_s", "tflops_per_device", "mfu", "data_wait_s", "time")

# Dense bf16 peak TFLOP/s per device for MFU, by device kind substring (override: trainer.peak_tflops).
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "B200": 2250.0, "L40S": 362.0, "TPU v5p": 459.0}


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop finishes the current step, saves, and exits."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("received signal %d: will checkpoint after the current step and exit", signum)
        self.requested = True
        if signum == signal.SIGINT:  # a second Ctrl-C kills at once, even inside a stuck step
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            print("[cosmos_policy_jax] interrupted: saving after this step (Ctrl-C again aborts)", flush=True)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def any_process(self) -> bool:
        """All processes must stop at the same iteration: agree on the flag."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.asarray(flags).any())


def _peak_tflops(config) -> float | None:
    peak = float(config.trainer.get("peak_tflops", 0.0) or 0.0)
    if peak > 0:
        return peak
    kind = jax.devices()[0].device_kind
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in kind:
            return value if config.model.net.dtype != "float32" else value / 2.0
    return None


def _write_job_files(config, launch_info: dict) -> None:
    path = config.job.path_local
    os.makedirs(path, exist_ok=True)
    config_lib.save_yaml(config, os.path.join(path, "config.yaml"))
    config_lib.atomic_write_text(
        os.path.join(path, "launch_info.yaml"), yaml.safe_dump(launch_info, sort_keys=False, default_flow_style=False)
    )
    config_lib.atomic_write_text(
        os.path.join(path, "job_env.yaml"), yaml.safe_dump(config_lib.job_env_info(), sort_keys=False)
    )


def _seed_host_rngs(seed: int) -> None:
    # As the reference: host RNGs seeded by seed + process rank (data randomness does not use them).
    s = seed + jax.process_index()
    random.seed(s)
    np.random.seed(s % (2**32))
    logging.info(
        "host RNG seed %d (trainer.seed %d + process %d); JAX key from trainer.seed", s, seed, jax.process_index()
    )


def _average(window: list[dict]) -> dict[str, float]:
    """Mean over the micro-steps since the last log; NaN entries (empty selections) are skipped."""
    fetched = jax.device_get(window)
    out: dict[str, float] = {}
    for key in fetched[-1]:
        vals = np.asarray([np.asarray(m[key], np.float64).mean() for m in fetched])
        if key in ("nonfinite_steps", "optimizer_step", "loss_scale", "lr"):
            out[key] = float(vals[-1])
        elif key == "finite":
            out["nonfinite_in_window"] = float(np.sum(vals == 0))
        else:
            finite = vals[np.isfinite(vals)]
            out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


class Trainer:
    def __init__(self, config, mesh, launch_info: dict | None = None):
        self.config = config
        self.mesh = mesh
        self.launch_info = launch_info or {}
        self.is_main = jax.process_index() == 0
        self.callbacks: list[Callback] = build_callbacks(config)
        self.preemption = Preemption()
        self.k = int(config.trainer.grad_accum_iter)
        self._ck: ckpt_lib.Checkpointer | None = None
        self._assets: dict | None = None

    # -- setup ---------------------------------------------------------------------------------

    def _restore(self, model: setup.ModelSetup, ck: ckpt_lib.Checkpointer):
        """(iteration, state, data_state) from resume_from_checkpoint, the job's latest, or a fresh start."""
        abstract = model.abstract().state
        src = self.config.checkpoint.resume_from_checkpoint
        if src:
            root, step = ckpt_lib.split_step_dir(src)
            other = ckpt_lib.Checkpointer(root, read_only=True)
            if step is None:
                got = other.restore_latest(abstract)
                if got is None:
                    raise ckpt_lib.CheckpointError(f"checkpoint.resume_from_checkpoint {src}: no usable checkpoint")
                return got
            try:
                state, data = other.restore(step, abstract)
            except Exception as e:
                raise ckpt_lib.CheckpointError(f"checkpoint.resume_from_checkpoint {src}: cannot restore ({e})") from e
            return step, state, data
        got = ck.restore_latest(abstract)
        if got is not None:
            announce(f"resuming from {ck.step_dir(got[0])}")
            return got
        return 0, model.init_state(model.initial_params()), None

    # -- main ----------------------------------------------------------------------------------

    def run(self) -> int:
        from cosmos_policy_jax.parallel.distributed import broadcast_string

        # One run per job directory, taken before anything in it is read or written (process 0 holds it).
        lock = joblock.acquire_for_job(self.config.job.path_local, self.is_main, share=broadcast_string)
        try:
            return self._run()
        except BaseException:
            # A failed run (stuck loader, save error, lost peer) must stay killable by the scheduler's
            # SIGTERM, and an async save already under way should be committed, not left half-written.
            self.preemption.uninstall()
            if self._ck is not None and jax.process_count() == 1:  # multi-process: a peer may be gone
                with contextlib.suppress(Exception):
                    self._ck.wait()
            raise
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> int:
        config, mesh = self.config, self.mesh
        _seed_host_rngs(int(config.trainer.seed))
        model = setup.build(config, mesh)
        defs = model.defs
        ck = ckpt_lib.Checkpointer(
            os.path.join(config.job.path_local, "checkpoints"),
            keep_last=int(config.checkpoint.keep_last),
            async_save=bool(config.checkpoint.async_save),
        )
        self._ck = ck
        start_iter, state, data_state = self._restore(model, ck)
        if start_iter > int(config.trainer.max_iter):  # before any job file is rewritten
            raise config_lib.ConfigError(
                [
                    f"trainer.max_iter={int(config.trainer.max_iter)} is already passed: the restored checkpoint is at "
                    f"iteration {start_iter}; raise trainer.max_iter or use another job.path_local"
                ]
            )
        vae_params = model.vae_params()
        dit_rest = model.dit_rest()

        _, dp_procs = process_data_parallel_info(mesh)
        gbs = global_batch_size(config.dataloader_train, mesh)
        feed = DataFeed(config, "dataloader_train", mesh, state=data_state)
        validator = Validator(config, mesh, defs) if config.trainer.run_validation else None

        first_batch, first_data_state = feed.next()
        # Inputs (weights, checkpoint, data) are all readable: only now touch the job directory's files,
        # so a run that fails on bad input leaves an existing job directory as it was.
        if self.is_main:
            _write_job_files(config, self.launch_info)
        self._assets = build_policy_assets(config, config.job.path_local)  # statistics exist once the feed is up
        jitted = model.jit_step(first_batch)
        flops = flops_lib.train_flops_per_sample(config)
        peak = _peak_tflops(config)
        n_dev = jax.device_count()
        if self.is_main:
            print(
                f"[cosmos_policy_jax] mesh {dict(mesh.shape)}; global batch {gbs} ({gbs // dp_procs} per process, "
                f"{data_parallel_size(mesh)} data-parallel devices); grad_accum_iter {self.k}; "
                f"{flops['total']:.3g} model FLOPs per sample"
                + (f"; {note}" if (note := xla_env.cpu_kernels_note(jax.default_backend())) else ""),
                flush=True,
            )

        self.preemption.install()
        for cb in self.callbacks:
            cb.on_train_start(self, start_iter)
        iteration = start_iter
        max_iter = int(config.trainer.max_iter)
        log_every = int(config.trainer.logging_iter)
        save_every = int(config.checkpoint.save_iter)
        val_every = int(config.trainer.validation_iter)
        window: list[dict] = []
        pending = (first_batch, first_data_state)
        last_saved = start_iter
        exit_code = 0
        micro = 0
        t_window = None
        data_wait = 0.0
        consecutive_skips = 0

        def next_batch():
            nonlocal pending, data_wait
            if pending is not None:
                out, pending = pending, None
                return out
            t0 = time.monotonic()
            out = feed.next()
            data_wait += time.monotonic() - t0
            return out

        with jax.set_mesh(mesh):
            while iteration < max_iter:
                for _ in range(self.k):
                    batch, data_state = next_batch()
                    state, metrics = jitted(state, batch, vae_params, dit_rest)
                    window.append(metrics)
                    micro += 1
                if t_window is None:  # the first call compiled: time from here on
                    jax.block_until_ready(metrics)
                    t_window, micro, data_wait = time.monotonic(), 0, 0.0
                iteration += 1
                if jax.process_count() > 1:
                    # Agreeing is a collective: every process must call it at the same iterations, so only
                    # at logging points (a signal reaches the processes at different steps).
                    preempt = self.preemption.any_process() if iteration % log_every == 0 else False
                else:
                    preempt = self.preemption.requested
                sync = (
                    iteration % log_every == 0
                    or iteration % save_every == 0
                    or iteration == max_iter
                    or preempt
                    or (validator is not None and iteration % val_every == 0)
                )
                if not sync:
                    continue
                # Make up for micro-batches dropped as non-finite so that optimizer steps == iteration.
                while int(state.opt_state.gradient_step) < iteration:
                    consecutive_skips += 1
                    if consecutive_skips > 100 * self.k:
                        raise FloatingPointError(
                            f"training diverged: {consecutive_skips} consecutive non-finite micro-steps at iteration {iteration}"
                        )
                    batch, data_state = next_batch()
                    state, metrics = jitted(state, batch, vae_params, dit_rest)
                    window.append(metrics)
                    micro += 1
                consecutive_skips = 0
                if iteration % log_every == 0 or iteration == max_iter:
                    logged = _average(window)
                    now = time.monotonic()
                    if micro > 0:  # the window after the compiling first step may be empty
                        elapsed = max(now - t_window, 1e-9)
                        sps = micro * gbs / elapsed
                        logged.update(
                            step_time_s=elapsed / (micro / self.k),
                            samples_per_s=sps,
                            tflops_per_device=flops["total"] * sps / n_dev / 1e12,
                            data_wait_s=data_wait,
                        )
                        if peak:
                            logged["mfu"] = logged["tflops_per_device"] / peak
                    for cb in self.callbacks:
                        if self.is_main or cb.all_processes:
                            cb.on_step_end(self, iteration, logged)
                    window, micro, data_wait, t_window = [], 0, 0.0, time.monotonic()
                if validator is not None and iteration % val_every == 0:
                    vmetrics = validator.run(state.params, vae_params, dit_rest, iteration)
                    for cb in self.callbacks:
                        if self.is_main or cb.all_processes:
                            cb.on_validation_end(self, iteration, vmetrics)
                if iteration % save_every == 0 or iteration == max_iter or preempt:
                    self._save(ck, iteration, state, data_state)
                    last_saved = iteration
                if preempt:
                    ck.wait()
                    exit_code = int(config.trainer.exit_code_on_preemption)
                    logging.warning("preempted: checkpoint %d written, exiting with %d", iteration, exit_code)
                    if self.is_main:
                        print(f"[cosmos_policy_jax] preempted at iteration {iteration}; checkpoint saved", flush=True)
                    break
            if exit_code == 0 and last_saved != iteration:
                self._save(ck, iteration, state, data_state)
        ck.wait()
        feed.close()
        if validator is not None:
            validator.close()
        self.preemption.uninstall()
        if exit_code == 0:
            self._export(defs, state)
        for cb in self.callbacks:
            if self.is_main or cb.all_processes:
                cb.on_train_end(self, iteration)
        ck.close()
        return exit_code

    def _save(self, ck: ckpt_lib.Checkpointer, iteration: int, state: TrainState, data_state: bytes) -> None:
        try:
            ck.save(iteration, state, data_state, config_lib.to_plain_dict(self.config), inference=self._assets)
        except OSError as e:
            raise ckpt_lib.CheckpointError(
                f"checkpoint {iteration}: save to {ck.directory} failed ({e.strerror or e}); earlier checkpoints are intact"
            ) from e
        for cb in self.callbacks:
            if self.is_main or cb.all_processes:
                cb.on_checkpoint_saved(self, iteration, ck.step_dir(iteration))

    def _export(self, defs, state: TrainState) -> None:
        """Inference export: the (EMA, if enabled) parameters as a reference-format ``net.`` state dict."""
        if not self.config.checkpoint.get("export_on_end", True):
            return
        params = state.ema_params if state.ema_params is not None else state.params
        if jax.process_count() > 1:
            params = multihost_utils.process_allgather(params, tiled=True)
        if not self.is_main:
            return
        from cosmos_policy_jax.convert.dit import export_dit

        path = os.path.join(self.config.job.path_local, "export", "net.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_dit(params, defs.dit_cfg, path)
        write_export_manifest(
            config_lib.to_plain_dict(self.config), self._assets, self.config.job.path_local, os.path.dirname(path)
        )
        logging.info("exported %s parameters to %s", "EMA" if state.ema_params is not None else "raw", path)


def run(config, mesh, launch_info: dict | None = None) -> int:
    return Trainer(config, mesh, launch_info).run()


def read_metrics(job_dir: str) -> list[dict]:
    """The rows of ``metrics.jsonl`` (a torn last line, from a crash mid-write, is skipped with a warning)."""
    path = os.path.join(job_dir, "metrics.jsonl")
    with open(path, "rb") as f:
        return read_jsonl_lines(f.read().decode("utf-8", errors="replace").splitlines(), path)


def deterministic_row(row: dict) -> dict:
    """A metrics row without the timing/memory fields (which differ between identical runs)."""
    return {
        k: v
        for k, v in row.items()
        if k not in TIMING_KEYS and not k.startswith("device") and not (isinstance(v, float) and math.isnan(v))
    }
