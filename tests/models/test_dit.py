"""Unit tests of the DiT: config, pure helpers, shapes, remat/scan equivalence, logical axes and sharding."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cosmos_policy import DEFAULT_LOGICAL_AXIS_RULES, get_config
from cosmos_policy_jax.models import layers
from cosmos_policy_jax.models.dit import (
    DiTConfig,
    MinimalV1LVGDiT,
    abstract_model,
    nearest_resize_indices,
    patchify,
    rope_angles,
    timestep_sinusoid,
    unpatchify,
)
from cosmos_policy_jax.parallel.mesh import make_mesh
from cosmos_policy_jax.parallel.rules import LOGICAL_AXES


def _tiny_cfg(**kw) -> DiTConfig:
    base = DiTConfig.from_config(get_config("tiny").model.net)
    return dataclasses.replace(base, **kw)


def _random_params(model: nnx.Module, seed: int = 1) -> None:
    """Give every parameter random values (the default init zeroes the AdaLN outputs, hiding bugs)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape, x.dtype) / math.sqrt(max(x.shape[-1], 1)) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


@nnx.jit(static_argnames=("data_type", "return_intermediates"))
def _run(model, *args, data_type="video", return_intermediates=False):
    # One compile per input signature; eager NNX calls dispatch hundreds of tiny ops.
    return model(*args, data_type=data_type, return_intermediates=return_intermediates)


