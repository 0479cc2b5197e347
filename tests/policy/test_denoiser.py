"""The conditioned denoiser (frame replacement, per-frame time input) and the sampler's initial noise."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.diffusion.sampler import initial_noise
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.denoiser import denoise, sampler_noise


class ConstantNet:
    """Returns ones and keeps what it was called with."""

    def __call__(self, x, timesteps, emb, cond_mask, padding, data_type):
        self.x, self.timesteps, self.cond_mask = x, timesteps, cond_mask
        return jnp.ones_like(x)


def test_denoise_replaces_conditioning_frames_and_times_them_at_sigma_conditional():
    cfg = PolicyConfig.from_config(get_config("libero,fp32"))
    rng = np.random.default_rng(0)
    b, c, t, h, w = 2, cfg.state_ch, cfg.state_t, 2, 2
    xt = jnp.asarray(rng.normal(size=(b, c, t, h, w)).astype(np.float32))
    gt = jnp.asarray(rng.normal(size=(b, c, t, h, w)).astype(np.float32))
    mask = jnp.asarray(np.tile((np.arange(t) < 3).astype(np.float32), (b, 1)))
    sigma = jnp.asarray([[2.0], [9.0]], jnp.float32)
    net = ConstantNet()
    out = denoise(net, xt, sigma, gt, mask, jnp.zeros((b, 4, 8)), None, cfg)

    tau = np.asarray(sigma / (1 + sigma))[:, :, None, None, None]  # rectified-flow time
    x0 = np.asarray(out["x0_pred"])
    np.testing.assert_allclose(x0[:, :, :3], np.asarray(gt)[:, :, :3])
    np.testing.assert_allclose(x0[:, :, 3:], (1 - tau) * np.asarray(xt)[:, :, 3:] - tau, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(net.x)[:, :, :3], np.asarray(gt)[:, :, :3])
    ts = np.asarray(net.timesteps)
    np.testing.assert_allclose(ts[:, :3], 0.0)  # sigma_conditional = 0
    np.testing.assert_allclose(ts[:, 3:], np.broadcast_to(tau[:, 0, 0, 0], (b, t - 3)), rtol=1e-6)
    assert net.cond_mask.shape == (b, 1, t, h, w)


def test_sampler_noise_seed_and_given_noise():
    cfg = PolicyConfig.from_config(get_config("libero,fp32"))
    shape = (2, cfg.state_ch, cfg.state_t, 2, 2)
    default = np.asarray(sampler_noise(shape, cfg))
    np.testing.assert_array_equal(default, initial_noise(shape, cfg.sampler_seed, cfg.sampler_sigma_max))
    assert not np.array_equal(default, np.asarray(sampler_noise(shape, cfg, seed=cfg.sampler_seed + 1)))
    given = np.ones(shape, np.float64)
    out = sampler_noise(shape, cfg, seed=5, noise=given)
    assert out.dtype == jnp.float32 and np.array_equal(np.asarray(out), given)
    with pytest.raises(ValueError, match="noise has shape"):
        sampler_noise(shape, cfg, noise=np.ones((1, *shape[1:])))
