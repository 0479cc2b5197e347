"""Cosmos-Predict2 ``MinimalV1LVGDiT`` in Flax NNX.

Public layouts follow the reference: ``x`` (B, C, T, H, W), per-frame timesteps (B, T), text
(B, L, D); inside, tokens are channels-last (B, T', H', W', D) and flattened t-major for attention.

The ``num_blocks`` transformer blocks are created stacked (one parameter tree with a leading
``layers`` axis, ``nnx.vmap``) and run with ``nnx.scan`` (or a Python loop over slices when
``scan_layers`` is off), each block wrapped in ``nnx.remat`` with the configured policy. The
parameter layout is the same either way, so checkpoints and the weight converter do not depend
on ``scan_layers``.

Precision (REFERENCE 2.7/2.8/12): with ``dtype=bfloat16`` inputs and timesteps are rounded to bf16,
the sinusoid and RoPE angles are computed in float32, norms use float32 statistics, matmuls,
modulation, gating and residual adds run in bf16, and the output is returned in float32. With
``dtype=float32`` every op is float32 (the parity setting).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from cosmos_policy_jax.models import layers

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# ``model.net.remat_policy`` values ("none": no remat, "full": save nothing); see ``remat_policy``.
REMAT_POLICIES = ("none", "full", "attention_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")

# Constructor arguments of the reference network that this port does not need. Each maps to a
# predicate telling whether the value is one we implement (anything else is refused by name).
_REFERENCE_ONLY_KEYS: dict[str, Any] = {
    "atten_backend": lambda v: True,  # numerics identical; backend chosen by attention_impl
    "pos_emb_cls": lambda v: v == "rope3d",
    "pos_emb_learnable": lambda v: True,  # ignored by the RoPE class
    "pos_emb_interpolation": lambda v: v == "crop",
    "use_adaln_lora": lambda v: bool(v),
    "extra_per_block_abs_pos_emb": lambda v: not v,
    "rope_enable_fps_modulation": lambda v: not v,
    "sac_config": lambda v: True,  # memory only; see remat_policy
    "use_crossattn_projection": lambda v: not v,
    "extra_image_context_dim": lambda v: v is None,
    "n_dense_blocks": lambda v: v == -1,
    "use_wan_fp32_strategy": lambda v: not v,
    "min_fps": lambda v: True,
    "max_fps": lambda v: True,
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Every field of ``config.model.net`` (reference constructor names plus the JAX execution choices)."""

    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    in_channels: int = 16  # latent channels; the condition-mask (+1) and padding-mask (+1) channels are added
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    concat_padding_mask: bool = True
    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    crossattn_emb_channels: int = 1024
    adaln_lora_dim: int = 256
    rope_h_extrapolation_ratio: float = 1.0
    rope_w_extrapolation_ratio: float = 1.0
    rope_t_extrapolation_ratio: float = 1.0
    timestep_scale: float = 1.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = True

    def __post_init__(self):
        def bad(name: str, why: str):
            raise ValueError(f"model.net.{name}={getattr(self, name)!r}: {why}")

        for name in ("model_channels", "num_blocks", "num_heads", "in_channels", "out_channels", "adaln_lora_dim"):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be positive")
        if self.model_channels % self.num_heads:
            bad("model_channels", f"must be divisible by num_heads={self.num_heads}")
        if self.head_dim < 12 or self.head_dim % 2:
            bad("num_heads", f"head dim {self.head_dim} must be even and >= 12 for the 3D RoPE split")
        if self.dtype not in _DTYPES:
            bad("dtype", f"choose one of {sorted(_DTYPES)}")
        if self.param_dtype not in _DTYPES:
            bad("param_dtype", f"choose one of {sorted(_DTYPES)}")
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            bad("attention_impl", "choose auto, xla or cudnn")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"choose one of {', '.join(REMAT_POLICIES)}")
        if self.patch_spatial <= 0 or self.patch_temporal <= 0:
            bad("patch_spatial", "patch sizes must be positive")

    @classmethod
    def from_config(cls, net_cfg, **overrides) -> DiTConfig:
        """From the ml_collections ``model.net`` section or a dict (e.g. a fixture's ``info["config"]``).

        Reference-only constructor keys are accepted when their value is the one this port
        implements; unknown keys raise ``ValueError`` naming the key.
        """
        if hasattr(net_cfg, "to_dict"):
            net_cfg = net_cfg.to_dict()
        if not isinstance(net_cfg, Mapping):
            raise TypeError(f"model.net must be a mapping or ConfigDict, got {type(net_cfg).__name__}")
        values = {**dict(net_cfg), **overrides}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in fields:
                kwargs[key] = value
            elif key in _REFERENCE_ONLY_KEYS:
                if not _REFERENCE_ONLY_KEYS[key](value):
                    raise ValueError(f"model.net.{key}={value!r} is not supported by this port")
            else:
                raise ValueError(f"model.net.{key}: unknown DiT config key (known: {', '.join(sorted(fields))})")
        for name, f in fields.items():
            if name in kwargs and f.type in ("int", int):
                kwargs[name] = int(kwargs[name])
            elif name in kwargs and f.type in ("float", float):
                kwargs[name] = float(kwargs[name])
            elif name in kwargs and f.type in ("bool", bool):
                kwargs[name] = bool(kwargs[name])
        return cls(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.model_channels * self.mlp_ratio)

    @property
    def patch_in_features(self) -> int:
        """Patch-embed input width: (latent + condition mask + padding mask) x patch volume."""
        channels = self.in_channels + 1 + (1 if self.concat_padding_mask else 0)
        return channels * self.patch_temporal * self.patch_spatial**2

    @property
    def patch_out_features(self) -> int:
        return self.out_channels * self.patch_temporal * self.patch_spatial**2

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]


