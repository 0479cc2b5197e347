"""The training loop: its cadence, catch-up of dropped micro-batches and preemption on a fake
micro-step (fast), and end to end on the tiny config: exact resume, restore on another mesh (the fixture
weights through checkpoint.load_path: tests/training/test_setup.py)."""

from __future__ import annotations

import itertools
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest
from ml_collections import config_dict
from safetensors.numpy import load_file

from cosmos_policy_jax.training import loop
from cosmos_policy_jax.training import metrics as metrics_lib
from cosmos_policy_jax.training.callbacks import Callback
from cosmos_policy_jax.training.metrics import MetricsWindow
from tests.training.helpers import mesh_for, tiny_config


def _run(tmp, max_iter: int, shape=(8, 1, 1), **overrides) -> int:
    c = tiny_config(
        tmp,
        **{
            "trainer.max_iter": max_iter,
            "trainer.logging_iter": 1,
            "checkpoint.save_iter": 2,
            "dataloader_train.global_batch_size": 8,
            **overrides,
        },
    )
    mesh = mesh_for(c, shape)
    return loop.run(config_dict.FrozenConfigDict(c), mesh)


def _rows(job):
    return [metrics_lib.deterministic_row(r) for r in metrics_lib.read_metrics(str(job))]


@pytest.mark.slow
def test_resume_gives_identical_params_and_metrics(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert _run(full, 4) == 0
    assert _run(split, 2) == 0
    assert sorted(os.listdir(split / "checkpoints")) == ["2"]
    assert _run(split, 4) == 0  # same command, more iterations: resumes from iteration 2
    a = load_file(str(full / "export" / "net.safetensors"))
    b = load_file(str(split / "export" / "net.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rows_full, rows_split = _rows(full), _rows(split)
    assert [r["iteration"] for r in rows_split] == [1, 2, 3, 4]
    assert rows_full == rows_split
    # The parameters moved during training (the comparison above is not between two initialisations).
    init_loss, last_loss = rows_full[0]["loss"], rows_full[-1]["loss"]
    assert np.isfinite(init_loss) and np.isfinite(last_loss)


@pytest.mark.slow
def test_checkpoint_from_one_mesh_restores_on_another(tmp_path):
    assert _run(tmp_path, 2, shape=(8, 1, 1)) == 0
    assert _run(tmp_path, 3, shape=(2, 2, 2)) == 0
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert np.isfinite(rows[-1]["loss"]) and rows[-1]["optimizer_step"] == 3
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]


# -- the loop's steps on a fake micro-step: no model, so every case runs in well under a second --------


def test_itstime():
    assert [s for s in range(1, 11) if loop.itstime(s, 4, 10)] == [4, 8, 10]  # and the last step
    assert [s for s in range(1, 11) if loop.itstime(s, 4, 10, last=False)] == [4, 8]
    assert [s for s in range(1, 11) if loop.itstime(s, 5, 10)] == [5, 10]
    assert [s for s in range(1, 4) if loop.itstime(s, 0, 3)] == [3]  # every <= 0: never periodic


def _state(gradient_step: int):
    return SimpleNamespace(opt_state=SimpleNamespace(gradient_step=gradient_step), params=None)


def _step(state, batch, vae_params, dit_rest):
    """As the real micro-step at grad_accum_iter=1: a non-finite batch is dropped, no optimizer step."""
    ok = bool(batch["finite"])
    n = state.opt_state.gradient_step + int(ok)
    metrics = {"loss": np.float32(1.0 if ok else np.nan), "finite": np.bool_(ok), "optimizer_step": np.int32(n)}
    return _state(n), metrics


class _Feed:
    """Batches marked finite or not; the data state is the count of batches read."""

    def __init__(self, finite):
        self._finite, self.read, self.closed = iter(finite), 0, False

    def next(self):
        ok = next(self._finite)
        self.read += 1
        return {"finite": ok}, str(self.read).encode()

    def close(self):
        self.closed = True


class _Checkpointer:
    directory = "checkpoints"

    def __init__(self):
        self.saved, self.closed = [], False

    def save(self, step, state, data_state, config, inference=None):
        self.saved.append((step, state.opt_state.gradient_step, data_state))

    def wait(self):
        pass

    def step_dir(self, step):
        return f"checkpoints/{step}"

    def close(self):
        self.closed = True


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer, iteration):
        self.events.append(("start", iteration))

    def on_step_end(self, trainer, iteration, metrics):
        self.events.append(("log", iteration, metrics["optimizer_step"], metrics["nonfinite_in_window"]))

    def on_checkpoint_saved(self, trainer, iteration, path):
        self.events.append(("save", iteration))

    def on_train_end(self, trainer, iteration):
        self.events.append(("end", iteration))


def _window():
    return MetricsWindow(flops_per_sample=1.0, global_batch=1, grad_accum=1, n_devices=1, peak_tflops=None)


def _parts(feed, config=None, step=_step):
    cadence = loop.Cadence.from_config(config) if config is not None else None
    return loop._Parts(step, None, None, feed, None, _Checkpointer(), None, cadence)


def _fake_train(tmp_path, finite, step=_step, **overrides):
    """Trainer._train with the fake micro-step, feed and checkpointer; (exit code, events, parts, exports)."""
    c = tiny_config(tmp_path, **{"trainer.grad_accum_iter": 1, **overrides})
    trainer = loop.Trainer(config_dict.FrozenConfigDict(c), mesh_for(c, (1, 1, 1)))
    recorder, exports = _Recorder(), []
    trainer.callbacks = [recorder]
    trainer._export = lambda defs, state: exports.append(state.opt_state.gradient_step)
    feed = _Feed(finite)
    parts = _parts(feed, trainer.config, step=lambda *a: step(trainer, *a))
    progress = loop._Progress(0, _state(0), None, pending=feed.next())  # set-up reads the first batch
    code = trainer._train(parts, progress, _window())
    return code, recorder.events, parts, exports


def test_loop_logs_saves_and_makes_up_a_dropped_micro_batch(tmp_path):
    finite = [True, False, True, True, True, True, True]
    code, events, parts, exports = _fake_train(
        tmp_path,
        finite,
        step=lambda trainer, *a: _step(*a),
        **{"trainer.max_iter": 5, "trainer.logging_iter": 2, "checkpoint.save_iter": 3},
    )
    assert code == 0
    # The NaN batch of iteration 2 is made up for at the logging point: optimizer steps == iteration.
    assert events == [
        ("start", 0),
        ("log", 2, 2.0, 1.0),
        ("save", 3),
        ("log", 4, 4.0, 0.0),
        ("log", 5, 5.0, 0.0),
        ("save", 5),
        ("end", 5),
    ]
    # Each checkpoint holds the data state right after the last batch its state consumed.
    assert parts.ck.saved == [(3, 3, b"4"), (5, 5, b"6")]
    assert parts.feed.read == 6 and parts.feed.closed and parts.ck.closed
    assert exports == [5]


def test_preemption_saves_at_once_and_exits_with_the_preemption_code(tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def step(trainer, state, *rest):
        if state.opt_state.gradient_step == 2:  # SIGTERM during the third step
            trainer.preemption._handle(signal.SIGTERM, None)
        return _step(state, *rest)

    code, events, parts, exports = _fake_train(
        tmp_path,
        itertools.repeat(True),
        step=step,
        **{"trainer.max_iter": 10, "trainer.logging_iter": 4, "checkpoint.save_iter": 5},
    )
    assert code == 143  # trainer.exit_code_on_preemption
    assert events == [("start", 0), ("save", 3), ("end", 3)]  # saved at once, not at the next save_iter
    assert parts.ck.saved == [(3, 3, b"3")] and parts.feed.read == 3
    assert exports == []  # a preempted run is not finished: no export
    assert signal.getsignal(signal.SIGTERM) == before  # handlers handed back


def test_catch_up_gives_up_after_100_micro_steps_per_accumulation_window():
    feed = _Feed(itertools.repeat(False))
    progress = loop._Progress(1, _state(0), None)
    with pytest.raises(FloatingPointError, match="diverged: 301 consecutive non-finite"):
        loop._catch_up(_parts(feed), progress, _window(), k=3)
    assert feed.read == 300
