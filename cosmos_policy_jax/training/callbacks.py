"""Trainer callbacks (the reference trainer's callback list, in small form).

A callback receives host-side values only (metrics already fetched at a logging point), so no
callback can make the loop wait on the device. Configured by ``trainer.callbacks``: built-in
names or ``"package.module:ClassName"`` import strings for users' own hooks (constructed with the
frozen config).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from cosmos_policy_jax.common.files import atomic_write_text


class Callback:
    """Hooks called by the training loop on process 0 unless ``all_processes`` is True."""

    all_processes = False

    def on_train_start(self, trainer, iteration: int) -> None:
        pass

    def on_step_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        """Called at every logging point with the averaged metrics since the previous one."""

    def on_validation_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint_saved(self, trainer, iteration: int, path: str) -> None:
        pass

    def on_train_end(self, trainer, iteration: int) -> None:
        pass


class MetricsLogger(Callback):
    """``metrics.jsonl`` (one object per logging point), TensorBoard events, optional W&B."""

    def __init__(self, config):
        self.dir = config.job.path_local
        self.use_wandb = bool(config.trainer.use_wandb)
        self._tb = None
        self._wandb = None
        self._config = config

    def on_train_start(self, trainer, iteration: int) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._truncate_after(iteration)
        try:
            from tensorboardX import SummaryWriter

            # On resume, TensorBoard drops the events a previous run logged after the checkpoint.
            purge = {"purge_step": iteration + 1} if iteration > 0 else {}
            self._tb = SummaryWriter(os.path.join(self.dir, "tensorboard"), **purge)
        except ImportError:  # tensorboardX is a dependency, but never fail a run over logging
            logging.warning("tensorboardX not available; TensorBoard logging off")
        if self.use_wandb:
            try:
                import wandb

                from cosmos_policy_jax.config_lib import to_plain_dict

                self._wandb = wandb.init(
                    project=self._config.job.project,
                    group=self._config.job.group,
                    name=self._config.job.name,
                    dir=self.dir,
                    config=to_plain_dict(self._config),
                    id=wandb_run_id(self.dir),  # the same W&B run across restarts
                    resume="allow",
                )
            except Exception as e:  # W&B is optional: a missing login must not stop training
                logging.warning("W&B disabled: %s", e)

    def _truncate_after(self, iteration: int) -> None:
        """On resume, keep one row per logged iteration up to the checkpoint, so the file equals an
        uninterrupted run: rows after it, torn rows (a crash mid-write) and repeats are dropped."""
        path = os.path.join(self.dir, "metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        rows = read_jsonl_lines(lines, path)
        kept: dict[tuple, dict] = {}
        for row in rows:
            if row.get("iteration", 0) <= iteration:
                kept[(row.get("split", "train"), row.get("iteration", 0))] = row  # a repeat: the last wins
        if len(rows) - len(kept) > sum(r.get("iteration", 0) > iteration for r in rows):
            logging.warning("%s: dropped rows that repeat an iteration", path)
        if len(kept) != len([ln for ln in lines if ln.strip()]):
            atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept.values()))

    def _write(self, kind: str, iteration: int, metrics: dict[str, float]) -> None:
        row = {
            "iteration": iteration,
            **({"split": kind} if kind != "train" else {}),
            **_finite_or_none(metrics),
            "time": round(time.time(), 3),  # wall clock (unix seconds) when the row was logged
        }
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, iteration)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(
                {f"{kind}/{k}": v for k, v in _finite_or_none(metrics).items() if v is not None}, step=iteration
            )

    def on_step_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        self._write("train", iteration, metrics)

    def on_validation_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        self._write("val", iteration, metrics)

    def on_train_end(self, trainer, iteration: int) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class ProgressBar(Callback):
    """One console line per logging point: iteration, loss, action L1, speed, ETA."""

    def __init__(self, config):
        self.max_iter = int(config.trainer.max_iter)
        self._start = None
        self._start_iter = 0

    def on_train_start(self, trainer, iteration: int) -> None:
        self._start, self._start_iter = time.monotonic(), iteration

    def on_step_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        done = iteration - self._start_iter
        elapsed = time.monotonic() - self._start
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        eta = (self.max_iter - iteration) / rate if rate == rate and rate > 0 else float("nan")
        frac = iteration / self.max_iter
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        l1 = metrics.get("demo_sample_action_l1_loss", float("nan"))
        line = (
            f"[{bar}] {iteration}/{self.max_iter} loss {metrics.get('loss', float('nan')):.4f} "
            f"action_l1 {l1:.4f} lr {metrics.get('lr', float('nan')):.2e} "
            f"{metrics.get('samples_per_s', float('nan')):.1f} samples/s ETA {_fmt_time(eta)}"
        )
        print(line, file=sys.stderr, flush=True)

    def on_validation_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        parts = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float))
        print(f"validation @ {iteration}: {parts}", file=sys.stderr, flush=True)


class DeviceMonitor(Callback):
    """Adds bytes in use / peak bytes per local device to the logged metrics (where the backend tells)."""

    all_processes = False

    def on_step_end(self, trainer, iteration: int, metrics: dict[str, float]) -> None:
        metrics.update(device_memory_metrics())


def device_memory_metrics() -> dict[str, float]:
    out: dict[str, float] = {}
    for i, dev in enumerate(jax.local_devices()):
        try:
            stats = dev.memory_stats()
        except Exception:  # backends without memory stats
            stats = None
        if not stats:
            continue
        for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit"):
            if key in stats:
                out[f"device{i}_{key}"] = float(stats[key])
    return out


BUILTIN = {"metrics_logger": MetricsLogger, "progress": ProgressBar, "device_monitor": DeviceMonitor}


def build_callbacks(config) -> list[Callback]:
    """Callbacks named in ``trainer.callbacks``; the device monitor runs before the logger."""
    names = list(config.trainer.callbacks)
    order = {"device_monitor": 0}
    names.sort(key=lambda n: order.get(n, 1))
    out = []
    for name in names:
        if name in BUILTIN:
            cls = BUILTIN[name]
            out.append(cls() if cls is DeviceMonitor else cls(config))
        elif ":" in name:
            module, _, attr = name.partition(":")
            try:
                cls = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"trainer.callbacks: cannot import {name!r} ({e})") from e
            out.append(cls(config))
        else:
            raise ValueError(f"trainer.callbacks: unknown callback {name!r}; built-ins: {sorted(BUILTIN)}")
    return out


def read_jsonl_lines(lines: list[str], path: str) -> list[dict]:
    """The JSON objects of a JSONL file's lines; a torn or unparsable line is dropped with a warning."""
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            logging.warning(
                "%s: line %d is not a JSON object (torn by a crash?); dropping it: %.80r", path, number, line
            )
            continue
        rows.append(row)
    return rows


def _finite_or_none(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def wandb_run_id(job_dir: str) -> str:
    """The job's W&B run id, kept in ``{job_dir}/wandb_run_id`` (created on first use)."""
    path = os.path.join(job_dir, "wandb_run_id")
    if os.path.isfile(path):
        with open(path) as f:
            saved = f.read().strip()
        if saved:
            return saved
    import uuid

    run_id = uuid.uuid4().hex[:16]
    atomic_write_text(path, run_id + "\n")
    return run_id
