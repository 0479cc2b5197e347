"""The metrics window of the training loop: what the micro-steps reported since the last logged
row, and how long they took.

The loop feeds it each micro-step's (on-device) metrics and asks for the logged row at a logging
point: the averages over the window plus speed (step time, samples/s, TFLOP/s per device, MFU) and
the time spent waiting for data. The clock starts after the first, compiling, step so compile time
never counts as step time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from cosmos_policy_jax.training.callbacks import read_jsonl_lines

T = TypeVar("T")

# Dense bf16 peak TFLOP/s per device for MFU, by device kind substring (override: trainer.peak_tflops).
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "B200": 2250.0, "L40S": 362.0, "TPU v5p": 459.0}

# Metrics that measure time/speed/memory: they differ between otherwise identical runs.
TIMING_KEYS = ("step_time_s", "samples_per_s", "tflops_per_device", "mfu", "data_wait_s", "time")

# Reported once for the window, not averaged: the value after its last micro-step.
_LAST_VALUE_KEYS = ("nonfinite_steps", "optimizer_step", "loss_scale", "lr")


def peak_tflops(config, device_kind: str | None = None) -> float | None:
    """Peak TFLOP/s per device for MFU: ``trainer.peak_tflops`` if set, else by device kind (half for
    float32 compute); None for an unknown device (no MFU is reported)."""
    peak = float(config.trainer.get("peak_tflops", 0.0) or 0.0)
    if peak > 0:
        return peak
    kind = jax.devices()[0].device_kind if device_kind is None else device_kind
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in kind:
            return value if config.model.net.dtype != "float32" else value / 2.0
    return None


def average(window: list[dict]) -> dict[str, float]:
    """Mean over the micro-steps of a window; NaN entries (empty selections) are skipped."""
    fetched = jax.device_get(window)
    out: dict[str, float] = {}
    for key in fetched[-1]:
        vals = np.asarray([np.asarray(m[key], np.float64).mean() for m in fetched])
        if key in _LAST_VALUE_KEYS:
            out[key] = float(vals[-1])
        elif key == "finite":
            out["nonfinite_in_window"] = float(np.sum(vals == 0))
        else:
            finite = vals[np.isfinite(vals)]
            out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


class MetricsWindow:
    """Micro-step metrics since the last logged row, with the wall time and data wait they took."""

    def __init__(
        self,
        *,
        flops_per_sample: float,
        global_batch: int,
        grad_accum: int,
        n_devices: int,
        peak_tflops: float | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.flops_per_sample = flops_per_sample
        self.global_batch = global_batch
        self.grad_accum = grad_accum
        self.n_devices = n_devices
        self.peak_tflops = peak_tflops
        self._clock = clock
        self._rows: list[dict[str, Any]] = []
        self._micro = 0  # micro-steps timed since the clock started
        self._data_wait = 0.0
        self._t0: float | None = None

    @property
    def started(self) -> bool:
        """Whether the clock runs (it starts after the first, compiling, micro-steps)."""
        return self._t0 is not None

    def add(self, metrics: dict[str, Any]) -> None:
        """One micro-step's metrics (left on device until the row is asked for)."""
        self._rows.append(metrics)
        self._micro += 1

    def wait_for(self, fetch: Callable[[], T]) -> T:
        """``fetch()``, its time counted as waiting for data."""
        t0 = self._clock()
        out = fetch()
        self._data_wait += self._clock() - t0
        return out

    def start_clock(self) -> None:
        """Time from now on: waits for the micro-steps so far (the compile), which stay in the averages
        but not in the timing."""
        jax.block_until_ready(self._rows)
        self._t0, self._micro, self._data_wait = self._clock(), 0, 0.0

    def row(self) -> dict[str, float]:
        """The logged row: averages over the window, plus speed when a timed micro-step is in it."""
        out = average(self._rows)
        if self._micro == 0 or self._t0 is None:  # the window of the compiling first step may be untimed
            return out
        elapsed = max(self._clock() - self._t0, 1e-9)
        sps = self._micro * self.global_batch / elapsed
        out.update(
            step_time_s=elapsed / (self._micro / self.grad_accum),
            samples_per_s=sps,
            tflops_per_device=self.flops_per_sample * sps / self.n_devices / 1e12,
            data_wait_s=self._data_wait,
        )
        if self.peak_tflops:
            out["mfu"] = out["tflops_per_device"] / self.peak_tflops
        return out

    def restart(self) -> None:
        """An empty window, timed from now (after the row was logged)."""
        self._rows, self._micro, self._data_wait, self._t0 = [], 0, 0.0, self._clock()


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
