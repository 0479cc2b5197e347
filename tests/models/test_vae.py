"""Wan2.1 VAE module tests: convolution semantics, config, structure, causality, sharding, shapes.

Numerical parity with the reference lives in tests/parity/test_vae_parity.py; these tests check
properties that hold for any weights (random init here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from configs import cosmos_policy
from cosmos_policy_jax.models import vae as V
from cosmos_policy_jax.parallel.rules import LOGICAL_AXES, MESH_AXES, batch_sharding, logical_to_mesh_spec

TINY = dict(dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temperal_downsample=(False, True, True))


def _model(seed: int = 0, **overrides) -> V.WanVAE:
    cfg = V.WanVAEConfig(**{**TINY, "dtype": "float32", **overrides})
    return V.WanVAE(cfg, rngs=nnx.Rngs(seed))


def _video(shape, seed: int = 1) -> jax.Array:
    # numpy, not jax.random: a threefry draw compiles for seconds per new shape on CPU.
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Convolution semantics against a direct numpy loop


def _naive_causal_conv(x: np.ndarray, k: np.ndarray, pad_front: int, stride_t: int) -> np.ndarray:
    """out[b,t,i,j,o] = sum x_pad[b, t*s + a, i + c, j + d, :] @ k[a, c, d], zeros outside."""
    kt, kh, kw = k.shape[:3]
    xp = np.pad(x, ((0, 0), (pad_front, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    b, tp, hp, wp, _ = xp.shape
    t_out = (tp - kt) // stride_t + 1
    h, w = hp - kh + 1, wp - kw + 1
    out = np.zeros((b, t_out, h, w, k.shape[-1]), np.float64)
    for t in range(t_out):
        for a in range(kt):
            for c in range(kh):
                for d in range(kw):
                    out[:, t] += xp[:, t * stride_t + a, c : c + h, d : d + w, :] @ k[a, c, d]
    return out


@pytest.mark.parametrize("impl", ["conv3d", "taps"])
@pytest.mark.parametrize(
    "kernel,pad_front,stride_t",
    [((3, 3, 3), 2, 1), ((3, 1, 1), 2, 1), ((3, 1, 1), 0, 2), ((1, 1, 1), 0, 1), ((1, 3, 3), 0, 1)],
)
def test_causal_conv3d_matches_direct_sum(impl, kernel, pad_front, stride_t):
    rng = np.random.default_rng(0)
    t = 7 if stride_t == 2 else 5
    x = rng.standard_normal((2, t, 6, 5, 4)).astype(np.float32)
    k = rng.standard_normal((*kernel, 4, 3)).astype(np.float32)
    got = np.asarray(V.causal_conv3d(jnp.asarray(x), jnp.asarray(k), pad_front=pad_front, stride_t=stride_t, impl=impl))
    want = _naive_causal_conv(x.astype(np.float64), k.astype(np.float64), pad_front, stride_t)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norm_is_l2_normalisation_times_sqrt_c():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    x[0, 0] = 0.0  # the norm is clamped, so an all-zero vector stays zero instead of NaN
    g = rng.standard_normal(7).astype(np.float32)
    got = np.asarray(V.rms_norm_channels(jnp.asarray(x), jnp.asarray(g)))
    norm = np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(got, x / norm * np.sqrt(7) * g, rtol=1e-5, atol=1e-6)
    assert np.all(got[0, 0] == 0)


def test_conv_impl_auto_resolution(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_onednn_custom_call=true")
    assert V.resolve_conv_impl("auto") == "conv3d"
    monkeypatch.setenv("XLA_FLAGS", "")
    assert V.resolve_conv_impl("auto") == ("taps" if jax.default_backend() == "cpu" else "conv3d")
    assert V.resolve_conv_impl("taps") == "taps"


# ---------------------------------------------------------------------------------------------
# Config


def test_frame_counts_round_trip():
    for n_latent in range(1, 12):
        assert V.latent_num_frames(1 + 4 * (n_latent - 1)) == n_latent
    assert V.latent_num_frames(33) == 9  # LIBERO's 9 latent frames
    assert V.latent_num_frames(1) == 1


def test_config_from_project_config():
    tok = cosmos_policy.get_config("libero").model.tokenizer
    cfg = V.WanVAEConfig.from_config(tok)
    assert (cfg.dim, cfg.z_dim, cfg.num_res_blocks) == (tok.dim, tok.z_dim, tok.num_res_blocks)
    assert cfg.dim_mult == tuple(tok.dim_mult) and cfg.temperal_downsample == tuple(tok.temperal_downsample)
    assert cfg.dtype == tok.dtype
    assert cfg.spatial_factor == tok.spatial_compression and cfg.temporal_factor == tok.temporal_compression
    # A fixture-style dict with keys that do not affect the math is accepted too.
    d = {**TINY, "attn_scales": [], "dropout": 0.0, "temporal_window": 4, "load_path": "x"}
    assert V.WanVAEConfig.from_config(d).dim == 8


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"temperal_downsample": (True,)}, "temperal_downsample"),
        ({"dtype": "float64"}, "dtype"),
        ({"conv_impl": "fft"}, "conv_impl"),
        ({"dim": 0}, "dim"),
        ({"attn_scales": [1.0]}, "attn_scales"),
        ({"batch_steps": 0}, "batch_steps"),
    ],
)
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        V.WanVAEConfig.from_config({**TINY, **overrides})


# ---------------------------------------------------------------------------------------------
# Structure (no compute)


def test_parameters_carry_known_logical_axes_and_are_replicated_by_default():
    model = V.abstract_vae(V.WanVAEConfig(**TINY))
    rules = tuple(cosmos_policy.get_config("libero").parallel.logical_axis_rules)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param)).to_pure_dict()
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    shapes = V.param_shapes(V.WanVAEConfig(**TINY))
    assert len(leaves) == len(shapes) > 0
    for spec in leaves:
        assert all(name in LOGICAL_AXES for name in spec), spec
        assert all(s is None for s in logical_to_mesh_spec(tuple(spec), rules)), spec
    for path, shape in shapes.items():
        assert all(d > 0 for d in shape), path


def test_layouts_follow_the_general_rule():
    cfg = V.WanVAEConfig(dim=4, dim_mult=(1, 3, 2), num_res_blocks=3, temperal_downsample=(True, False))
    enc = V.encoder_layout(cfg)
    dec = V.decoder_layout(cfg)
    assert [k for k, _, _ in enc].count("res") == 3 * 3
    assert [k for k, _, _ in enc if k != "res"] == ["downsample3d", "downsample2d"]
    assert [k for k, _, _ in dec].count("res") == 4 * 3
    assert [k for k, _, _ in dec if k != "res"] == ["upsample2d", "upsample3d"]
    # Channels chain: each block's input is the previous block's output (resamples halve in the decoder).
    for layout, halve in ((enc, False), (dec, True)):
        c = layout[0][1]
        for kind, c_in, c_out in layout:
            assert c_in == c, (kind, c_in, c)
            c = c_out // 2 if (halve and kind != "res") else c_out


# ---------------------------------------------------------------------------------------------
# Forward


def test_encode_decode_shapes_and_dtypes():
    model = _model()
    video = _video((2, 3, 9, 16, 24))
    z = model.encode(video)
    assert z.shape == (2, 16, V.latent_num_frames(9), 2, 3) and z.dtype == jnp.float32
    mu = model.encode_mean(video)
    mean = np.asarray(V.LATENT_MEAN, np.float32)[None, :, None, None, None]
    inv = (1.0 / np.asarray(V.LATENT_STD, np.float32))[None, :, None, None, None]
    np.testing.assert_allclose(np.asarray(z), (np.asarray(mu) - mean) * inv, rtol=1e-6, atol=1e-6)
    x = model.decode(z)
    assert x.shape == (2, 3, 1 + 4 * (z.shape[2] - 1), 16, 24) and x.dtype == jnp.float32
    assert model.decode(z[:, :, :1]).shape == (2, 3, 1, 16, 24)


def test_other_layout_runs():
    """Another config (3 levels, temporal downsample first, 1 block) gives its own factors."""
    model = _model(dim=4, dim_mult=(1, 2, 2), temperal_downsample=(True, False), num_res_blocks=2)
    assert model.cfg.temporal_factor == 2 and model.cfg.spatial_factor == 4
    z = model.encode(_video((1, 3, 5, 8, 8)))
    assert z.shape == (1, 16, 3, 2, 2)
    assert model.decode(z).shape == (1, 3, 5, 8, 8)


def test_encode_is_causal_and_prefix_consistent():
    """Latent j depends on pixel frames <= 4j only; encoding a prefix gives the prefix latents."""
    model = _model()
    video = _video((1, 3, 9, 16, 16))
    full = np.asarray(model.encode(video))
    changed = video.at[:, :, 5:].set(_video((1, 3, 4, 16, 16), seed=7))
    other = np.asarray(model.encode(changed))
    np.testing.assert_allclose(other[:, :, :2], full[:, :, :2], rtol=0, atol=1e-6)
    assert np.abs(other[:, :, 2] - full[:, :, 2]).max() > 1e-3
    prefix = np.asarray(model.encode(video[:, :, :5]))
    np.testing.assert_allclose(prefix, full[:, :, :2], rtol=0, atol=1e-5)
    first = np.asarray(model.encode(video[:, :, :1]))
    np.testing.assert_allclose(first, full[:, :, :1], rtol=0, atol=1e-5)


def test_decode_is_causal():
    model = _model()
    z = jnp.asarray(np.random.default_rng(3).standard_normal((1, 16, 3, 2, 2)).astype(np.float32))
    full = np.asarray(model.decode(z))
    prefix = np.asarray(model.decode(z[:, :, :2]))
    np.testing.assert_allclose(prefix, full[:, :, : prefix.shape[2]], rtol=0, atol=1e-5)
    changed = np.asarray(model.decode(z.at[:, :, 2].add(1.0)))
    np.testing.assert_allclose(changed[:, :, :5], full[:, :, :5], rtol=0, atol=1e-6)
    assert np.abs(changed[:, :, 5:] - full[:, :, 5:]).max() > 1e-3


def test_bad_inputs_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="T=8"):
        model.encode(_video((1, 3, 8, 16, 16)))
    with pytest.raises(ValueError, match="H=12"):
        model.encode(_video((1, 3, 5, 12, 16)))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model.encode(_video((1, 4, 5, 16, 16)))
    with pytest.raises(ValueError, match="uint8"):
        model.encode(jnp.zeros((1, 3, 5, 16, 16), jnp.uint8))
    with pytest.raises(ValueError, match="latent"):
        model.decode(jnp.zeros((1, 8, 2, 2, 2)))


@pytest.mark.parametrize("mesh_shape,batch,steps", [((8, 1, 1), 8, 1), ((2, 2, 2), 8, 2)])
def test_jit_with_sharded_batch_equals_unsharded(mesh_shape, batch, steps):
    """Batch over (data, fsdp), params replicated; ``batch_steps`` passes keep the batch sharded."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    model = _model(batch_steps=steps)
    video = _video((batch, 3, 5, 16, 16))
    want = np.asarray(_model().encode(video))
    mesh = jax.make_mesh(mesh_shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    sharded = jax.device_put(video, batch_sharding(mesh, 5))
    encode = jax.jit(lambda s, v: jax.lax.stop_gradient(nnx.merge(graphdef, s).encode(v)))
    got = encode(state, sharded)
    assert got.sharding.is_equivalent_to(batch_sharding(mesh, 5), 5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_batch_steps_that_do_not_divide_the_batch_give_the_same_latents():
    # 4 samples with batch_steps=3 run as 2 passes (the largest divisor <= 3); 5 samples as 1.
    for batch in (4, 5):
        video = _video((batch, 3, 1, 16, 16))
        np.testing.assert_allclose(
            np.asarray(_model(batch_steps=3).encode(video)), np.asarray(_model().encode(video)), rtol=1e-5, atol=1e-6
        )


def test_production_width_encode_compiles_and_runs():
    """dim=96 (production) on a 33-frame clip at small spatial size; the benchmark does 224 px."""
    cfg = V.WanVAEConfig(dtype="float32")
    model = V.WanVAE(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    z = jax.jit(lambda s, v: nnx.merge(graphdef, s).encode(v))(state, _video((1, 3, 33, 16, 16)))
    assert z.shape == (1, cfg.z_dim, V.latent_num_frames(33), 2, 2)
    assert np.all(np.isfinite(np.asarray(z)))
