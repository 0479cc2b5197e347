"""Training noise levels: the hybrid log-normal / uniform sigma sampler.

The reference draws sigma with two RNG streams (CUDA torch and numpy); a JAX port can only match the
distribution, which ``tests/parity/test_sde_parity.py`` checks against the recorded statistics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

# Strategies for replacing a fraction of the training sigmas by very high ones (predict2 Video2World).
HIGH_SIGMA_STRATEGIES = ("none", "uniform80_2000", "loguniform200_100000")


@dataclasses.dataclass(frozen=True)
class SDEConfig:
    """Parameters of the training sigma distribution (``config.model.sde``)."""

    p_mean: float = math.log(4.0)
    p_std: float = 1.2
    sigma_min: float = 0.01
    sigma_max: float = 200.0
    hybrid: bool = True
    uniform_lower: float = 1.0
    uniform_upper: float = 85.0
    lognormal_prob: float = 0.7

    def __post_init__(self):
        if self.p_std <= 0:
            raise ValueError(f"sde.p_std must be > 0, got {self.p_std}")
        if not 0.0 <= self.lognormal_prob <= 1.0:
            raise ValueError(f"sde.lognormal_prob must be in [0, 1], got {self.lognormal_prob}")
        if self.hybrid and not self.uniform_lower < self.uniform_upper:
            raise ValueError(
                f"sde.uniform_lower must be < sde.uniform_upper, got {self.uniform_lower}, {self.uniform_upper}"
            )

    @classmethod
    def from_config(cls, sde: Mapping[str, Any] | Any) -> SDEConfig:
        """From ``config.model.sde`` (ours) or a reference ``HybridEDMSDE`` kwargs dict."""
        d = dict(sde.items()) if hasattr(sde, "items") else dict(vars(sde))
        hybrid = d.get("hybrid", d.get("hybrid_sigma_distribution", True))
        kw = dict(
            p_mean=float(d.get("p_mean", cls.p_mean)),
            p_std=float(d.get("p_std", cls.p_std)),
            sigma_min=float(d.get("sigma_min", cls.sigma_min)),
            sigma_max=float(d.get("sigma_max", cls.sigma_max)),
            hybrid=bool(hybrid),
            uniform_lower=float(d.get("uniform_lower", cls.uniform_lower)),
            uniform_upper=float(d.get("uniform_upper", cls.uniform_upper)),
            lognormal_prob=float(d.get("lognormal_prob", cls.lognormal_prob)),
        )
        return cls(**kw)


def sample_sigma(key: jax.Array, batch_size: int, sde_cfg: SDEConfig) -> jax.Array:
    """Draw ``batch_size`` base noise levels sigma0 (float32, shape (B,)), before any sqrt(state_t) factor.

    Hybrid: with probability ``lognormal_prob`` sigma0 ~ LogNormal(p_mean, p_std), else U(lower, upper).
    Non-hybrid: pure LogNormal (the EDM default).
    """
    k_choice, k_normal, k_uniform = jax.random.split(key, 3)
    lognormal = jnp.exp(sde_cfg.p_mean + sde_cfg.p_std * jax.random.normal(k_normal, (batch_size,), jnp.float32))
    if not sde_cfg.hybrid:
        return lognormal.astype(jnp.float32)
    uniform = jax.random.uniform(
        k_uniform, (batch_size,), jnp.float32, minval=sde_cfg.uniform_lower, maxval=sde_cfg.uniform_upper
    )
    use_lognormal = jax.random.uniform(k_choice, (batch_size,)) < sde_cfg.lognormal_prob
    return jnp.where(use_lognormal, lognormal, uniform).astype(jnp.float32)


def apply_high_sigma_strategy(key: jax.Array, sigma: jax.Array, strategy: str, ratio: float) -> jax.Array:
    """Replace a fraction ``ratio`` of the sigmas by a high value (predict2 ``high_sigma_strategy``)."""
    if strategy == "none":
        return sigma
    k_mask, k_value = jax.random.split(key)
    replace = jax.random.uniform(k_mask, sigma.shape) < ratio
    u = jax.random.uniform(k_value, sigma.shape, jnp.float32)
    if strategy == "uniform80_2000":
        high = u * 1920.0 + 80.0
    elif strategy == "loguniform200_100000":
        high = jnp.exp(u * (math.log(100000.0) - math.log(200.0)) + math.log(200.0))
    else:
        raise ValueError(f"unknown high_sigma_strategy {strategy!r}; choose one of {', '.join(HIGH_SIGMA_STRATEGIES)}")
    return jnp.where(replace, high, sigma).astype(sigma.dtype)


def draw_training_sigma_and_epsilon(
    key: jax.Array,
    x0_shape: tuple[int, ...],
    sde_cfg: SDEConfig,
    *,
    state_t: int,
    adjust_video_noise: bool = True,
    high_sigma_strategy: str = "none",
    high_sigma_ratio: float = 0.05,
) -> tuple[jax.Array, jax.Array]:
    """sigma (B, 1) float32 shared by all frames of a sample, and epsilon ~ N(0, 1) float32 of ``x0_shape``.

    With ``adjust_video_noise`` sigma is multiplied by sqrt(state_t) (the video noise multiplier).
    """
    k_sigma, k_eps, k_high = jax.random.split(key, 3)
    batch_size = x0_shape[0]
    sigma = sample_sigma(k_sigma, batch_size, sde_cfg)
    if adjust_video_noise:
        sigma = sigma * jnp.float32(math.sqrt(state_t))
    sigma = apply_high_sigma_strategy(k_high, sigma, high_sigma_strategy, high_sigma_ratio)
    epsilon = jax.random.normal(k_eps, x0_shape, jnp.float32)
    return sigma[:, None], epsilon
