"""LR schedule, optimizer composition, non-finite skipping, loss scale, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cosmos_policy
from cosmos_policy_jax.training import optimizer as opt_lib
from cosmos_policy_jax.training.schedule import lambda_linear_factor, lambda_linear_schedule


def _reference_libero_factor(k: int) -> float:
    # The reference's schedule spelled out for the LIBERO values.
    if k < 1000:
        return 1e-6 + (1 - 1e-6) * k / 1000
    if k <= 30000:
        return 0.3 + 0.7 * (30000 - k) / 29000
    return 0.06


@pytest.mark.parametrize("k", [0, 1, 2, 500, 999, 1000, 1001, 15000, 29999, 30000, 30001, 40000, 10**7])
def test_libero_schedule_values(k):
    c = cosmos_policy.get_config("libero")
    sched = lambda_linear_schedule(c.optimizer.lr, c.scheduler)
    expected = 1e-4 * _reference_libero_factor(k)
    assert float(sched(k)) == pytest.approx(expected, rel=2e-6, abs=1e-12)
    host = 1e-4 * lambda_linear_factor(
        k, *(c.scheduler[n] for n in ("cycle_lengths", "warm_up_steps", "f_start", "f_max", "f_min"))
    )
    assert host == pytest.approx(expected, rel=1e-12)


def test_schedule_is_jittable_and_monotone_in_warmup():
    c = cosmos_policy.get_config("libero")
    sched = jax.jit(lambda_linear_schedule(c.optimizer.lr, c.scheduler))
    vals = np.asarray([float(sched(k)) for k in range(0, 1000, 50)])
    assert np.all(np.diff(vals) > 0)


def _tiny_tx(k: int):
    c = cosmos_policy.get_config("tiny")
    c.trainer.grad_accum_iter = k
    c.optimizer.lr = 1e-2
    c.scheduler.warm_up_steps = (0, 0)
    return opt_lib.make_optimizer(c)[0]


def test_nan_inside_accumulation_window_is_dropped_not_accumulated():
    tx = _tiny_tx(2)
    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    g = {"w": jnp.asarray([1.0, 2.0, 3.0])}
    bad = {"w": jnp.asarray([jnp.nan, 0.0, 0.0])}
    upd, state = tx.update(g, state, params)  # micro 1 of 2
    assert np.all(np.asarray(upd["w"]) == 0)
    upd, state = tx.update(bad, state, params)  # dropped
    assert np.all(np.isfinite(np.asarray(state.acc_grads["w"])))
    assert int(state.mini_step) == 1 and int(state.gradient_step) == 0
    upd, state = tx.update(g, state, params)  # completes the window with finite grads
    assert int(state.gradient_step) == 1
    assert np.all(np.isfinite(np.asarray(upd["w"]))) and np.any(np.asarray(upd["w"]) != 0)
    # Same result as a clean window of two finite micro-batches.
    tx2 = _tiny_tx(2)
    s2 = tx2.init(params)
    _, s2 = tx2.update(g, s2, params)
    upd2, s2 = tx2.update(g, s2, params)
    np.testing.assert_allclose(np.asarray(upd["w"]), np.asarray(upd2["w"]), rtol=1e-6)


def test_nan_step_leaves_state_unchanged_without_accumulation():
    tx = _tiny_tx(1)
    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((3,))}, state, params)
    before = jax.tree.map(np.asarray, state)
    upd, after = tx.update({"w": jnp.asarray([jnp.inf, 1.0, 1.0])}, state, params)
    assert np.all(np.asarray(upd["w"]) == 0)
    for a, b in zip(jax.tree.leaves(before.inner_opt_state), jax.tree.leaves(after.inner_opt_state)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_single_step_optimizer_matches_multisteps_k1():
    # grad_accum_iter=1 uses skip_nonfinite(inner) instead of MultiSteps: same updates, finite or not,
    # and no gradient accumulator in the state.
    tx = _tiny_tx(1)
    assert isinstance(tx.init({"w": jnp.ones(3)}), opt_lib.SingleStepState)
    c = cosmos_policy.get_config("tiny")
    c.optimizer.lr = 1e-2
    c.scheduler.warm_up_steps = (0, 0)
    inner = optax.chain(
        optax.clip_by_global_norm(c.optimizer.clip_norm),
        optax.adamw(
            opt_lib.make_schedule(c),
            b1=c.optimizer.b1,
            b2=c.optimizer.b2,
            eps=c.optimizer.eps,
            weight_decay=c.optimizer.weight_decay,
        ),
    )
    ref = optax.MultiSteps(inner, every_k_schedule=1, should_skip_update_fn=optax.skip_not_finite)
    params = {"w": jnp.asarray([1.0, -2.0, 0.5]), "b": jnp.asarray([[0.3, 0.1]])}
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(5)]
    grads[2] = {"w": grads[2]["w"].at[1].set(jnp.nan), "b": grads[2]["b"]}
    p1, s1, p2, s2 = params, tx.init(params), params, ref.init(params)
    update1, update2 = jax.jit(tx.update), jax.jit(ref.update)
    for g in grads:
        u1, s1 = update1(g, s1, p1)
        u2, s2 = update2(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
        assert int(s1.gradient_step) == int(s2.gradient_step)
    assert int(s1.gradient_step) == 4
    for a, b in zip(jax.tree.leaves(s1.inner_opt_state), jax.tree.leaves(s2.inner_opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_adamw_matches_reference_update_rule():
    # One AdamW step by hand: decoupled decay on every parameter, eps after sqrt.
    c = cosmos_policy.get_config("tiny")
    c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.clip_norm = 1e-3, 0.1, 1e9
    c.scheduler.warm_up_steps, c.scheduler.f_max, c.scheduler.f_min = (0, 0), (1.0, 1.0), (1.0, 1.0)
    tx, _ = opt_lib.make_optimizer(c)
    p = np.asarray([0.5, -1.0, 2.0], np.float32)
    g = np.asarray([0.1, -0.2, 0.3], np.float32)
    upd, _ = tx.update({"w": jnp.asarray(g)}, tx.init({"w": jnp.asarray(p)}), {"w": jnp.asarray(p)})
    b1, b2, eps, lr, wd = 0.9, 0.99, 1e-8, 1e-3, 0.1
    m = (1 - b1) * g / (1 - b1)
    v = (1 - b2) * g * g / (1 - b2)
    expected = -lr * (m / (np.sqrt(v) + eps) + wd * p)
    np.testing.assert_allclose(np.asarray(upd["w"]), expected, rtol=1e-5)


def test_loss_scale_shrinks_and_regrows():
    scale, good = jnp.asarray(1024.0), jnp.asarray(0, jnp.int32)
    scale, good = opt_lib.update_loss_scale(scale, good, jnp.asarray(False), 3)
    assert float(scale) == 512.0 and int(good) == 0
    for _ in range(2):
        scale, good = opt_lib.update_loss_scale(scale, good, jnp.asarray(True), 3)
    assert float(scale) == 512.0 and int(good) == 2
    scale, good = opt_lib.update_loss_scale(scale, good, jnp.asarray(True), 3)
    assert float(scale) == 1024.0 and int(good) == 0


def test_power_ema_constants():
    gamma = opt_lib.power_ema_gamma(0.1)
    assert gamma == pytest.approx(6.9372, abs=1e-3)
    # gamma solves the cubic it is defined by.
    s2 = 0.1**-2
    assert gamma**3 + 7 * gamma**2 + (16 - s2) * gamma + (12 - s2) == pytest.approx(0.0, abs=1e-6)
    assert float(opt_lib.power_ema_beta(0, gamma)) == 0.0
    assert float(opt_lib.power_ema_beta(9, gamma)) == pytest.approx((1 - 1 / 10) ** (gamma + 1), rel=1e-5)
