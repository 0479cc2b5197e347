"""The training loop: set-up, then optimizer steps with logging, validation and checkpoints.

One trainer iteration = one optimizer step = ``grad_accum_iter`` calls of the jitted micro-step.
The host never waits on the device between sync points: metrics stay on device until a logging
point, and batches are prepared by a background thread. At every sync point (logging, checkpoint,
validation, end, preemption) the optimizer-step count is read back; micro-batches dropped as
non-finite are made up for there, so checkpoints always sit on window boundaries and
``iteration`` always equals the number of optimizer steps applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import yaml
from absl import logging
from jax.experimental import multihost_utils

from cosmos_policy_jax import config_lib, xla_env
from cosmos_policy_jax.parallel.rules import data_parallel_size, process_data_parallel_info
from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training import flops as flops_lib
from cosmos_policy_jax.training import joblock, setup, weights
from cosmos_policy_jax.training.assets import build_policy_assets, write_export_manifest
from cosmos_policy_jax.training.callbacks import Callback, build_callbacks
from cosmos_policy_jax.training.data import DataFeed, global_batch_size
from cosmos_policy_jax.training.metrics import MetricsWindow, peak_tflops
from cosmos_policy_jax.training.preemption import Preemption
from cosmos_policy_jax.training.state import TrainState, announce
from cosmos_policy_jax.training.validation import Validator


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


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
    """Whether a periodic action is due at ``step``: every ``every`` steps and, with ``last``, at the
    final step ``total`` as well."""
    return (every > 0 and step % every == 0) or (last and step == total)


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The iterations at which the loop logs, saves and validates, and where it stops."""

    total: int
    log: int
    save: int
    validate: int

    @classmethod
    def from_config(cls, config) -> Cadence:
        t = config.trainer
        return cls(int(t.max_iter), int(t.logging_iter), int(config.checkpoint.save_iter), int(t.validation_iter))


@dataclasses.dataclass(frozen=True)
class _Parts:
    """What the set-up built for the loop; fixed for the run."""

    step: Callable[..., tuple[TrainState, dict]]  # the jitted micro-step
    vae_params: Any
    dit_rest: Any
    feed: DataFeed
    validator: Validator | None
    ck: ckpt_lib.Checkpointer
    defs: Any
    cadence: Cadence


@dataclasses.dataclass
class _Progress:
    """What the loop advances. ``iteration`` counts optimizer steps (equal to the applied ones at every
    sync point); ``data_state`` is the pipeline's state after the last batch read; ``pending`` is the
    batch read during set-up, used by the first micro-step."""

    iteration: int
    state: TrainState
    data_state: bytes | None
    pending: tuple[dict, bytes] | None = None
    exit_code: int = 0


def _micro_step(parts: _Parts, progress: _Progress, window: MetricsWindow) -> None:
    """The jitted micro-step on the next batch; its metrics go to the window, still on device."""
    if progress.pending is not None:
        (batch, progress.data_state), progress.pending = progress.pending, None
    else:
        batch, progress.data_state = window.wait_for(parts.feed.next)
    progress.state, metrics = parts.step(progress.state, batch, parts.vae_params, parts.dit_rest)
    window.add(metrics)


def _catch_up(parts: _Parts, progress: _Progress, window: MetricsWindow, k: int) -> None:
    """Make up for micro-batches dropped as non-finite, so that optimizer steps == iteration."""
    extra = 0
    while int(progress.state.opt_state.gradient_step) < progress.iteration:
        extra += 1
        if extra > 100 * k:
            raise FloatingPointError(
                f"training diverged: {extra} consecutive non-finite micro-steps at iteration {progress.iteration}"
            )
        _micro_step(parts, progress, window)


def _metrics_window(config, gbs: int, k: int) -> MetricsWindow:
    return MetricsWindow(
        flops_per_sample=flops_lib.train_flops_per_sample(config)["total"],
        global_batch=gbs,
        grad_accum=k,
        n_devices=jax.device_count(),
        peak_tflops=peak_tflops(config),
    )