def _inputs(cfg: DiTConfig, b=2, t=3, h=6, w=10, text=5, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(k[0], (b, cfg.in_channels, t, h, w))
    ts = jax.random.uniform(k[1], (b, t))
    text_emb = jax.random.normal(k[2], (b, text, cfg.crossattn_emb_channels))
    cond = (jax.random.uniform(k[3], (b, 1, t, 1, 1)) > 0.5).astype(jnp.float32) * jnp.ones((1, 1, 1, h, w))
    pad = (jax.random.uniform(k[4], (b, 1, 2 * h, 2 * w)) > 0.5).astype(jnp.float32)
    return x, ts, text_emb, cond, pad


# --- config -------------------------------------------------------------------------------------


def test_config_from_every_base_config():
    for arg in ("libero", "robocasa", "aloha", "demo", "tiny", "bench"):
        net = get_config(arg).model.net
        cfg = DiTConfig.from_config(net)
        assert {f.name for f in dataclasses.fields(cfg)} == set(net.to_dict()), arg
        hash(cfg)  # static argument of jitted functions


def test_config_rejects_unknown_and_unsupported_keys():
    net = get_config("tiny").model.net.to_dict()
    with pytest.raises(ValueError, match=r"model\.net\.modl_channels"):
        DiTConfig.from_config({**net, "modl_channels": 3})
    with pytest.raises(ValueError, match="extra_per_block_abs_pos_emb"):
        DiTConfig.from_config({**net, "extra_per_block_abs_pos_emb": True})
    with pytest.raises(ValueError, match=r"model\.net\.remat_policy"):
        DiTConfig.from_config({**net, "remat_policy": "sometimes"})
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig.from_config({**net, "num_heads": 3})
    # reference-only keys with the implemented values are accepted
    DiTConfig.from_config({**net, "pos_emb_cls": "rope3d", "atten_backend": "minimal_a2a", "use_adaln_lora": True})


# --- pure helpers ---------------------------------------------------------------------------------


def test_patchify_order_channel_t_row_col():
    b, c, t, h, w, pt, ps = 2, 3, 4, 6, 4, 2, 2
    x = np.random.default_rng(0).normal(size=(b, c, t, h, w)).astype(np.float32)
    got = np.asarray(patchify(jnp.asarray(x), pt, ps))
    assert got.shape == (b, t // pt, h // ps, w // ps, c * pt * ps * ps)
    for ti, hi, wi, ch, r, m, n in [(1, 2, 1, 2, 1, 1, 0), (0, 0, 0, 0, 0, 0, 1), (1, 1, 0, 1, 0, 1, 1)]:
        feat = ((ch * pt + r) * ps + m) * ps + n
        assert got[1, ti, hi, wi, feat] == x[1, ch, ti * pt + r, hi * ps + m, wi * ps + n]


def test_unpatchify_order_row_col_t_channel():
    b, t, h, w, pt, ps, c = 2, 3, 2, 5, 2, 2, 4
    y = np.random.default_rng(1).normal(size=(b, t, h, w, ps * ps * pt * c)).astype(np.float32)
    got = np.asarray(unpatchify(jnp.asarray(y), pt, ps, c))
    assert got.shape == (b, c, t * pt, h * ps, w * ps)
    for ti, hi, wi, p1, p2, r, ch in [(2, 1, 4, 1, 0, 1, 3), (0, 0, 0, 0, 1, 0, 2)]:
        feat = ((p1 * ps + p2) * pt + r) * c + ch
        assert got[0, ch, ti * pt + r, hi * ps + p1, wi * ps + p2] == y[0, ti, hi, wi, feat]


def test_nearest_resize_matches_torch_rule():
    np.testing.assert_array_equal(nearest_resize_indices(224, 28), np.arange(28) * 8)
    np.testing.assert_array_equal(nearest_resize_indices(16, 8), [0, 2, 4, 6, 8, 10, 12, 14])
    np.testing.assert_array_equal(nearest_resize_indices(5, 3), [0, 1, 3])  # floor(d*5/3): 0, 1.67, 3.33
    np.testing.assert_array_equal(nearest_resize_indices(3, 6), [0, 0, 1, 1, 2, 2])


def test_timestep_sinusoid_cos_first():
    t = jnp.array([[0.0, 0.3]])
    emb = np.asarray(timestep_sinusoid(t, 8))
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[0, 1], np.concatenate([np.cos(0.3 * freqs), np.sin(0.3 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0, 0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_rope_angles_general_head_dim():
    # head_dim 36 -> dim_h = dim_w = 12, dim_t = 12; ratios give NTK-scaled bases.
    cfg = DiTConfig(model_channels=72, num_heads=2, rope_h_extrapolation_ratio=3.0, rope_w_extrapolation_ratio=2.0)
    t, h, w = 2, 3, 5
    table = rope_angles(cfg, t, h, w)
    assert table.shape == (t * h * w, 36)
    ti, hi, wi = 1, 2, 3
    row = table[(ti * h + hi) * w + wi]

    def freqs(dim, ratio):
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        return theta ** (-np.arange(0, dim, 2) / dim)

    half = np.concatenate([ti * freqs(12, 1.0), hi * freqs(12, 3.0), wi * freqs(12, 2.0)])
    np.testing.assert_allclose(row, np.concatenate([half, half]), rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the RoPE tables"):
        rope_angles(cfg, 1, cfg.max_img_h, 1)


def test_rms_and_layer_norm_keep_dtype_and_use_fp32_stats():
    x = (jnp.arange(12.0).reshape(2, 6) * 37.0).astype(jnp.bfloat16)
    y = layers.rms_norm(x, jnp.ones(6), 1e-6)
    assert y.dtype == jnp.bfloat16
    x32 = np.asarray(x, np.float32)
    ref = x32 / np.sqrt((x32**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=8e-3)
    z = layers.layer_norm(x, 1e-6)
    ref = (x32 - x32.mean(-1, keepdims=True)) / np.sqrt(x32.var(-1, keepdims=True) + 1e-6)
    assert z.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(z, np.float32), ref, rtol=8e-3, atol=8e-3)


def test_attention_impl_resolution():
    assert layers.resolve_attention_impl("xla", jnp.bfloat16, 128) == "xla"
    assert layers.resolve_attention_impl("cudnn", jnp.float32, 128) == "cudnn"
    expect_auto = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert layers.resolve_attention_impl("auto", jnp.bfloat16, 128) == expect_auto
    assert layers.resolve_attention_impl("auto", jnp.float32, 128) == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        layers.resolve_attention_impl("flash", jnp.float32, 128)


# --- module ---------------------------------------------------------------------------------------


def test_initialisation_follows_reference():
    cfg = _tiny_cfg()
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    blocks = model.blocks
    assert np.all(np.asarray(blocks.adaln_modulation_mlp.linear_2.kernel[...]) == 0)
    assert np.all(np.asarray(model.final_layer.adaln_modulation.linear_2.kernel[...]) == 0)
    assert np.all(np.asarray(blocks.self_attn.q_norm.scale[...]) == 1)
    k = np.asarray(blocks.mlp.layer2.kernel[...])  # fan_in = mlp hidden
    std = cfg.mlp_hidden**-0.5
    assert np.abs(k).max() <= 3 * std + 1e-7
    assert abs(k.std() - std * 0.9866) < 0.05 * std  # variance of a normal truncated at 3 sigma
    # blocks are distinct (split rngs), not copies of one block
    q = np.asarray(blocks.self_attn.q_proj.kernel[...])
    assert q.shape[0] == cfg.num_blocks and not np.allclose(q[0], q[1])


def test_forward_shapes_video_and_image_non_square():
    cfg = _tiny_cfg()
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    _random_params(model)
    x, ts, text, cond, pad = _inputs(cfg)
    out, inter = _run(model, x, ts, text, cond, pad, return_intermediates=True)
    assert out.shape == (*x.shape[:1], cfg.out_channels, *x.shape[2:]) and out.dtype == jnp.float32
    b, _, t, h, w = x.shape
    assert inter["rope_emb"].shape == (t * (h // 2) * (w // 2), 1, 1, cfg.head_dim)
    assert inter["final_layer_out"].shape == (b, t, h // 2, w // 2, cfg.patch_out_features)
    assert {f"block{i}_out" for i in range(cfg.num_blocks)} <= set(inter)
    img = _run(model, x[:, :, :1], ts[:, :1], text, None, pad, data_type="image")
    assert img.shape == (b, cfg.out_channels, 1, h, w)
    # the condition mask and padding mask both influence the output
    assert not np.allclose(out, _run(model, x, ts, text, 1 - cond, pad, return_intermediates=True)[0])
    assert not np.allclose(out, _run(model, x, ts, text, cond, 1 - pad, return_intermediates=True)[0])


def test_bad_inputs_raise_clear_errors():
    cfg = _tiny_cfg()
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    x, ts, text, cond, pad = _inputs(cfg)
    with pytest.raises(ValueError, match="condition_video_input_mask"):
        model(x, ts, text, None, pad)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :3], ts, text, cond, pad)
    with pytest.raises(ValueError, match="crossattn_emb"):
        model(x, ts, text[..., :3], cond, pad)
    with pytest.raises(ValueError, match="data_type"):
        model(x, ts, text, cond, pad, data_type="audio")


def _loss_and_grads(cfg: DiTConfig, args) -> tuple[float, list]:
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    _random_params(model)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p)(*args)))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), jax.tree.leaves(grads)


@pytest.mark.parametrize(
    "policy",
    [
        "attention_saveable",  # the libero default
        "dots_saveable",
        pytest.param("full", marks=pytest.mark.slow),
        pytest.param("dots_with_no_batch_dims_saveable", marks=pytest.mark.slow),
    ],
)
def test_remat_and_scan_do_not_change_values_or_gradients(policy):
    cfg = _tiny_cfg(num_blocks=2)
    args = _inputs(cfg, t=2, h=4, w=4)
    ref_value, ref_grads = _loss_and_grads(dataclasses.replace(cfg, remat_policy="none", scan_layers=False), args)
    value, grads = _loss_and_grads(dataclasses.replace(cfg, remat_policy=policy, scan_layers=True), args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6 * float(np.abs(r).max()))


def test_bf16_compute_dtype_is_used():
    cfg = _tiny_cfg(dtype="bfloat16")
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    _random_params(model)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out, inter = _run(model, *_inputs(cfg), return_intermediates=True)
    assert out.dtype == jnp.float32
    assert inter["block0_out"].dtype == jnp.bfloat16
    assert inter["rope_emb"].dtype == jnp.float32


# --- logical axes and sharding --------------------------------------------------------------------


def _flat_params(state) -> dict:
    return {"/".join(map(str, path)): v for path, v in nnx.to_flat_state(state)}


def test_every_parameter_has_known_logical_axes():
    cfg = _tiny_cfg()
    abstract = nnx.eval_shape(lambda: MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0)))
    for name, var in _flat_params(nnx.state(abstract, nnx.Param)).items():
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == len(var.shape), f"{name}: axes {axes} for shape {var.shape}"
        assert all(a is None or a in LOGICAL_AXES for a in axes), f"{name}: unknown logical axis in {axes}"
        assert any(a is not None for a in axes), f"{name}: no logical name at all"
        if name.startswith("blocks/"):
            assert axes[0] == "layers", f"{name}: stacked block parameter without a leading 'layers' axis"


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_logical_axes_resolve_on_meshes(shape):
    c = get_config("tiny")
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = shape
    mesh = make_mesh(c.parallel)
    cfg = DiTConfig.from_config(c.model.net)
    _, abstract = abstract_model(cfg, mesh, DEFAULT_LOGICAL_AXIS_RULES)
    rules = dict(DEFAULT_LOGICAL_AXIS_RULES)
    for name, var in _flat_params(abstract).items():
        leaf = var.get_value()
        spec = leaf.sharding.spec
        logical = var.get_metadata()["out_sharding"]
        mesh_axes = [a for s in spec if s is not None for a in ((s,) if isinstance(s, str) else s)]
        assert len(mesh_axes) == len(set(mesh_axes)), f"{name}: mesh axis used twice in {spec}"
        for dim, (lname, s) in enumerate(zip(logical, tuple(spec) + (None,) * len(logical))):
            want = None if lname is None else rules[lname]
            assert s == want, f"{name} dim {dim}: logical {lname!r} -> {s!r}, rules say {want!r}"
        shard = leaf.sharding.shard_shape(leaf.shape)  # raises if a dim does not divide
        assert math.prod(shard) * mesh.devices.size >= math.prod(leaf.shape)


def _expected_logical(name: str, ndim: int) -> tuple:
    """Independent table of the intended layout (names per parameter role), for the 2B bytes test."""
    table = {
        "x_embedder/kernel": ("patch", "embed"),
        "t_embedder/linear_1/kernel": ("embed", None),
        "t_embedder/linear_2/kernel": (None, "modulation"),
        "t_embedding_norm/scale": ("norm",),
        "final_layer/linear/kernel": ("embed", None),
    }
    if name in table:
        return table[name]
    role = name.split("/", 1)[1] if name.startswith("blocks/") else name
    if role.startswith("final_layer/"):
        role = role[len("final_layer/") :]
    if role.endswith("linear_1/kernel"):
        axes = ("embed", "adaln_lora")
    elif role.endswith("linear_2/kernel"):
        axes = ("adaln_lora", "modulation")
    elif role.endswith(("q_norm/scale", "k_norm/scale")):
        axes = ("head_dim",)
    elif role.endswith("output_proj/kernel"):
        axes = ("heads", "embed")
    elif role.startswith("cross_attn/") and role.endswith(("k_proj/kernel", "v_proj/kernel")):
        axes = ("context", "heads")
    elif role.endswith("_proj/kernel"):
        axes = ("embed", "heads")
    elif role.endswith("layer1/kernel"):
        axes = ("embed", "mlp")
    elif role.endswith("layer2/kernel"):
        axes = ("mlp", "embed")
    else:
        raise AssertionError(f"unexpected parameter {name}")
    return (("layers",) if name.startswith("blocks/") else ()) + axes


def test_2b_abstract_init_count_and_per_device_bytes():
    c = get_config("libero")
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = 1, 8, 1
    mesh = make_mesh(c.parallel)
    cfg = DiTConfig.from_config(c.model.net)
    _, abstract = abstract_model(cfg, mesh, c.parallel.logical_axis_rules)
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract) if hasattr(x, "shape"))
    # Independent count from the architecture (REFERENCE 2.1/2.10).
    d, k, m, r, hd, p = 2048, 1024, 8192, 256, 128, 18 * 4
    per_block = 4 * d * d + 2 * d * d + 2 * k * d + 4 * hd + 2 * d * m + 3 * (d * r + r * 3 * d)
    expected = p * d + d * d + d * 3 * d + d + 28 * per_block + d * 64 + d * r + r * 2 * d
    assert n == expected
    assert abs(n - 1.956e9) / 1.956e9 < 1e-3
    # Per-device bytes: expected from the intended logical layout and the mesh sizes, vs what the
    # abstract shardings would allocate on each device.
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    rules = dict(c.parallel.logical_axis_rules)
    want_bytes = got_bytes = 0
    for name, var in _flat_params(abstract).items():
        leaf = var.get_value()
        shard = list(leaf.shape)
        for i, lname in enumerate(_expected_logical(name, len(leaf.shape))):
            target = None if lname is None else rules[lname]
            for ax in () if target is None else ((target,) if isinstance(target, str) else target):
                shard[i] //= sizes[ax]
        want_bytes += math.prod(shard) * 4
        got_bytes += math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        assert leaf.dtype == jnp.float32
    assert got_bytes == want_bytes
    # Only the small norm gains stay replicated: within 1% of a perfect 1/8 split.
    assert got_bytes < 4 * n / 8 * 1.01


