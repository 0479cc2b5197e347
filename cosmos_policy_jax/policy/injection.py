"""Writing non-image modalities into latent frames, and reading them back.

A vector of n values per sample (a flattened action chunk or a proprio state) fills a (C, H, W) latent
frame by row-major tiling: flat position i of the frame holds element i mod n (tile ceil(F/n) times,
truncate to F = C*H*W). A scalar (the value) fills the whole frame. Frame indices are static ints.
"""

from __future__ import annotations

import jax.numpy as jnp


def tile_to_frame(values: jnp.ndarray, frame_shape: tuple[int, int, int]) -> jnp.ndarray:
    """(B, ...) values -> (B, C, H, W): flatten each sample row-major, tile ceil(F/n) times, truncate to F."""
    b = values.shape[0]
    flat = values.reshape(b, -1)
    n = flat.shape[1]
    f = frame_shape[0] * frame_shape[1] * frame_shape[2]
    if n > f:
        raise ValueError(f"cannot inject {n} values into a latent frame of {f} elements {tuple(frame_shape)}")
    reps = -(-f // n)
    return jnp.tile(flat, (1, reps))[:, :f].reshape(b, *frame_shape)


def inject_vector(latent: jnp.ndarray, values: jnp.ndarray, frame: int) -> jnp.ndarray:
    """Replace latent frame ``frame`` of (B, C, T, H, W) ``latent`` by the tiled ``values`` (B, ...)."""
    _, c, _, h, w = latent.shape
    tiled = tile_to_frame(values, (c, h, w)).astype(latent.dtype)
    return latent.at[:, :, frame].set(tiled)


def inject_scalar(latent: jnp.ndarray, value: jnp.ndarray, frame: int) -> jnp.ndarray:
    """Fill latent frame ``frame`` of every sample with its scalar ``value`` (B,)."""
    b, c, _, h, w = latent.shape
    filled = jnp.broadcast_to(jnp.reshape(value, (b, 1, 1, 1)).astype(latent.dtype), (b, c, h, w))
    return latent.at[:, :, frame].set(filled)


def extract_vector(latent: jnp.ndarray, frame: int, n: int) -> jnp.ndarray:
    """Inverse of ``inject_vector``: (B, n), the mean over the floor(F/n) complete tiled copies of the frame."""
    b, c, _, h, w = latent.shape
    f = c * h * w
    if n > f:
        raise ValueError(f"cannot read {n} values from a latent frame of {f} elements")
    copies = f // n
    flat = latent[:, :, frame].reshape(b, f)[:, : copies * n]
    return flat.reshape(b, copies, n).mean(axis=1)


def extract_scalar(latent: jnp.ndarray, frame: int) -> jnp.ndarray:
    """Mean of every element of latent frame ``frame``: (B,)."""
    return latent[:, :, frame].mean(axis=(1, 2, 3))
