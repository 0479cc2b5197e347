"""Denoiser preconditioning coefficients and per-sigma loss weights.

The policy uses rectified-flow scaling with sigma_data = 1 (t = sigma / (1 + sigma)); the EDM (Karras)
scalings are kept for completeness. All functions are pure and work on any float array; arithmetic
follows the reference's order so float32 results match it bit for bit on the fixtures.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Coefficients = tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]

SCALINGS = ("rectified_flow", "edm")
# Size of the bell-shaped weight table of the non-uniform rectified-flow loss weight.
_RF_TABLE_SIZE = 1000


def rectified_flow_time(sigma: jnp.ndarray) -> jnp.ndarray:
    """t = sigma / (sigma + 1): the rectified-flow interpolation time for a VE noise level."""
    return sigma / (sigma + 1)


def rectified_flow_scaling(sigma: jnp.ndarray, t_scaling_factor: float = 1.0) -> Coefficients:
    """(c_skip, c_out, c_in, c_noise) = (1 - t, -t, 1 - t, t * factor); x0 = c_skip * x + c_out * F(c_in * x)."""
    t = rectified_flow_time(sigma)
    one_minus_t = 1.0 - t
    return one_minus_t, -t, one_minus_t, t * t_scaling_factor


def edm_scaling(sigma: jnp.ndarray, sigma_data: float = 0.5) -> Coefficients:
    """Karras et al. (2022) preconditioning; c_noise = log(sigma) / 4 (-inf at sigma = 0)."""
    sd2 = sigma_data**2
    denom = (sigma**2 + sd2) ** 0.5
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / denom
    c_in = 1 / denom
    # numpy input keeps its float64 precision (jnp would downcast without x64).
    log = jnp.log if isinstance(sigma, jax.Array) else np.log
    c_noise = 0.25 * log(sigma)
    return c_skip, c_out, c_in, c_noise


def rectified_flow_weight_table() -> np.ndarray:
    """Bell-shaped table (1000 entries, mean 1) of the non-uniform rectified-flow loss weight, float32."""
    t = np.linspace(0.0, 1.0, _RF_TABLE_SIZE, dtype=np.float32)
    y = np.exp(np.float32(-2.0) * (t - np.float32(0.5)) ** 2).astype(np.float32)
    shift = y - y.min()
    return (shift * (np.float32(_RF_TABLE_SIZE) / shift.sum(dtype=np.float32))).astype(np.float32)


def rectified_flow_loss_weight(sigma: jnp.ndarray, uniform: bool = True) -> jnp.ndarray:
    """Per-sigma loss weight. Uniform (the policy's): (1 + sigma)^2 / sigma^2, which turns the x0-space error
    into the velocity-space error; otherwise the table entry at round(1000 * t), clipped to the table."""
    if uniform:
        return (1.0 + sigma) ** 2 / sigma**2
    table = jnp.asarray(rectified_flow_weight_table())
    index = jnp.clip(jnp.round(rectified_flow_time(sigma) * _RF_TABLE_SIZE).astype(jnp.int32), 0, _RF_TABLE_SIZE - 1)
    return table[index].astype(sigma.dtype)


def edm_loss_weight(sigma: jnp.ndarray, sigma_data: float = 0.5) -> jnp.ndarray:
    """(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def get_scaling(
    name: str, *, sigma_data: float = 1.0, t_scaling_factor: float = 1.0
) -> Callable[[jnp.ndarray], Coefficients]:
    """The preconditioning function named by ``config.model.scaling``."""
    if name == "rectified_flow":
        if abs(sigma_data - 1.0) > 1e-6:
            raise ValueError(f"model.sigma_data must be 1.0 with rectified_flow scaling, got {sigma_data}")
        return lambda sigma: rectified_flow_scaling(sigma, t_scaling_factor)
    if name == "edm":
        return lambda sigma: edm_scaling(sigma, sigma_data)
    raise ValueError(f"unknown model.scaling {name!r}; choose one of {', '.join(SCALINGS)}")


def get_loss_weight(
    name: str, *, sigma_data: float = 1.0, rectified_flow_uniform: bool = True
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The per-sigma loss weight that goes with ``get_scaling(name)``."""
    if name == "rectified_flow":
        return lambda sigma: rectified_flow_loss_weight(sigma, rectified_flow_uniform)
    if name == "edm":
        return lambda sigma: edm_loss_weight(sigma, sigma_data)
    raise ValueError(f"unknown model.scaling {name!r}; choose one of {', '.join(SCALINGS)}")
