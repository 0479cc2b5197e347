"""Wan2.1 video VAE (the Cosmos-Predict2 tokenizer) as Flax NNX modules.

Public layouts follow the reference: videos ``(B, 3, T, H, W)`` with values in [-1, 1], latents
``(B, z_dim, T', H/8, W/8)`` with ``T' = 1 + (T - 1) / 4``. Inside, activations are channels-last
``(B, T, H, W, C)`` and the whole clip is processed in one causal pass: the reference encodes
frame 0 alone and then chunks of ``temporal_window`` frames with per-convolution caches of the last
two frames, which equals a single full-sequence pass with these rules:

* 3-tap temporal convolutions are causal: two zero frames in front, none behind;
* a temporal downsample maps ``s_0..s_2m`` to ``s_0, conv(s_0,s_1,s_2), conv(s_2,s_3,s_4), ...``;
* a temporal upsample passes frame 0 through and runs a causal convolution over frames ``1..``,
  each frame giving two output frames (first half of the channels = earlier frame).

Precision: parameters are ``param_dtype`` (float32) and cast to the compute ``dtype`` at use, like
the reference, which casts the whole VAE to bf16 in production. Convolutions and matmuls run in the
compute dtype; the RMS-norm statistics and the attention softmax are computed in float32 (the
reference computes them in bf16 tensors whose reductions torch accumulates in float32; results
agree to bf16 rounding). The latent (de)normalisation uses mean and ``1/std`` rounded to the
compute dtype with compute-dtype arithmetic, as the reference does with its bf16 mean/std tensors.

Convolution kernels: ``conv_impl="auto"`` picks XLA's 3D convolution on GPU/TPU and on CPU when
oneDNN custom calls are enabled (``XLA_FLAGS=--xla_cpu_experimental_onednn_custom_call=true``:
~200-280 GFLOP/s here; ``train``/``eval`` set it on CPU, see ``xla_env``), and otherwise, on CPU, a sum of three 2D convolutions over time-shifted
frames with time folded into the batch (~2x faster than XLA's default CPU 3D convolution).
Both are the same math up to float32 summation order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmos_policy_jax import xla_env

# Per-channel statistics of Wan2.1 posterior means; encode returns (mu - mean) / std.
LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

TEMPORAL_FACTOR = 4
# ``model.tokenizer.conv_impl`` values; see ``resolve_conv_impl``.
CONV_IMPLS = ("auto", "conv3d", "taps")
_DTYPES = ("float32", "bfloat16", "float16")
_RMS_EPS = 1e-12  # torch F.normalize clamps the L2 norm at this value


def latent_num_frames(num_pixel_frames: int) -> int:
    """Latent frames of a ``1 + 4k``-frame video (the first frame is encoded alone)."""
    return 1 + (int(num_pixel_frames) - 1) // TEMPORAL_FACTOR


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of ``WanVAE_`` (the reference's names, including its ``temperal`` spelling).

    ``dtype`` is the compute dtype (``"bfloat16"`` in production, ``"float32"`` for parity);
    ``conv_impl`` selects the 3x3x3 convolution kernel (see the module docstring).
    ``batch_steps`` splits encode/decode into that many sequential passes over the batch (a
    ``lax.map``) to bound activation memory: one 33x224x224 clip needs ~2.3 GB of bf16 temporaries
    in one full-sequence pass. Pass ``j`` takes samples ``j, j + s, j + 2s, ...``, so a batch
    sharded in contiguous blocks stays evenly spread over the devices when ``s`` divides the
    per-device batch. Same math as one pass (equal up to float summation order). A batch that
    ``s`` does not divide takes the largest divisor of the batch below ``s`` as its pass count.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    conv_impl: str = "auto"
    batch_steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        if int(self.dim) <= 0 or int(self.z_dim) <= 0 or int(self.num_res_blocks) < 0:
            raise ValueError(
                f"model.tokenizer: dim, z_dim must be positive and num_res_blocks >= 0, got dim={self.dim}, "
                f"z_dim={self.z_dim}, num_res_blocks={self.num_res_blocks}"
            )
        if not self.dim_mult or any(m <= 0 for m in self.dim_mult):
            raise ValueError(f"model.tokenizer.dim_mult must be non-empty positive ints, got {self.dim_mult}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"model.tokenizer.temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} flags, "
                f"got {self.temperal_downsample}"
            )
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in _DTYPES:
                raise ValueError(f"model.tokenizer.{key} must be one of {_DTYPES}, got {getattr(self, key)!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"model.tokenizer.conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if int(self.batch_steps) < 1:
            raise ValueError(f"model.tokenizer.batch_steps must be >= 1, got {self.batch_steps}")

    @classmethod
    def from_config(cls, tok_cfg: Any) -> WanVAEConfig:
        """From ``config.model.tokenizer`` (ml_collections) or a dict such as a fixture's ``info["config"]``.

        Keys that do not change the math (``load_path``, ``dropout``, ``temporal_window``, compression
        factors) are ignored; attention at other scales (``attn_scales``) is not supported.
        """
        d = tok_cfg.to_dict() if hasattr(tok_cfg, "to_dict") else dict(tok_cfg)
        if d.get("attn_scales"):
            raise ValueError(f"model.tokenizer.attn_scales={d['attn_scales']!r} is not supported (Wan2.1 uses [])")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    @property
    def num_levels(self) -> int:
        return len(self.dim_mult)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


# ----------------------------------------------------------------------------------------------
# Pure helpers (channels-last arrays)


def resolve_conv_impl(impl: str) -> str:
    """``auto`` -> ``conv3d`` except on CPU without oneDNN custom calls, where ``taps`` is faster."""
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "conv3d"
    return "conv3d" if xla_env.onednn_enabled() else "taps"


def rms_norm_channels(x: jax.Array, gamma: jax.Array) -> jax.Array:
    """``x / max(||x||_2, 1e-12) * sqrt(C) * gamma`` over the channel (last) axis, float32 statistics."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    scale = np.float32(np.sqrt(x.shape[-1])) / jnp.maximum(norm, _RMS_EPS)
    return (x32 * scale * gamma.astype(jnp.float32)).astype(x.dtype)