def test_init_is_jitted_into_shardings_tiny():
    c = get_config("tiny")
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = 1, 2, 4
    mesh = make_mesh(c.parallel)
    rules = c.parallel.logical_axis_rules
    cfg = DiTConfig.from_config(c.model.net)
    _, abstract = abstract_model(cfg, mesh, rules)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)

    def init(key):
        with nnx.logical_axis_rules(rules):
            return nnx.state(MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(params=key)))

    with jax.set_mesh(mesh):
        compiled = jax.jit(init, out_shardings=shardings).lower(jax.random.key(0)).compile()
        state = compiled(jax.random.key(0))
    leaves = jax.tree.leaves(abstract)
    per_device = sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in leaves)
    total = sum(math.prod(a.shape) * a.dtype.itemsize for a in leaves)
    for got, want in zip(jax.tree.leaves(state), leaves):
        assert got.sharding == want.sharding
        assert got.addressable_shards[0].data.shape == want.sharding.shard_shape(want.shape)
    mem = compiled.memory_analysis()
    if mem is not None:  # per-device buffers of the compiled init: only shards, never the full model
        assert mem.output_size_in_bytes < per_device * 1.01
        assert mem.output_size_in_bytes + mem.temp_size_in_bytes < total
    assert not np.allclose(np.asarray(state["blocks"]["mlp"]["layer1"]["kernel"][...]), 0)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4), (8, 1, 1)])
