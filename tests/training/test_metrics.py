"""The training loop's metrics window: averages over a logging window, timing that leaves out the
compile, data wait, and TFLOP/s and MFU from the model FLOPs and the device's peak."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ml_collections import config_dict

from cosmos_policy_jax.training.metrics import MetricsWindow, average, peak_tflops


class Clock:
    """A settable clock: the tests decide how long every step took."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _metrics(loss, finite=True, step=0, lr=1e-4, **extra):
    return {
        "loss": np.float32(loss),
        "finite": np.bool_(finite),
        "optimizer_step": np.int32(step),
        "nonfinite_steps": np.int32(0),
        "loss_scale": np.float32(1.0),
        "lr": np.float32(lr),
        **extra,
    }


def _window(clock, peak=None, k=2):
    return MetricsWindow(
        flops_per_sample=3e12, global_batch=8, grad_accum=k, n_devices=4, peak_tflops=peak, clock=clock
    )


def test_average_means_skip_nan_and_count_dropped_micro_steps():
    rows = [
        _metrics(1.0, step=0, lr=1.0, action_l1=np.array([2.0, 4.0])),
        _metrics(float("nan"), finite=False, step=0, lr=2.0, action_l1=np.array([np.nan])),
        _metrics(5.0, step=1, lr=3.0, action_l1=np.array([6.0])),
    ]
    out = average(rows)
    assert out["loss"] == pytest.approx(3.0)  # the NaN micro-step is left out of the mean
    assert out["action_l1"] == pytest.approx(4.5)  # per micro-step means (3 and 6), NaN skipped
    assert out["nonfinite_in_window"] == 1.0 and "finite" not in out
    assert out["optimizer_step"] == 1.0 and out["lr"] == 3.0  # last value, not the mean
    assert math.isnan(average([_metrics(float("nan"))])["loss"])  # nothing finite: NaN, not an error


def test_timing_leaves_out_the_compiling_step_and_counts_data_wait():
    clock = Clock()
    w = _window(clock, peak=10.0)
    w.add(_metrics(1.0))  # the compiling micro-steps: averaged, not timed
    w.add(_metrics(3.0))
    clock.now += 50.0
    assert not w.started
    w.start_clock()
    assert w.started
    for loss in (5.0, 7.0, 9.0, 11.0):  # two optimizer steps of two micro-steps each
        clock.now += 0.25
        w.wait_for(lambda: None)  # 0 s: the clock does not move inside
        w.add(_metrics(loss))

    def slow_fetch():
        clock.now += 1.0  # 1 s waiting for data
        return "batch"

    assert w.wait_for(slow_fetch) == "batch"
    row = w.row()  # 2 s after the clock started
    assert row["loss"] == pytest.approx(6.0)  # all six micro-steps
    assert row["step_time_s"] == pytest.approx(1.0)  # 2 s for 2 optimizer steps
    assert row["samples_per_s"] == pytest.approx(16.0)  # 4 micro-batches of 8 in 2 s
    assert row["tflops_per_device"] == pytest.approx(3e12 * 16.0 / 4 / 1e12)
    assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 10.0)
    assert row["data_wait_s"] == pytest.approx(1.0)


def test_restart_empties_the_window_and_times_from_then():
    clock = Clock()
    w = _window(clock, k=1)
    w.add(_metrics(1.0))
    w.start_clock()
    assert "step_time_s" not in w.row()  # only the compiling step: no timing, no MFU
    clock.now += 5.0  # the callbacks' time is not step time
    w.restart()
    clock.now += 0.5
    w.add(_metrics(2.0))
    row = w.row()
    assert row["loss"] == 2.0 and row["step_time_s"] == pytest.approx(0.5)
    assert "mfu" not in row  # no peak known


def _config(peak=0.0, dtype="bfloat16"):
    return config_dict.ConfigDict({"trainer": {"peak_tflops": peak}, "model": {"net": {"dtype": dtype}}})


def test_peak_tflops_override_device_table_and_float32():
    assert peak_tflops(_config(peak=123.0), "NVIDIA H100 80GB HBM3") == 123.0
    assert peak_tflops(_config(), "NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops(_config(), "NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops(_config(dtype="float32"), "NVIDIA A100-SXM4-80GB") == 156.0
    assert peak_tflops(_config(), "cpu") is None