def _dot_channels(x: jax.Array, w: jax.Array) -> jax.Array:
    """Contract the last axis of ``x`` with the first of ``w`` (a 1x1 convolution)."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def conv2d_frames(x: jax.Array, kernel: jax.Array, stride: int, padding: Sequence[tuple[int, int]]) -> jax.Array:
    """2D convolution of every frame of ``x`` (B, T, H, W, C) with ``kernel`` (kh, kw, C, O)."""
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]),
        kernel,
        (stride, stride),
        tuple(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(b, t, *y.shape[1:])


def causal_conv3d(
    x: jax.Array, kernel: jax.Array, *, pad_front: int, stride_t: int = 1, impl: str = "auto"
) -> jax.Array:
    """Convolution of ``x`` (B, T, H, W, C) with ``kernel`` (kt, kh, kw, C, O), no bias.

    Time is padded with ``pad_front`` zero frames in front and none behind; H and W with
    ``kh // 2`` / ``kw // 2`` zeros on both sides ("same" spatial size).
    """
    kt, kh, kw = kernel.shape[:3]
    ph, pw = kh // 2, kw // 2
    if kt == kh == kw == 1 and stride_t == 1:
        return _dot_channels(x, kernel[0, 0, 0])
    if (kh > 1 or kw > 1) and resolve_conv_impl(impl) == "conv3d":
        # The convolution pads time itself (no padded copy of the activations).
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride_t, 1, 1),
            ((pad_front, 0), (ph, ph), (pw, pw)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )
    if pad_front:
        x = jnp.pad(x, ((0, 0), (pad_front, 0), (0, 0), (0, 0), (0, 0)))
    t_out = (x.shape[1] - kt) // stride_t + 1
    if kh == kw == 1:
        # Temporal-only kernel: stack the kt shifted sequences on channels, one matmul.
        taps = [x[:, i : i + stride_t * (t_out - 1) + 1 : stride_t] for i in range(kt)]
        xs = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
        return _dot_channels(xs, kernel.reshape(kt * kernel.shape[3], kernel.shape[4]))
    # "taps": one 2D convolution per temporal tap on the shifted frames, time folded into batch.
    out = None
    for i in range(kt):
        xi = x[:, i : i + stride_t * (t_out - 1) + 1 : stride_t]
        yi = conv2d_frames(xi, kernel[i], 1, ((ph, ph), (pw, pw)))
        out = yi if out is None else out + yi
    return out


def _fast_key(key: jax.Array) -> jax.Array:
    """An ``rbg`` key derived from ``key``: XLA's RngBitGenerator compiles in milliseconds, while a
    threefry draw compiles for seconds per distinct shape (minutes for the ~200 VAE parameters)."""
    data = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    if data.shape[0] < 4:
        data = jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])[:4]
    return jax.random.wrap_key_data(data[:4], impl="rbg")


def _uniform_fan_in(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(_fast_key(key), shape, jnp.float32, -bound, bound).astype(dtype)

    return init


def _zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype=jnp.float32):
    del key
    return jnp.ones(shape, dtype)


def _param(init, axes: tuple[str, ...], key, shape, dtype) -> nnx.Param:
    return nnx.Param(nnx.with_partitioning(init, axes)(key, shape, dtype), eager_sharding=False)


# ----------------------------------------------------------------------------------------------
# Modules


class CausalConv3d(nnx.Module):
    """Conv3d with causal time padding; ``kernel`` (kt, kh, kw, in, out), ``bias`` (out,)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: tuple[int, int, int],
        *,
        pad_front: int,
        stride_t: int = 1,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        conv_impl: str = "auto",
        zero_init: bool = False,
        rngs: nnx.Rngs,
    ):
        fan_in = in_dim * int(np.prod(kernel))
        w_init = _zeros if zero_init else _uniform_fan_in(fan_in)
        self.kernel = _param(
            w_init,
            ("kernel", "kernel", "kernel", "conv_in", "conv_out"),
            rngs.params(),
            (*kernel, in_dim, out_dim),
            param_dtype,
        )
        self.bias = _param(_uniform_fan_in(fan_in), ("conv_out",), rngs.params(), (out_dim,), param_dtype)
        self.pad_front = pad_front
        self.stride_t = stride_t
        self.dtype = dtype
        self.conv_impl = conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        y = causal_conv3d(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            pad_front=self.pad_front,
            stride_t=self.stride_t,
            impl=self.conv_impl,
        )
        return y + self.bias[...].astype(self.dtype)