# ----------------------------------------------------------------------------------------------
# Pure helpers


def timestep_sinusoid(t: jax.Array, dim: int) -> jax.Array:
    """``[cos(t*f), sin(t*f)]`` with ``f_k = exp(-ln(10000) k / (dim/2))``, float32, shape (*t.shape, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) split of the head dim used by the 3D RoPE."""
    dim_h = (head_dim // 6) * 2
    return head_dim - 2 * dim_h, dim_h, dim_h


def rope_angles(cfg: DiTConfig, t: int, h: int, w: int) -> np.ndarray:
    """RoPE angle table (t*h*w, head_dim), float32, tokens t-major then h then w.

    Each row is ``[t*w_t, h*w_h, w*w_w]`` repeated twice; ``w_x = theta_x^(-2k/dim_x)`` with
    ``theta_x = 10000 * ratio_x^(dim_x/(dim_x-2))`` (NTK scaling). Computed with numpy at trace time.
    """
    len_h, len_w = cfg.max_img_h // cfg.patch_spatial, cfg.max_img_w // cfg.patch_spatial
    len_t = cfg.max_frames // cfg.patch_temporal
    if h > len_h or w > len_w or t > len_t:
        raise ValueError(
            f"token grid (t={t}, h={h}, w={w}) exceeds the RoPE tables (max_frames/max_img_h/max_img_w give {len_t}, {len_h}, {len_w})"
        )
    dim_t, dim_h, dim_w = rope_dims(cfg.head_dim)

    def freqs(dim: int, ratio: float) -> np.ndarray:
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        exponent = (np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / np.float32(dim)).astype(np.float32)
        return (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)

    ft = np.outer(np.arange(t, dtype=np.float32), freqs(dim_t, cfg.rope_t_extrapolation_ratio))
    fh = np.outer(np.arange(h, dtype=np.float32), freqs(dim_h, cfg.rope_h_extrapolation_ratio))
    fw = np.outer(np.arange(w, dtype=np.float32), freqs(dim_w, cfg.rope_w_extrapolation_ratio))
    grid = np.concatenate(
        [
            np.broadcast_to(ft[:, None, None, :], (t, h, w, ft.shape[-1])),
            np.broadcast_to(fh[None, :, None, :], (t, h, w, fh.shape[-1])),
            np.broadcast_to(fw[None, None, :, :], (t, h, w, fw.shape[-1])),
        ],
        axis=-1,
    )
    grid = np.concatenate([grid, grid], axis=-1)
    return grid.reshape(t * h * w, cfg.head_dim).astype(np.float32)


def nearest_resize_indices(in_size: int, out_size: int) -> np.ndarray:
    """PyTorch ``mode="nearest"`` source indices: ``floor(dst * (in/out))`` with a float32 scale."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_padding_mask(mask_B_1_H_W: jax.Array, h: int, w: int) -> jax.Array:
    """Nearest-neighbour resize of the padding mask to the latent size (PyTorch ``nearest``, not ``-exact``)."""
    rows = nearest_resize_indices(mask_B_1_H_W.shape[-2], h)
    cols = nearest_resize_indices(mask_B_1_H_W.shape[-1], w)
    return mask_B_1_H_W[..., rows, :][..., cols]


def patchify(x_B_C_T_H_W: jax.Array, pt: int, ps: int) -> jax.Array:
    """(B, C, T, H, W) -> (B, T/pt, H/ps, W/ps, C*pt*ps*ps), features ordered (channel, t, ph, pw)."""
    b, c, t, h, w = x_B_C_T_H_W.shape
    x = x_B_C_T_H_W.reshape(b, c, t // pt, pt, h // ps, ps, w // ps, ps)
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, t // pt, h // ps, w // ps, c * pt * ps * ps)


def unpatchify(x_B_T_H_W_M: jax.Array, pt: int, ps: int, channels: int) -> jax.Array:
    """(B, T, H, W, ps*ps*pt*C) with features ordered (ph, pw, t, C) -> (B, C, T*pt, H*ps, W*ps)."""
    b, t, h, w, _ = x_B_T_H_W_M.shape
    x = x_B_T_H_W_M.reshape(b, t, h, w, ps, ps, pt, channels)
    x = x.transpose(0, 7, 1, 6, 2, 4, 3, 5)
    return x.reshape(b, channels, t * pt, h * ps, w * ps)


def remat_policy(name: str):
    """``jax.checkpoint`` policy for ``model.net.remat_policy`` (None: save nothing; "none" is handled by the caller)."""
    if name == "full":
        return None
    if name == "attention_saveable":
        return jax.checkpoint_policies.save_only_these_names("attention_out")
    if name == "dots_saveable":
        return jax.checkpoint_policies.dots_saveable
    if name == "dots_with_no_batch_dims_saveable":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"model.net.remat_policy={name!r} has no checkpoint policy")


# ----------------------------------------------------------------------------------------------
# Modules


class AdaLNModulation(nnx.Module):
    """``SiLU -> Linear(D, rank) -> Linear(rank, n*D)``; the second linear starts at zero (REFERENCE 2.9)."""

    def __init__(self, cfg: DiTConfig, n_chunks: int, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        d = cfg.model_channels
        self.linear_1 = layers.Dense(d, cfg.adaln_lora_dim, ("embed", "adaln_lora"), **kw)
        self.linear_2 = layers.Dense(
            cfg.adaln_lora_dim, n_chunks * d, ("adaln_lora", "modulation"), zero_init=True, **kw
        )

    def __call__(self, emb_B_T_D: jax.Array) -> jax.Array:
        return self.linear_2(self.linear_1(jax.nn.silu(emb_B_T_D)))


class Attention(nnx.Module):
    """Multi-head attention with per-head q/k RMSNorm; self-attention (with RoPE) or cross-attention."""

    def __init__(self, cfg: DiTConfig, context_dim: int | None, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        d = cfg.model_channels
        self.is_self_attn = context_dim is None
        kv_in = d if context_dim is None else context_dim
        kv_axes = ("embed", "heads") if context_dim is None else ("context", "heads")
        self.q_proj = layers.Dense(d, d, ("embed", "heads"), **kw)
        self.k_proj = layers.Dense(kv_in, d, kv_axes, **kw)
        self.v_proj = layers.Dense(kv_in, d, kv_axes, **kw)
        self.output_proj = layers.Dense(d, d, ("heads", "embed"), **kw)
        norm_kw = dict(eps=1e-6, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        self.q_norm = layers.RMSNorm(cfg.head_dim, ("head_dim",), **norm_kw)
        self.k_norm = layers.RMSNorm(cfg.head_dim, ("head_dim",), **norm_kw)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.implementation = layers.resolve_attention_impl(cfg.attention_impl, cfg.compute_dtype, cfg.head_dim)

    def __call__(self, x_B_L_D: jax.Array, context_B_M_C: jax.Array | None = None, rope=None) -> jax.Array:
        context = x_B_L_D if context_B_M_C is None else context_B_M_C
        b, length, _ = x_B_L_D.shape
        q = self.q_proj(x_B_L_D).reshape(b, length, self.num_heads, self.head_dim)
        k = self.k_proj(context).reshape(b, context.shape[1], self.num_heads, self.head_dim)
        v = self.v_proj(context).reshape(b, context.shape[1], self.num_heads, self.head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.is_self_attn and rope is not None:
            cos, sin = rope
            q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        # Named for the "attention_saveable" remat policy: the backward pass then recomputes the
        # projections and the MLP but not the attention itself (what the reference's selective
        # checkpointing keeps).
        out = checkpoint_name(layers.attention(q, k, v, self.implementation), "attention_out")
        return self.output_proj(out.reshape(b, length, self.num_heads * self.head_dim))


class MLP(nnx.Module):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        self.layer1 = layers.Dense(cfg.model_channels, cfg.mlp_hidden, ("embed", "mlp"), **kw)
        self.layer2 = layers.Dense(cfg.mlp_hidden, cfg.model_channels, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer2(jax.nn.gelu(self.layer1(x), approximate=False))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return layers.layer_norm(x, 1e-6) * (1 + scale) + shift


def _per_frame(v_B_T_D: jax.Array) -> jax.Array:
    return v_B_T_D[:, :, None, None, :]


class Block(nnx.Module):
    """Self-attention (RoPE) -> cross-attention (text, no mask) -> GELU MLP, each AdaLN-modulated and gated."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.self_attn = Attention(cfg, None, rngs=rngs)
        self.cross_attn = Attention(cfg, cfg.crossattn_emb_channels, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.adaln_modulation_self_attn = AdaLNModulation(cfg, 3, rngs=rngs)
        self.adaln_modulation_cross_attn = AdaLNModulation(cfg, 3, rngs=rngs)
        self.adaln_modulation_mlp = AdaLNModulation(cfg, 3, rngs=rngs)

    def __call__(
        self,
        x_B_T_H_W_D: jax.Array,
        emb_B_T_D: jax.Array,
        context_B_M_C: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        adaln_lora_B_T_3D: jax.Array,
    ) -> jax.Array:
        dtype = x_B_T_H_W_D.dtype
        mods = []
        for branch in (self.adaln_modulation_self_attn, self.adaln_modulation_cross_attn, self.adaln_modulation_mlp):
            m = (branch(emb_B_T_D) + adaln_lora_B_T_3D).astype(dtype)
            # reshape + index instead of jnp.split: with the modulation axis sharded over `tensor`, XLA's
            # SPMD partitioner (jax 0.12) miscompiled the uneven split on a (2,2,2) mesh with one sample
            # per device (tests/models/test_dit.py::test_sharded_forward_matches_unsharded).
            m = m.reshape(*m.shape[:-1], 3, -1)
            mods.append([_per_frame(m[..., i, :]) for i in range(3)])
        (sh1, sc1, g1), (sh2, sc2, g2), (sh3, sc3, g3) = mods
        b, t, h, w, d = x_B_T_H_W_D.shape

        def tokens(y):
            return y.reshape(b, t * h * w, d)

        def grid(y):
            return y.reshape(b, t, h, w, d)

        x = layers.constrain_batch(x_B_T_H_W_D)
        x = x + g1 * grid(self.self_attn(tokens(_modulate(x, sh1, sc1)), None, rope))
        x = x + g2 * grid(self.cross_attn(tokens(_modulate(x, sh2, sc2)), context_B_M_C))
        x = x + g3 * self.mlp(_modulate(x, sh3, sc3))
        return layers.constrain_batch(x)


class TimestepEmbedding(nnx.Module):
    """``linear_1 -> SiLU -> linear_2`` on the sinusoid; with AdaLN-LoRA the output is the shared 3D term."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        d = cfg.model_channels
        # (embed, None): one mesh axis may not shard both dims of a square matrix.
        self.linear_1 = layers.Dense(d, d, ("embed", None), **kw)
        # Input dim unsharded: `modulation` already uses fsdp (one mesh axis per array).
        self.linear_2 = layers.Dense(d, 3 * d, (None, "modulation"), **kw)

    def __call__(self, sinusoid_B_T_D: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(sinusoid_B_T_D)))


class FinalLayer(nnx.Module):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        self.linear = layers.Dense(cfg.model_channels, cfg.patch_out_features, ("embed", None), **kw)
        self.adaln_modulation = AdaLNModulation(cfg, 2, rngs=rngs)
        self.model_channels = cfg.model_channels

    def __call__(self, x_B_T_H_W_D: jax.Array, emb_B_T_D: jax.Array, adaln_lora_B_T_3D: jax.Array) -> jax.Array:
        d = self.model_channels
        # Chunks via reshape + index, not slicing/jnp.split of the 3D axis: XLA's SPMD partitioner
        # (jax 0.12) miscompiles those slices when the axis is sharded over `tensor` (see Block).
        lora = adaln_lora_B_T_3D.reshape(*adaln_lora_B_T_3D.shape[:-1], 3, d)
        m = self.adaln_modulation(emb_B_T_D)
        m = (m.reshape(*m.shape[:-1], 2, d) + lora[..., :2, :]).astype(x_B_T_H_W_D.dtype)
        shift, scale = _per_frame(m[..., 0, :]), _per_frame(m[..., 1, :])
        return self.linear(_modulate(x_B_T_H_W_D, shift, scale))


class MinimalV1LVGDiT(nnx.Module):
    """The Cosmos-Predict2 video DiT with the extra condition-mask input channel."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        self.x_embedder = layers.Dense(cfg.patch_in_features, cfg.model_channels, ("patch", "embed"), **kw)
        self.t_embedder = TimestepEmbedding(cfg, rngs=rngs)
        self.t_embedding_norm = layers.RMSNorm(
            cfg.model_channels, ("norm",), eps=1e-6, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype
        )

        @nnx.split_rngs(splits=cfg.num_blocks)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r: nnx.Rngs) -> Block:
            return Block(cfg, rngs=r)

        self.blocks = make_blocks(rngs)
        self.final_layer = FinalLayer(cfg, rngs=rngs)

    def _run_blocks(self, x, emb, context, rope, adaln_lora, keep: bool):
        cfg = self.cfg

        def call(block: Block, x, emb, context, rope, adaln_lora):
            return block(x, emb, context, rope, adaln_lora)

        if cfg.remat_policy != "none":
            call = nnx.remat(call, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)

        if cfg.scan_layers:

            @nnx.scan(
                in_axes=(nnx.Carry, 0, None, None, None, None),
                out_axes=(nnx.Carry, 0),
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )
            def body(x, block, emb, context, rope, adaln_lora):
                x = call(block, x, emb, context, rope, adaln_lora)
                return x, (x if keep else None)

            x, per_block = body(x, self.blocks, emb, context, rope, adaln_lora)
            return x, ([per_block[i] for i in range(cfg.num_blocks)] if keep else [])

        graphdef, state = nnx.split(self.blocks)
        outs = []
        for i in range(cfg.num_blocks):
            block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            x = call(block, x, emb, context, rope, adaln_lora)
            if keep:
                outs.append(x)
        return x, outs

    def _check_inputs(
        self, x_B_C_T_H_W: jax.Array, timesteps_B_T: jax.Array, crossattn_emb_B_L_D: jax.Array
    ) -> jax.Array:
        """Raise on malformed inputs; returns the timesteps as (B, T) (a (B,) vector gets a frame axis)."""
        cfg = self.cfg
        if x_B_C_T_H_W.ndim != 5 or x_B_C_T_H_W.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, T, H, W), got {x_B_C_T_H_W.shape}")
        b, _, t, h, w = x_B_C_T_H_W.shape
        ps, pt = cfg.patch_spatial, cfg.patch_temporal
        if h % ps or w % ps or t % pt:
            raise ValueError(f"x spatial/temporal size {(t, h, w)} is not divisible by the patch ({pt}, {ps}, {ps})")
        if timesteps_B_T.ndim == 1:
            timesteps_B_T = timesteps_B_T[:, None]
        if timesteps_B_T.shape[0] != b:
            raise ValueError(f"timesteps must be (B={b}, T), got {timesteps_B_T.shape}")
        if crossattn_emb_B_L_D.ndim != 3 or crossattn_emb_B_L_D.shape[-1] != cfg.crossattn_emb_channels:
            raise ValueError(
                f"crossattn_emb must be (B, L, {cfg.crossattn_emb_channels}), got {crossattn_emb_B_L_D.shape}"
            )
        return timesteps_B_T

    def _input_channels(
        self,
        x_B_C_T_H_W: jax.Array,
        condition_video_input_mask_B_C_T_H_W: jax.Array | None,
        padding_mask_B_1_H_W: jax.Array | None,
        data_type: str,
    ) -> jax.Array:
        """The network input in the compute dtype: x, the condition mask channel and, if configured, the
        padding mask resized to the latent grid, concatenated on the channel axis."""
        cfg = self.cfg
        dtype = cfg.compute_dtype
        b, _, t, h, w = x_B_C_T_H_W.shape
        x = x_B_C_T_H_W.astype(dtype)
        if data_type == "video":
            if condition_video_input_mask_B_C_T_H_W is None:
                raise ValueError("data_type='video' needs condition_video_input_mask_B_C_T_H_W")
            cond = condition_video_input_mask_B_C_T_H_W.astype(dtype)
        elif data_type == "image":
            cond = jnp.zeros((b, 1, t, h, w), dtype)
        else:
            raise ValueError(f"data_type must be 'video' or 'image', got {data_type!r}")
        parts = [x, cond]
        if cfg.concat_padding_mask:
            if padding_mask_B_1_H_W is None:
                pad = jnp.zeros((b, 1, h, w), dtype)
            else:
                pad = resize_padding_mask(padding_mask_B_1_H_W.astype(dtype), h, w)
            parts.append(jnp.broadcast_to(pad[:, :, None], (b, 1, t, h, w)))
        return jnp.concatenate(parts, axis=1)

    def _embed_timesteps(self, timesteps_B_T: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(sinusoid, adaln_lora, normalised embedding) of the per-frame timesteps."""
        cfg = self.cfg
        dtype = cfg.compute_dtype
        # Timesteps enter in the compute dtype (bf16-rounded in production), sinusoid in float32.
        ts = (timesteps_B_T * cfg.timestep_scale).astype(dtype)
        sinusoid = timestep_sinusoid(ts, cfg.model_channels).astype(dtype)
        return sinusoid, self.t_embedder(sinusoid), self.t_embedding_norm(sinusoid)

    def __call__(
        self,
        x_B_C_T_H_W: jax.Array,
        timesteps_B_T: jax.Array,
        crossattn_emb_B_L_D: jax.Array,
        condition_video_input_mask_B_C_T_H_W: jax.Array | None = None,
        padding_mask_B_1_H_W: jax.Array | None = None,
        *,
        data_type: str = "video",
        return_intermediates: bool = False,
    ):
        """Network output, float32 (B, out_channels, T, H, W).

        ``data_type="video"`` concatenates the condition mask (required); ``"image"`` concatenates
        zeros instead (REFERENCE 12). ``padding_mask`` (B, 1, H_pix, W_pix) is resized to the latent
        size with PyTorch-nearest sampling; None means all zeros (what the datasets provide). With
        ``return_intermediates`` also returns a dict keyed like the fixture's ``inter.*`` entries
        without the ``inter.`` prefix (``x_embedder_out``, ``rope_emb``, ``t_embedder_out.0``, ...).
        """
        cfg = self.cfg
        ps, pt = cfg.patch_spatial, cfg.patch_temporal
        timesteps_B_T = self._check_inputs(x_B_C_T_H_W, timesteps_B_T, crossattn_emb_B_L_D)
        x = self._input_channels(x_B_C_T_H_W, condition_video_input_mask_B_C_T_H_W, padding_mask_B_1_H_W, data_type)

        x_B_T_H_W_D = self.x_embedder(patchify(x, pt, ps))
        tt, hh, ww = x_B_T_H_W_D.shape[1:4]
        angles = jnp.asarray(rope_angles(cfg, tt, hh, ww))
        rope = (jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :])  # (L, 1, head_dim) against (B, L, N, hd)

        sinusoid, adaln_lora, emb = self._embed_timesteps(timesteps_B_T)
        context = crossattn_emb_B_L_D.astype(cfg.compute_dtype)

        x_B_T_H_W_D_out, per_block = self._run_blocks(
            x_B_T_H_W_D, emb, context, rope, adaln_lora, keep=return_intermediates
        )
        final = self.final_layer(x_B_T_H_W_D_out, emb, adaln_lora)
        out = unpatchify(final, pt, ps, cfg.out_channels).astype(jnp.float32)
        if not return_intermediates:
            return out
        inter = {
            "x_embedder_out": x_B_T_H_W_D,
            "rope_emb": angles[:, None, None, :],
            "t_embedder_out.0": sinusoid,
            "t_embedder_out.1": adaln_lora,
            "t_embedding_norm_out": emb,
            "final_layer_out": final,
        }
        for i, y in enumerate(per_block):
            inter[f"block{i}_out"] = y
        return out, inter


# ----------------------------------------------------------------------------------------------
# Construction helpers


def abstract_model(cfg: DiTConfig, mesh: jax.sharding.Mesh, rules) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state of ShapeDtypeStructs with NamedShardings), no memory allocated."""
    with nnx.logical_axis_rules(tuple(rules)):
        return nnx.get_abstract_model(lambda: MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0)), mesh)
