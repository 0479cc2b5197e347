"""Injection of vectors/scalars into latent frames and the de-tiling decoder."""

import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_policy_jax.policy import injection


@pytest.mark.parametrize("n,frame", [(112, (16, 28, 28)), (9, (16, 28, 28)), (9, (16, 4, 4)), (700, (16, 8, 8))])
def test_tile_semantics(n, frame):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(2, n)).astype(np.float32)
    out = np.asarray(injection.tile_to_frame(jnp.asarray(vals), frame))
    flat = out.reshape(2, -1)
    # Flat position i (row-major over C, H, W) holds element i mod n.
    idx = np.arange(flat.shape[1]) % n
    np.testing.assert_array_equal(flat, vals[:, idx])


def test_action_chunk_flattens_row_major():
    chunk = np.arange(2 * 16 * 7, dtype=np.float32).reshape(2, 16, 7)
    out = np.asarray(injection.tile_to_frame(jnp.asarray(chunk), (16, 4, 4))).reshape(2, -1)
    np.testing.assert_array_equal(out[:, :112], chunk.reshape(2, 112))
    np.testing.assert_array_equal(out[:, 112:224], chunk.reshape(2, 112))
    np.testing.assert_array_equal(out[:, 224:], chunk.reshape(2, 112)[:, :32])
    assert out[1, 7] == chunk[1, 1, 0]


def test_inject_replaces_only_the_frame():
    rng = np.random.default_rng(1)
    lat = jnp.asarray(rng.normal(size=(3, 16, 9, 4, 4)).astype(np.float32))
    vals = jnp.asarray(rng.normal(size=(3, 9)).astype(np.float32))
    out = np.asarray(injection.inject_vector(lat, vals, 5))
    keep = [k for k in range(9) if k != 5]
    np.testing.assert_array_equal(out[:, :, keep], np.asarray(lat)[:, :, keep])
    np.testing.assert_allclose(
        np.asarray(injection.extract_vector(jnp.asarray(out), 5, 9)), np.asarray(vals), rtol=1e-6
    )
    v = jnp.asarray([0.25, -1.0, 0.5])
    out = np.asarray(injection.inject_scalar(lat, v, 8))
    np.testing.assert_array_equal(out[:, :, 8], np.broadcast_to(np.asarray(v)[:, None, None, None], (3, 16, 4, 4)))
    np.testing.assert_allclose(np.asarray(injection.extract_scalar(jnp.asarray(out), 8)), np.asarray(v))


def test_extract_averages_complete_copies_only():
    # F = 256, n = 100: two complete copies; the partial third copy must be ignored.
    lat = np.zeros((1, 16, 3, 4, 4), np.float32)
    flat = np.zeros(256, np.float32)
    flat[:100], flat[100:200], flat[200:] = 1.0, 3.0, 1000.0
    lat[0, :, 1] = flat.reshape(16, 4, 4)
    np.testing.assert_allclose(np.asarray(injection.extract_vector(jnp.asarray(lat), 1, 100)), 2.0)


def test_too_many_values():
    with pytest.raises(ValueError, match="cannot inject 300"):
        injection.tile_to_frame(jnp.zeros((1, 300)), (16, 4, 4))