class Conv2d(nnx.Module):
    """Per-frame 2D convolution; ``kernel`` (kh, kw, in, out), ``bias`` (out,)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        ksize: int,
        *,
        stride: int = 1,
        padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        zero_init: bool = False,
        rngs: nnx.Rngs,
    ):
        fan_in = in_dim * ksize * ksize
        w_init = _zeros if zero_init else _uniform_fan_in(fan_in)
        self.kernel = _param(
            w_init,
            ("kernel", "kernel", "conv_in", "conv_out"),
            rngs.params(),
            (ksize, ksize, in_dim, out_dim),
            param_dtype,
        )
        self.bias = _param(_uniform_fan_in(fan_in), ("conv_out",), rngs.params(), (out_dim,), param_dtype)
        self.stride = stride
        self.padding = tuple(tuple(p) for p in padding)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        k = self.kernel[...].astype(self.dtype)
        if k.shape[:2] == (1, 1) and self.stride == 1:
            y = _dot_channels(x, k[0, 0])
        else:
            y = conv2d_frames(x, k, self.stride, self.padding)
        return y + self.bias[...].astype(self.dtype)


class RMSNorm(nnx.Module):
    """L2 normalisation over channels times sqrt(C) and a learnable ``gamma`` (C,)."""

    def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        del rngs
        self.gamma = _param(_ones, ("norm",), None, (dim,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The reference holds gamma in the compute dtype: round it the same way.
        return rms_norm_channels(x, self.gamma[...].astype(x.dtype))


class ResidualBlock(nnx.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, param_dtype, conv_impl: str, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = RMSNorm(in_dim, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, (3, 3, 3), pad_front=2, conv_impl=conv_impl, **kw)
        self.norm2 = RMSNorm(out_dim, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, (3, 3, 3), pad_front=2, conv_impl=conv_impl, **kw)
        self.shortcut = CausalConv3d(in_dim, out_dim, (1, 1, 1), pad_front=0, **kw) if in_dim != out_dim else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x if self.shortcut is None else self.shortcut(x)
        y = self.conv1(jax.nn.silu(self.norm1(x)))
        y = self.conv2(jax.nn.silu(self.norm2(y)))
        return y + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the H*W positions of each frame, with identity residual."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = RMSNorm(dim, param_dtype=param_dtype)
        self.to_qkv = Conv2d(dim, 3 * dim, 1, **kw)
        # The reference zero-initialises the output projection weight (a no-op block at init).
        self.proj = Conv2d(dim, dim, 1, zero_init=True, **kw)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x.astype(self.dtype))).reshape(b * t, h * w, 3 * c)
        q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32) * np.float32(1.0 / np.sqrt(c))
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("nqk,nkc->nqc", probs, v).reshape(b, t, h, w, c)
        return self.proj(y) + x


class Resample(nnx.Module):
    """Spatial x2 down/upsampling, optionally with the causal temporal x2 down/upsampling.

    ``mode``: ``downsample2d``, ``downsample3d``, ``upsample2d``, ``upsample3d``.
    """

    def __init__(self, dim: int, mode: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        self.dtype = dtype
        if mode.startswith("downsample"):
            # ZeroPad2d(right 1, bottom 1) then a stride-2 3x3 convolution.
            self.conv = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), **kw)
            self.time_conv = (
                CausalConv3d(dim, dim, (3, 1, 1), pad_front=0, stride_t=2, **kw) if mode == "downsample3d" else None
            )
        elif mode.startswith("upsample"):
            self.conv = Conv2d(dim, dim // 2, 3, padding=((1, 1), (1, 1)), **kw)
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), pad_front=2, **kw) if mode == "upsample3d" else None
        else:
            raise ValueError(f"unknown Resample mode {mode!r}")

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "upsample3d" and x.shape[1] > 1:
            # Frame 0 passes through; every later frame becomes two (first channel half = earlier).
            b, t, h, w, c = x.shape
            rest = self.time_conv(x[:, 1:]).reshape(b, t - 1, h, w, 2, c)
            rest = jnp.moveaxis(rest, 4, 2).reshape(b, 2 * (t - 1), h, w, c)
            x = jnp.concatenate([x[:, :1].astype(rest.dtype), rest], axis=1)
        if self.mode.startswith("upsample"):
            # Nearest x2 ("nearest-exact" at an exact factor 2 repeats each pixel).
            b, t, h, w, c = x.shape
            x = jnp.broadcast_to(x[:, :, :, None, :, None, :], (b, t, h, 2, w, 2, c)).reshape(b, t, 2 * h, 2 * w, c)
        x = self.conv(x)
        if self.mode == "downsample3d" and x.shape[1] > 1:
            # s_0..s_2m -> s_0, conv(s_0..s_2), conv(s_2..s_4), ...
            x = jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1)
        return x


def encoder_layout(cfg: WanVAEConfig) -> list[tuple[str, int, int]]:
    """(kind, in, out) of ``encoder.downsamples``; kind is ``res`` or a Resample mode."""
    dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
    layout = []
    for level in range(cfg.num_levels):
        c_in, c_out = dims[level], dims[level + 1]
        for _ in range(cfg.num_res_blocks):
            layout.append(("res", c_in, c_out))
            c_in = c_out
        if level != cfg.num_levels - 1:
            layout.append(("downsample3d" if cfg.temperal_downsample[level] else "downsample2d", c_out, c_out))
    return layout


def decoder_layout(cfg: WanVAEConfig) -> list[tuple[str, int, int]]:
    """(kind, in, out) of ``decoder.upsamples`` (num_res_blocks + 1 blocks per level)."""
    mults = cfg.dim_mult[::-1]
    flags = cfg.temperal_downsample[::-1]
    dims = [cfg.dim * m for m in (mults[0], *mults)]
    layout = []
    for level in range(cfg.num_levels):
        # Each upsample halves the channels, so later levels start from half the previous width.
        c_in = dims[level] // 2 if level > 0 else dims[level]
        c_out = dims[level + 1]
        for _ in range(cfg.num_res_blocks + 1):
            layout.append(("res", c_in, c_out))
            c_in = c_out
        if level != cfg.num_levels - 1:
            layout.append(("upsample3d" if flags[level] else "upsample2d", c_out, c_out))
    return layout


def _make_blocks(layout, *, dtype, param_dtype, conv_impl, rngs) -> nnx.List:
    blocks = []
    for kind, c_in, c_out in layout:
        if kind == "res":
            blocks.append(
                ResidualBlock(c_in, c_out, dtype=dtype, param_dtype=param_dtype, conv_impl=conv_impl, rngs=rngs)
            )
        else:
            blocks.append(Resample(c_in, kind, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
    return nnx.List(blocks)


def _make_middle(dim, *, dtype, param_dtype, conv_impl, rngs) -> nnx.List:
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return nnx.List(
        [
            ResidualBlock(dim, dim, conv_impl=conv_impl, **kw),
            AttentionBlock(dim, **kw),
            ResidualBlock(dim, dim, conv_impl=conv_impl, **kw),
        ]
    )


class Encoder3d(nnx.Module):
    """conv1 -> downsamples -> middle -> head (norm, SiLU, conv3 to 2*z_dim channels)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        top = cfg.dim * cfg.dim_mult[-1]
        self.conv1 = CausalConv3d(3, cfg.dim, (3, 3, 3), pad_front=2, conv_impl=cfg.conv_impl, **kw)
        self.downsamples = _make_blocks(encoder_layout(cfg), conv_impl=cfg.conv_impl, **kw)
        self.middle = _make_middle(top, conv_impl=cfg.conv_impl, **kw)
        self.head_norm = RMSNorm(top, param_dtype=pdt)
        self.head_conv = CausalConv3d(top, 2 * cfg.z_dim, (3, 3, 3), pad_front=2, conv_impl=cfg.conv_impl, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x)
        for block in self.downsamples:
            x = block(x)
        for block in self.middle:
            x = block(x)
        return self.head_conv(jax.nn.silu(self.head_norm(x)))


