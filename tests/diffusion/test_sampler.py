"""Sampler math: Karras schedule, step counts, exactness of the 2ab step, JAX loop vs host loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_policy_jax.diffusion import sampler


def test_schedule_endpoints_and_monotonic():
    s = sampler.karras_schedule(4.0, 80.0, 4, 7.0)
    assert s.dtype == np.float64 and s.shape == (5,)
    assert s[0] == pytest.approx(80.0, rel=1e-14) and s[-1] == pytest.approx(4.0, rel=1e-14)
    assert np.all(np.diff(s) < 0)
    # rho = 1: linear spacing.
    np.testing.assert_allclose(sampler.karras_schedule(1.0, 5.0, 4, 1.0), [5, 4, 3, 2, 1], rtol=1e-14)
    with pytest.raises(ValueError, match="sigma_min"):
        sampler.karras_schedule(80.0, 4.0, 4, 7.0)


@pytest.mark.parametrize("num_steps,calls", [(1, 1), (2, 1), (3, 3), (5, 5), (9, 9)])
def test_number_of_denoiser_calls(num_steps, calls):
    plan = sampler.solver_plan(num_steps, 4.0, 80.0, 7.0, "2ab")
    assert plan.num_calls == calls
    assert plan.sigmas[0] == pytest.approx(80.0)
    if num_steps > 2:
        np.testing.assert_allclose(plan.sigmas, sampler.karras_schedule(4.0, 80.0, num_steps - 1, 7.0), rtol=0)


def test_constant_denoiser_is_a_fixed_point():
    c = np.arange(12, dtype=np.float32).reshape(2, 6)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32) * 80
    for solver in sampler.SOLVERS:
        out = sampler.sample(lambda xx, s: c, x, 5, 4.0, 80.0, 7.0, solver)
        np.testing.assert_array_equal(out, c)


def test_2ab_integrates_x0_linear_in_log_sigma_exactly():
    # dx/dlambda = x0 - x with lambda = -log sigma. With x0(lambda) = A + B*lambda the first (Euler) step is
    # approximate but every later 2ab step is exact; compare the state handed to the final clean call.
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(2, 3, 4))
    seen = []

    def den(x, s):
        seen.append(x.astype(np.float64))
        lam = -np.log(s.astype(np.float64))[:, None]
        return A + B * lam

    num_steps, lo, hi = 6, 0.5, 80.0
    x_t = rng.normal(size=(3, 4)) * hi
    sampler.sample(den, x_t.astype(np.float32), num_steps, lo, hi, 7.0, "2ab")
    sig = sampler.karras_schedule(lo, hi, num_steps - 1, 7.0)
    x_t64 = x_t.astype(np.float32).astype(np.float64)
    r = sig[1] / sig[0]  # the x0-parameterised Euler step: x <- r x + (1 - r) x0
    x1 = r * x_t64 + (1.0 - r) * (A + B * -np.log(np.float64(np.float32(sig[0]))))
    l1, ln = -np.log(sig[1]), -np.log(sig[-1])
    e = np.exp(-(ln - l1))
    expected = e * x1 + A * (1 - e) + B * ((ln - 1) - e * (l1 - 1))
    # The denoiser sees float32 sigma and x, hence ~1e-6 relative.
    np.testing.assert_allclose(seen[-1], expected, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("solver", sampler.SOLVERS)
@pytest.mark.parametrize("num_steps", [1, 2, 4, 7])
def test_jax_loop_matches_host_loop(solver, num_steps):
    rng = np.random.default_rng(2)
    target = rng.normal(size=(2, 3, 5)).astype(np.float32)
    x_t = sampler.initial_noise((2, 3, 5), seed=3, sigma_max=80.0)

    def den_np(x, s):
        s = s[:, None, None]
        return np.tanh(target + x * s / (1 + s**2))

    def den_jnp(x, s):
        s = s[:, None, None]
        return jnp.tanh(target + x * s / (1 + s**2))

    ref = sampler.sample(den_np, x_t, num_steps, 0.05, 80.0, 7.0, solver)
    out = jax.jit(lambda x: sampler.sample_jax(den_jnp, x, num_steps, 0.05, 80.0, 7.0, solver))(x_t)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_initial_noise_is_numpy_randomstate():
    x = sampler.initial_noise((2, 3), seed=7, sigma_max=80.0)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.random.RandomState(7).standard_normal((2, 3)).astype(np.float32) * 80)


def test_bad_solver():
    with pytest.raises(ValueError, match="solver"):
        sampler.solver_plan(5, 4.0, 80.0, 7.0, "2mid")
