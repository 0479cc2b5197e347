"""Hybrid sigma sampler: shapes, mixture branches, the sqrt(state_t) multiplier, config parsing."""

import math

import jax
import numpy as np
import pytest

from cosmos_policy_jax.diffusion import sde


def _cfg(**kw):
    return sde.SDEConfig(**{**dict(p_mean=math.log(4.0), p_std=1.2), **kw})


def test_shape_dtype_and_positivity():
    s = sde.sample_sigma(jax.random.key(0), 1000, _cfg())
    assert s.shape == (1000,) and s.dtype == np.float32
    assert bool((s > 0).all())


def test_branches_by_mixture_probability():
    n = 200_000
    uni = np.asarray(sde.sample_sigma(jax.random.key(1), n, _cfg(lognormal_prob=0.0)))
    assert uni.min() >= 1.0 and uni.max() <= 85.0
    # U(1, 85): mean 43, std 84/sqrt(12); 6 standard errors.
    assert abs(uni.mean() - 43.0) < 6 * 84 / math.sqrt(12 * n)
    ln = np.log(np.asarray(sde.sample_sigma(jax.random.key(2), n, _cfg(lognormal_prob=1.0))))
    assert abs(ln.mean() - math.log(4.0)) < 6 * 1.2 / math.sqrt(n)
    assert abs(ln.std() - 1.2) < 6 * 1.2 / math.sqrt(2 * n)
    pure = np.log(np.asarray(sde.sample_sigma(jax.random.key(2), n, _cfg(hybrid=False))))
    assert abs(pure.mean() - math.log(4.0)) < 6 * 1.2 / math.sqrt(n)
    mix = np.asarray(sde.sample_sigma(jax.random.key(3), n, _cfg(lognormal_prob=0.7)))
    # P(sigma > 85) comes only from the log-normal branch: 0.7 * (1 - Phi((ln 85 - ln 4) / 1.2)).
    p = 0.7 * 0.5 * math.erfc((math.log(85) - math.log(4)) / 1.2 / math.sqrt(2))
    assert abs((mix > 85).mean() - p) < 6 * math.sqrt(p * (1 - p) / n)


def test_training_draw_multiplies_by_sqrt_state_t_and_shares_sigma_over_frames():
    key = jax.random.key(4)
    shape = (6, 16, 11, 2, 2)
    s_adj, eps = sde.draw_training_sigma_and_epsilon(key, shape, _cfg(), state_t=11, adjust_video_noise=True)
    s_raw, eps2 = sde.draw_training_sigma_and_epsilon(key, shape, _cfg(), state_t=11, adjust_video_noise=False)
    assert s_adj.shape == (6, 1) and eps.shape == shape and eps.dtype == np.float32
    np.testing.assert_allclose(np.asarray(s_adj), np.asarray(s_raw) * math.sqrt(11), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(eps), np.asarray(eps2))


def test_high_sigma_strategy():
    s = jax.numpy.ones((1000,))
    out = np.asarray(sde.apply_high_sigma_strategy(jax.random.key(5), s, "uniform80_2000", 1.0))
    assert out.min() >= 80 and out.max() <= 2000
    np.testing.assert_array_equal(np.asarray(sde.apply_high_sigma_strategy(jax.random.key(5), s, "none", 1.0)), 1.0)
    with pytest.raises(ValueError, match="high_sigma_strategy"):
        sde.apply_high_sigma_strategy(jax.random.key(5), s, "shift24", 0.1)


def test_from_config_accepts_ours_and_reference_names():
    ours = sde.SDEConfig.from_config(dict(hybrid=True, p_mean=1.0, p_std=2.0, lognormal_prob=0.5))
    assert (ours.p_mean, ours.p_std, ours.lognormal_prob, ours.hybrid) == (1.0, 2.0, 0.5, True)
    ref = sde.SDEConfig.from_config(dict(hybrid_sigma_distribution=False, uniform_upper=90))
    assert not ref.hybrid and ref.uniform_upper == 90.0
    with pytest.raises(ValueError, match="lognormal_prob"):
        sde.SDEConfig(lognormal_prob=1.5)