class Decoder3d(nnx.Module):
    """conv1 -> middle -> upsamples -> head (norm, SiLU, conv3 to RGB)."""

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        top = cfg.dim * cfg.dim_mult[-1]
        self.conv1 = CausalConv3d(cfg.z_dim, top, (3, 3, 3), pad_front=2, conv_impl=cfg.conv_impl, **kw)
        self.middle = _make_middle(top, conv_impl=cfg.conv_impl, **kw)
        self.upsamples = _make_blocks(decoder_layout(cfg), conv_impl=cfg.conv_impl, **kw)
        out = cfg.dim * cfg.dim_mult[0]
        self.head_norm = RMSNorm(out, param_dtype=pdt)
        self.head_conv = CausalConv3d(out, 3, (3, 3, 3), pad_front=2, conv_impl=cfg.conv_impl, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x)
        for block in self.middle:
            x = block(x)
        for block in self.upsamples:
            x = block(x)
        return self.head_conv(jax.nn.silu(self.head_norm(x)))


class WanVAE(nnx.Module):
    """The reference's ``WanVAE_`` plus the fixed latent normalisation of its ``WanVAE`` wrapper.

    Frozen in this project: callers run it under ``jax.jit`` with ``jax.lax.stop_gradient`` and
    keep its parameters out of the optimizer. Parameters are replicated by the default axis rules;
    inputs may be sharded over the batch.
    """

    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        self.encoder = Encoder3d(cfg, rngs=rngs)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), pad_front=0, **kw)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), pad_front=0, **kw)
        self.decoder = Decoder3d(cfg, rngs=rngs)

    # -- latent statistics in the compute dtype, as the reference's bf16 (or fp32) tensors ----------

    def _mean_inv_std(self) -> tuple[jax.Array, jax.Array]:
        dt = jnp.dtype(self.cfg.dtype)
        if self.cfg.z_dim != len(LATENT_MEAN):
            raise ValueError(f"model.tokenizer.z_dim={self.cfg.z_dim}: the Wan2.1 latent statistics have 16 channels")
        mean = jnp.asarray(np.asarray(LATENT_MEAN, np.float32).astype(dt))
        std = np.asarray(LATENT_STD, np.float32).astype(dt)
        inv_std = jnp.asarray((np.float32(1.0) / std.astype(np.float32)).astype(dt))
        return mean, inv_std

    def _map_batch(self, fn, x: jax.Array) -> jax.Array:
        """``fn`` over the batch in ``cfg.batch_steps`` sequential passes (see ``WanVAEConfig``)."""
        b = x.shape[0]
        # A batch that batch_steps does not divide (e.g. 8 evaluation environments with the training
        # setting 6) takes the largest number of passes <= batch_steps that divides it.
        steps = max(d for d in range(1, min(int(self.cfg.batch_steps), b) + 1) if b % d == 0)
        if steps == 1:
            return fn(x)
        xs = jnp.swapaxes(x.reshape(b // steps, steps, *x.shape[1:]), 0, 1)
        ys = jax.lax.map(fn, xs)
        return jnp.swapaxes(ys, 0, 1).reshape(b, *ys.shape[2:])

    def _check_video(self, video: jax.Array) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode: video must be (B, 3, T, H, W), got shape {tuple(video.shape)}")
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise ValueError(
                f"WanVAE.encode: video must be float in [-1, 1] (e.g. uint8 / 127.5 - 1), got {video.dtype}"
            )
        t, h, w = video.shape[2:]
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        if (t - 1) % tf:
            raise ValueError(f"WanVAE.encode: number of frames must be 1 + {tf}k, got T={t}")
        if h % sf or w % sf:
            raise ValueError(f"WanVAE.encode: H and W must be multiples of {sf}, got H={h}, W={w}")

    def _mu(self, video: jax.Array) -> jax.Array:
        """Posterior mean in the compute dtype, channels-first."""
        self._check_video(video)
        x = jnp.transpose(video, (0, 2, 3, 4, 1)).astype(jnp.dtype(self.cfg.dtype))
        h = self._map_batch(self.encoder, x)
        # Only the first z_dim outputs of the 1x1x1 conv (mu) are used; the log-variance is skipped.
        z = self.cfg.z_dim
        w = self.conv1.kernel[...][0, 0, 0, :, :z].astype(h.dtype)
        mu = _dot_channels(h, w) + self.conv1.bias[...][:z].astype(h.dtype)
        return jnp.transpose(mu, (0, 4, 1, 2, 3))

    def encode_mean(self, video_B_3_T_H_W: jax.Array) -> jax.Array:
        """Posterior mean ``mu`` (B, z_dim, T', H/8, W/8), float32, of a video in [-1, 1].

        ``video_B_3_T_H_W``: float array (any float dtype; cast to the compute dtype) with values in
        [-1, 1] (uint8 frames as ``x / 127.5 - 1``: converting is the caller's job), ``T = 1 + 4k``,
        H and W multiples of 8.
        """
        return self._mu(video_B_3_T_H_W).astype(jnp.float32)

    def encode(self, video_B_3_T_H_W: jax.Array) -> jax.Array:
        """Normalised latent ``(mu - mean) * (1 / std)`` (B, z_dim, T', H/8, W/8), float32.

        Same input contract as ``encode_mean``. The normalisation runs in the compute dtype.
        """
        mu = self._mu(video_B_3_T_H_W)
        mean, inv_std = self._mean_inv_std()
        z = (mu - mean[None, :, None, None, None]) * inv_std[None, :, None, None, None]
        return z.astype(jnp.float32)

    def decode(self, latent_B_C_T_H_W: jax.Array) -> jax.Array:
        """Video (B, 3, 1 + 4(T'-1), 8H', 8W') float32, roughly in [-1, 1] (not clamped).

        ``latent_B_C_T_H_W``: a normalised latent as returned by ``encode``; it is cast to the
        compute dtype, un-normalised (``z / (1/std) + mean``), then passed through conv2 and the decoder.
        """
        if latent_B_C_T_H_W.ndim != 5 or latent_B_C_T_H_W.shape[1] != self.cfg.z_dim:
            raise ValueError(
                f"WanVAE.decode: latent must be (B, {self.cfg.z_dim}, T, H, W), got shape {tuple(latent_B_C_T_H_W.shape)}"
            )
        dt = jnp.dtype(self.cfg.dtype)
        mean, inv_std = self._mean_inv_std()
        z = latent_B_C_T_H_W.astype(dt)
        z = z / inv_std[None, :, None, None, None] + mean[None, :, None, None, None]
        x = self.conv2(jnp.transpose(z, (0, 2, 3, 4, 1)))
        x = self._map_batch(self.decoder, x)
        return jnp.transpose(x, (0, 4, 1, 2, 3)).astype(jnp.float32)


def abstract_vae(cfg: WanVAEConfig) -> WanVAE:
    """Shape-only model (``nnx.eval_shape``): for converters and structural tests, no compute."""
    return nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))


def param_shapes(cfg: WanVAEConfig) -> Mapping[tuple, tuple[int, ...]]:
    """Flat ``{path: shape}`` of all parameters (for tests and docs)."""
    state = nnx.state(abstract_vae(cfg), nnx.Param).to_pure_dict()
    out = {}

    def rec(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                rec(v, (*prefix, k))
        else:
            out[prefix] = tuple(node.shape)

    rec(state, ())
    return out