def _print_run_summary(mesh, gbs: int, dp_procs: int, k: int, flops_per_sample: float) -> None:
    print(
        f"[cosmos_policy_jax] mesh {dict(mesh.shape)}; global batch {gbs} ({gbs // dp_procs} per process, "
        f"{data_parallel_size(mesh)} data-parallel devices); grad_accum_iter {k}; "
        f"{flops_per_sample:.3g} model FLOPs per sample"
        + (f"; {note}" if (note := xla_env.cpu_kernels_note(jax.default_backend())) else ""),
        flush=True,
    )


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
        window = _metrics_window(config, gbs, self.k)
        if self.is_main:
            _print_run_summary(mesh, gbs, dp_procs, self.k, window.flops_per_sample)
        parts = _Parts(
            step=jitted,
            vae_params=vae_params,
            dit_rest=dit_rest,
            feed=feed,
            validator=validator,
            ck=ck,
            defs=defs,
            cadence=Cadence.from_config(config),
        )
        progress = _Progress(start_iter, state, data_state, pending=(first_batch, first_data_state))
        return self._train(parts, progress, window)

    # -- the loop's steps ----------------------------------------------------------------------

    def _train(self, parts: _Parts, progress: _Progress, window: MetricsWindow) -> int:
        self.preemption.install()
        for cb in self.callbacks:
            cb.on_train_start(self, progress.iteration)
        with jax.set_mesh(self.mesh):
            while progress.iteration < parts.cadence.total:
                if self._iteration(parts, progress, window):
                    break
        return self._finish(parts, progress)

    def _iteration(self, parts: _Parts, progress: _Progress, window: MetricsWindow) -> bool:
        """One optimizer step, then what is due at the new iteration; True when preempted."""
        for _ in range(self.k):
            _micro_step(parts, progress, window)
        if not window.started:  # the first micro-steps compiled: time from here on
            window.start_clock()
        progress.iteration += 1
        it, c = progress.iteration, parts.cadence
        # Several processes agree on a preemption only at logging points (see Preemption.stop_now).
        preempt = self.preemption.stop_now(agreement_point=itstime(it, c.log, c.total, last=False))
        log = itstime(it, c.log, c.total)
        validate = parts.validator is not None and itstime(it, c.validate, c.total, last=False)
        save = itstime(it, c.save, c.total) or preempt
        if not (log or validate or save):
            return False
        _catch_up(parts, progress, window, self.k)
        if log:
            self._log(it, window)
        if validate:
            self._validate(parts, progress)
        if save:
            self._save(parts.ck, it, progress.state, progress.data_state)
        if preempt:
            self._stop_preempted(parts, progress)
        return preempt

    def _log(self, iteration: int, window: MetricsWindow) -> None:
        logged = window.row()
        for cb in self._active_callbacks():
            cb.on_step_end(self, iteration, logged)
        window.restart()  # after the callbacks: their time is not step time

    def _validate(self, parts: _Parts, progress: _Progress) -> None:
        it = progress.iteration
        vmetrics = parts.validator.run(progress.state.params, parts.vae_params, parts.dit_rest, it)
        for cb in self._active_callbacks():
            cb.on_validation_end(self, it, vmetrics)

    def _stop_preempted(self, parts: _Parts, progress: _Progress) -> None:
        """The checkpoint of this iteration is written: wait for it, then leave with the preemption code."""
        parts.ck.wait()
        progress.exit_code = int(self.config.trainer.exit_code_on_preemption)
        it = progress.iteration
        logging.warning("preempted: checkpoint %d written, exiting with %d", it, progress.exit_code)
        if self.is_main:
            print(f"[cosmos_policy_jax] preempted at iteration {it}; checkpoint saved", flush=True)

    def _finish(self, parts: _Parts, progress: _Progress) -> int:
        """Saves committed, loaders and signal handlers released; the export when the exit code is 0."""
        parts.ck.wait()
        parts.feed.close()
        if parts.validator is not None:
            parts.validator.close()
        self.preemption.uninstall()
        if progress.exit_code == 0:
            self._export(parts.defs, progress.state)
        for cb in self._active_callbacks():
            cb.on_train_end(self, progress.iteration)
        parts.ck.close()
        return progress.exit_code

    def _active_callbacks(self) -> list[Callback]:
        """The callbacks this process runs (process 0 runs all; the others those marked all_processes)."""
        return [cb for cb in self.callbacks if self.is_main or cb.all_processes]

    def _save(self, ck: ckpt_lib.Checkpointer, iteration: int, state: TrainState, data_state: bytes) -> None:
        try:
            ck.save(iteration, state, data_state, config_lib.to_plain_dict(self.config), inference=self._assets)
        except OSError as e:
            raise ckpt_lib.CheckpointError(
                f"checkpoint {iteration}: save to {ck.directory} failed ({e.strerror or e}); earlier checkpoints are intact"
            ) from e
        for cb in self._active_callbacks():
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

        path = os.path.join(self.config.job.path_local, weights.EXPORT_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_dit(params, defs.dit_cfg, path)
        write_export_manifest(
            config_lib.to_plain_dict(self.config), self._assets, self.config.job.path_local, os.path.dirname(path)
        )
        logging.info("exported %s parameters to %s", "EMA" if state.ema_params is not None else "raw", path)


def run(config, mesh, launch_info: dict | None = None) -> int:
    return Trainer(config, mesh, launch_info).run()