def test_sharded_forward_matches_unsharded(shape):
    # One sample per data-parallel device with fsdp-sharded weights and tensor-sharded modulation:
    # the configuration in which XLA miscompiled a jnp.split of the AdaLN output (fixed in Block).
    from cosmos_policy_jax.parallel.rules import batch_sharding

    c = get_config("tiny")
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = shape
    mesh = make_mesh(c.parallel)
    cfg = DiTConfig.from_config(c.model.net)
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, abstract = abstract_model(cfg, mesh, c.parallel.logical_axis_rules)
    b = shape[0] * shape[1]
    rng = np.random.default_rng(0)
    args = (
        rng.standard_normal((b, 16, 9, 4, 4)).astype(np.float32),
        rng.uniform(size=(b, 9)).astype(np.float32),
        rng.standard_normal((b, 16, cfg.crossattn_emb_channels)).astype(np.float32),
        (rng.uniform(size=(b, 1, 9, 4, 4)) > 0.5).astype(np.float32),
        np.zeros((b, 1, 32, 32), np.float32),
    )
    fn = jax.jit(lambda p, *a: nnx.merge(graphdef, p, rest)(*a))
    ref = np.asarray(fn(params, *args))
    sharded = jax.device_put(params, jax.tree.map(lambda a: a.sharding, abstract))
    with jax.set_mesh(mesh):
        out = np.asarray(fn(sharded, *(jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in args)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
