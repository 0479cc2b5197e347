"""The conditioned denoiser and the one sampler call built on it.

``denoise`` is the rectified-flow preconditioned network with frame replacement, shared by the training
loss and the sampler. ``sample_latent`` runs the diffusion sampler with it: policy inference, planning
and validation all sample through this one function, from noise made by ``sampler_noise``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cosmos_policy_jax.diffusion import scaling as scaling_lib
from cosmos_policy_jax.diffusion.sampler import SolverPlan, initial_noise, sample_jax, sample_jax_per_sample
from cosmos_policy_jax.policy.config import PolicyConfig


def denoise(
    net: Callable[..., jax.Array],
    xt: jax.Array,
    sigma: jax.Array,
    gt_frames: jax.Array,
    frame_mask: jax.Array,
    crossattn_emb: jax.Array,
    padding_mask: jax.Array | None,
    cfg: PolicyConfig,
) -> dict[str, jax.Array]:
    """x0 prediction of the conditioned network at noise level ``sigma`` (B, 1).

    Returns x0_pred (conditioning frames replaced by ``gt_frames``), eps_pred, the network output and the
    network's inputs (x before the dtype cast, per-frame timesteps), all float32.
    """
    b, _, t, h, w = xt.shape
    dtype = cfg.compute_dtype
    scale = scaling_lib.get_scaling(
        cfg.scaling, sigma_data=cfg.sigma_data, t_scaling_factor=cfg.rectified_flow_t_scaling_factor
    )
    sigma = jnp.asarray(sigma, jnp.float32).reshape(b, -1)
    sigma5 = sigma[:, None, :, None, None]
    c_skip, c_out, c_in, c_noise = scale(sigma5)
    # Conditioning frames: clean GT input and the time input of sigma_conditional.
    m5 = frame_mask.astype(jnp.float32)[:, None, :, None, None]
    net_x = jnp.where(m5 != 0, gt_frames.astype(jnp.float32) / cfg.sigma_data, xt * c_in)
    c_noise_cond = scale(jnp.full_like(sigma5, cfg.sigma_conditional))[3]
    timesteps = (c_noise_cond * m5 + c_noise * (1 - m5)).reshape(b, t)
    cond_mask = jnp.broadcast_to(m5, (b, 1, t, h, w)).astype(dtype)
    net_out = net(
        net_x.astype(dtype),
        timesteps.astype(dtype),
        crossattn_emb.astype(dtype),
        cond_mask,
        None if padding_mask is None else padding_mask.astype(dtype),
        data_type="video",
    )
    net_out = jnp.asarray(net_out).astype(jnp.float32)
    x0_pred = c_skip * xt + c_out * net_out
    if cfg.denoise_replace_gt_frames:
        x0_pred = jnp.where(m5 != 0, gt_frames.astype(jnp.float32), x0_pred)
    eps_pred = (xt - x0_pred) / sigma5
    return dict(x0_pred=x0_pred, eps_pred=eps_pred, net_out=net_out, net_x=net_x, net_timesteps=timesteps)


def sample_latent(
    net: Callable[..., jax.Array],
    gt_frames: jax.Array,
    frame_mask: jax.Array,
    emb: jax.Array,
    padding: jax.Array | None,
    x_init: jax.Array,
    cfg: PolicyConfig,
    *,
    num_steps: int | None = None,
    plans: list[SolverPlan] | None = None,
) -> jax.Array:
    """One sampler run of the conditioned denoiser from ``x_init`` (the reference's generate call).

    ``num_steps`` runs the config's sigma range for the whole batch; ``plans`` (one ``SolverPlan`` per
    sample, e.g. per-query variance scales or ensemble step counts) runs each sample on its own plan.
    """
    net_fn = _traceable(net)

    def x0_fn(x: jax.Array, sigma: jax.Array) -> jax.Array:
        out = denoise(net_fn(), x, sigma[:, None], gt_frames, frame_mask.astype(cfg.compute_dtype), emb, padding, cfg)
        return out["x0_pred"]

    if plans is not None:
        return sample_jax_per_sample(x0_fn, x_init, plans)
    num_steps = cfg.sampler_num_steps if num_steps is None else int(num_steps)
    return sample_jax(
        x0_fn, x_init, num_steps, cfg.sampler_sigma_min, cfg.sampler_sigma_max, cfg.sampler_rho, cfg.sampler_solver
    )


def _traceable(net: Any) -> Callable[[], Any]:
    """A factory returning ``net`` usable inside the sampler's ``lax.scan``.

    An NNX module that itself uses NNX transforms (the DiT's scanned blocks) cannot be called from a
    deeper JAX trace than the one it was created in; re-merging it from its split state inside the
    scan body gives a module of the current trace level, with the same arrays.
    """
    if isinstance(net, nnx.Module):
        graphdef, state = nnx.split(net)
        return lambda: nnx.merge(graphdef, state, copy=True)
    return lambda: net


def sampler_noise(
    shape: tuple[int, ...], cfg: PolicyConfig, *, seed: int | None = None, noise: jax.Array | None = None
) -> jax.Array:
    """The sampler's initial noise x_T (already times sigma_max) for a latent of ``shape``: ``noise`` when
    given (checked against ``shape``), else drawn from ``seed`` (default ``cfg.sampler_seed``)."""
    if noise is None:
        seed = cfg.sampler_seed if seed is None else int(seed)
        return jnp.asarray(initial_noise(tuple(shape), seed, cfg.sampler_sigma_max))
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the latent {tuple(shape)}")
    return jnp.asarray(noise, jnp.float32)
