"""One batched generate call of the planner: conditioning, per-sample seeds and sampler plans.

Every planning query kind (action, future state, V(s'), Q(s,a)) is one run of the policy sampler on a
latent whose first ``num_conditional_frames`` frames (plus the injected current proprio) are clean
conditioning, optionally with input masking. Each sample of a batch carries its own seed (initial noise)
and its own sampler plan (step count; sigma range under variance scaling), so the N queries of a
best-of-N search and the members of an ensemble run as one call of ``policy.denoiser.sample_latent``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmos_policy_jax.diffusion.sampler import initial_noise, solver_plan
from cosmos_policy_jax.policy.conditioning import encode_video, inference_condition
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.denoiser import sample_latent
from cosmos_policy_jax.policy.inference import build_video, decode_future_images
from cosmos_policy_jax.policy.layout import CURRENT_STATE_SLOTS, FUTURE_STATE_SLOTS


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """What one generate call conditions on (static under jit)."""

    num_conditional_frames: int
    mask_current_state_action: bool = False  # V(s'): current state and action become generated frames
    mask_future_state: bool = False  # Q(s,a): the future state becomes generated frames


def variance_scales(seed: int) -> tuple[float, float]:
    """(sigma_max factor, sigma_min factor) of the reference's variance scaling for ``seed``.

    The reference seeds torch's CPU Mersenne Twister with ``seed`` and draws two float32 uniforms
    (24 random bits of one 32-bit output each), then 2 u + 1 and 0.9 u' + 0.1 in Python floats. numpy's legacy seeding of
    MT19937 is the same generator, so its raw outputs reproduce the draws.
    """
    gen = np.random.RandomState(int(seed) % 2**32)._bit_generator
    u = [(int(gen.random_raw()) & 0xFFFFFF) * 2.0**-24 for _ in range(2)]  # exact in float32 and float64
    return u[0] * 2 + 1, u[1] * 0.9 + 0.1  # the reference scales the Python floats


def call_plans(
    seeds: Sequence[int], steps: Sequence[int], cfg: PolicyConfig, variance_scale: bool
) -> tuple[tuple[int, float, float], ...]:
    """Static sampler plan (num_steps, sigma_min, sigma_max) of every sample."""
    out = []
    for seed, n in zip(seeds, steps, strict=True):
        hi, lo = variance_scales(seed) if variance_scale else (1.0, 1.0)
        out.append((int(n), cfg.sampler_sigma_min * lo, cfg.sampler_sigma_max * hi))
    return tuple(out)


def initial_noises(
    seeds: Sequence[int], plans: Sequence[tuple[int, float, float]], shape: tuple[int, ...]
) -> np.ndarray:
    """x_T of every sample: ``RandomState(seed).standard_normal((1, ...))`` (float32) times its sigma_max."""
    return np.concatenate([initial_noise((1, *shape), int(s), p[2]) for s, p in zip(seeds, plans, strict=True)])


def condition(
    latent: jax.Array, proprio: jax.Array | None, cfg: PolicyConfig, spec: CallSpec
) -> tuple[jax.Array, jax.Array]:
    """(gt_frames, per-frame mask) of a generate call: clean prefix, injected proprio, then input masking."""
    gt, mask = inference_condition(latent, proprio, cfg, spec.num_conditional_frames)
    layout = cfg.layout
    masked: tuple[int, ...] = ()
    if spec.mask_current_state_action:
        masked += (*layout.frames(CURRENT_STATE_SLOTS), layout.index("action"))
    if spec.mask_future_state:
        masked += layout.frames(FUTURE_STATE_SLOTS)
    if masked:
        mask = mask.at[:, jnp.asarray(masked)].set(0.0)
    return gt, mask


@functools.partial(nnx.jit, static_argnames=("cfg", "spec", "plans"))
def _generate(net, latent, proprio, emb, x_init, *, cfg, spec, plans):
    gt, mask = condition(latent, proprio, cfg, spec)
    b, _, _, h, w = latent.shape
    padding = jnp.zeros((b, 1, 8 * h, 8 * w), jnp.float32)
    solver = [solver_plan(n, lo, hi, cfg.sampler_rho, cfg.sampler_solver) for n, lo, hi in plans]
    return sample_latent(net, gt, mask, emb, padding, x_init, cfg, plans=solver)


def generate(
    net: Any,
    latent: jax.Array,
    proprio: jax.Array | None,
    emb: jax.Array,
    cfg: PolicyConfig,
    spec: CallSpec,
    seeds: Sequence[int],
    steps: Sequence[int],
    *,
    variance_scale: bool = False,
) -> jax.Array:
    """Sample a batch: ``latent`` (B, C, T, H, W) gives the conditioning frames, sample i uses ``seeds[i]``
    for its noise and ``steps[i]`` denoising steps. ``proprio`` (B, P) is the normalised, bfloat16-rounded
    current proprio (None: nothing injected)."""
    plans = call_plans(seeds, steps, cfg, variance_scale)
    x_init = jnp.asarray(initial_noises(seeds, plans, tuple(latent.shape[1:])))
    return _generate(net, latent, proprio, emb, x_init, cfg=cfg, spec=spec, plans=plans)


def observation_video(images: dict[str, jax.Array], cfg: PolicyConfig) -> jax.Array:
    """(B, 3, T, H, W) uint8 video of a query: blank frame, cameras in their slots, and (as the reference)
    each future camera slot holding a copy of its current image as a placeholder."""
    layout, tc = cfg.layout, cfg.temporal_compression
    video = build_video(images, layout, tc)
    for slot in layout.current_image_slots:
        future = slot.replace("current_", "future_")
        if layout.has(future):
            src, dst = layout.pixel_frames(layout.index(slot), tc), layout.pixel_frames(layout.index(future), tc)
            video = video.at[:, :, dst.start : dst.stop].set(video[:, :, src.start : src.stop])
    return video


@functools.partial(nnx.jit, static_argnames=("cfg",))
def encode_observation(vae, images: dict[str, jax.Array], cfg: PolicyConfig) -> jax.Array:
    """The VAE latent (B, C, T, H, W) of the observation video (``observation_video``)."""
    return encode_video(vae, observation_video(images, cfg), cfg)


@functools.partial(nnx.jit, static_argnames=("cfg",))
def decode_images(vae, sample: jax.Array, clean_latent: jax.Array, cfg: PolicyConfig) -> dict[str, jax.Array]:
    """Future camera images of sampled latents (``policy.inference.decode_future_images`` under jit)."""
    return decode_future_images(vae, sample, clean_latent, cfg)


def frame_value(sample: jax.Array) -> np.ndarray:
    """Value of each sample read from the last latent frame: clamp((mean + 1) / 2, 0, 1), float32 (B,)."""
    m = np.asarray(jnp.mean(sample[:, :, -1], axis=(1, 2, 3)), np.float32)
    return np.clip((m + np.float32(1)) / np.float32(2), np.float32(0), np.float32(1))
