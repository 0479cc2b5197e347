"""Non-finite steps: a micro-batch whose gradients are NaN is dropped (parameters, optimizer state and
gradient accumulator unchanged), counted and logged, made up by the next micro-batch, and with loss
scaling the scale halves and then grows back. Training continues."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from tests.reliability import helpers
from tests.training.helpers import StepRunner, flat_params, host_batches, mesh_for, tiny_config

pytestmark = pytest.mark.slow

K = 2  # trainer.grad_accum_iter: the NaN batch is the second micro-batch of the first window
NAN_MICRO_BATCH = 1


def test_nan_batch_in_an_accumulation_window_is_skipped_counted_and_the_loss_scale_recovers(compile_cache, tmp_path):
    job = tmp_path / "job"
    growth = 4  # good micro-steps before the scale doubles
    args = helpers.tiny_args(
        job,
        4,
        f"--config.trainer.grad_accum_iter={K}",
        "--config.trainer.loss_scaling=True",
        f"--config.trainer.loss_scale_growth_interval={growth}",
    )
    env = helpers.train_env(compile_cache, FAULT_NAN_INDEX=helpers.sample_in_micro_batch(NAN_MICRO_BATCH))
    r = helpers.run(args, env, tmp_path / "nan", module=helpers.FAULT_TRAIN)
    assert r.returncode == 0, r.tail()
    rows = helpers.rows(job)
    init_scale = yaml.safe_load((job / "config.yaml").read_text())["trainer"]["init_loss_scale"]
    assert [x["iteration"] for x in rows] == [1, 2, 3, 4]
    # Every iteration applied exactly one optimizer step (the dropped micro-batch was made up for).
    assert [x["optimizer_step"] for x in rows] == [1, 2, 3, 4]
    # Counted once, logged in the window where it happened.
    assert [x["nonfinite_steps"] for x in rows] == [1, 1, 1, 1]
    assert [x["nonfinite_in_window"] for x in rows] == [1, 0, 0, 0]
    assert all(np.isfinite(x["loss"]) and np.isfinite(x["grad_norm"]) for x in rows)
    # The scale halved at the NaN, then doubled again after `growth` good micro-steps.
    scales = [x["loss_scale"] for x in rows]
    assert scales[0] == init_scale / 2, scales
    assert max(scales[1:]) == init_scale, scales


def test_nan_micro_batch_leaves_the_accumulation_window_unchanged():
    """[A, NaN, B] with grad_accum_iter=2 gives exactly the state of [A, B]: the NaN micro-batch changed
    neither parameters nor optimizer state nor the gradient accumulator."""
    # A real learning rate from the first step (no warm-up) so that the compared update is visible.
    c = tiny_config(
        **{
            "dataloader_train.global_batch_size": 2,
            "trainer.grad_accum_iter": K,
            "scheduler.warm_up_steps": (0, 0),
            "optimizer.lr": 1e-3,
        }
    )
    mesh = mesh_for(c, (2, 1, 1))
    a, b = (dict(jax.device_get(x)) for x in host_batches(c, mesh, 2))
    rng = np.random.default_rng(0)
    for batch in (a, b):  # fixed noise: the step's PRNG key (folded with the micro-step count) is not used
        n = batch["video"].shape[0]
        batch["_sigma"] = np.exp(rng.normal(np.log(4.0), 1.2, size=(n, 1))).astype(np.float32)
        lat = c.dataloader_train.dataset.final_image_size // c.model.tokenizer.spatial_compression
        batch["_epsilon"] = rng.standard_normal((n, c.model.state_ch, c.model.state_t, lat, lat)).astype(np.float32)
    nan = {k: np.array(v, copy=True) for k, v in b.items()}
    nan["actions"][0, 0, 0] = np.nan

    runner = StepRunner(c, mesh, a)
    init = jax.tree.map(jnp.copy, runner.state)  # the step donates its input state
    init_params = flat_params(init)
    # optax.MultiSteps state; its `skip_state` records the last skip decision, so it alone may differ.
    fields = ("inner_opt_state", "acc_grads", "mini_step", "gradient_step")

    def opt_leaves(state):
        opt = jax.device_get(state.opt_state)
        return {f: [np.asarray(x) for x in jax.tree.leaves(getattr(opt, f))] for f in fields}

    m = [runner.run(x) for x in (a, b)]
    assert [int(x["optimizer_step"]) for x in m] == [0, 1] and all(bool(x["finite"]) for x in m)
    clean_params, clean_opt = flat_params(runner.state), opt_leaves(runner.state)
    moved = [k for k in clean_params if not np.array_equal(clean_params[k], init_params[k])]
    assert len(moved) == len(clean_params), set(clean_params) - set(moved)  # the comparison is not trivial

    runner.state = jax.tree.map(jnp.copy, init)
    m = [runner.run(x) for x in (a, nan, b)]
    assert [bool(x["finite"]) for x in m] == [True, False, True]
    assert [int(x["optimizer_step"]) for x in m] == [0, 0, 1]
    assert int(m[-1]["nonfinite_steps"]) == 1
    params = flat_params(runner.state)
    assert params.keys() == clean_params.keys()
    for k in params:
        np.testing.assert_array_equal(params[k], clean_params[k], err_msg=str(k))
    opt = opt_leaves(runner.state)
    for f in fields:
        for x, y in zip(opt[f], clean_opt[f], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f)
