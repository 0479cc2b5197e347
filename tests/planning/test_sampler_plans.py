"""``sample_jax_per_sample``: each sample of a batch on its own plan equals ``sample_jax`` run on it alone."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cosmos_policy_jax.diffusion import sampler


def _toy(target):
    def den(x, sigma):
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return (target + x * s / (1 + s**2)) / (1 + 0.1 * s)

    return den


def test_mixed_step_counts_and_sigma_ranges_match_single_runs():
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.standard_normal((4, 3, 5)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((4, 3, 5)) * 80, jnp.float32)
    # 1 and 2 steps make one call, 3 and 5 steps their own schedules; one sample with another sigma range.
    settings = [(1, 4.0, 80.0), (2, 4.0, 80.0), (5, 2.15, 103.8), (3, 4.0, 80.0)]
    plans = [sampler.solver_plan(n, lo, hi) for n, lo, hi in settings]
    out = sampler.sample_jax_per_sample(_toy(target), x, plans)
    for i, (n, lo, hi) in enumerate(settings):
        alone = sampler.sample_jax(_toy(target[i : i + 1]), x[i : i + 1], n, lo, hi)
        np.testing.assert_allclose(out[i : i + 1], alone, rtol=1e-6, atol=1e-5, err_msg=f"sample {i} ({n} steps)")
    assert not np.allclose(out[0], out[3], atol=1e-3)  # the plans really differ


def test_stacked_plan_pads_with_identity_updates_in_front():
    plans = [sampler.solver_plan(n, 4.0, 80.0) for n in (1, 4)]
    sigmas, a, b_cur, b_prev, final = sampler.stack_plans(plans)
    assert sigmas.shape == a.shape == (3, 2)
    np.testing.assert_array_equal(a[:, 0], 1.0)
    np.testing.assert_array_equal(b_cur[:, 0], 0.0)
    np.testing.assert_array_equal(b_prev[:, 0], 0.0)
    np.testing.assert_array_equal(a[:, 1], plans[1].a)
    assert final[0] == 80.0 and final[1] == plans[1].sigmas[-1]
