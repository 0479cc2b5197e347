"""Small NNX building blocks shared by the DiT: bias-free dense layers, RMSNorm, LayerNorm, RoPE, attention.

Parameters are created in ``param_dtype`` (float32 master weights) with logical axis names from
``cosmos_policy_jax/parallel/rules.py`` and cast to the compute ``dtype`` at use. Norm statistics
are always computed in float32 and returned in the input dtype (what TransformerEngine's RMSNorm
and PyTorch's LayerNorm do on bf16 inputs).

Parameters are created with ``eager_sharding=False``: a module can be built without a mesh (tests,
CPU tools); sharded placement comes from the logical names through ``nnx.get_abstract_model`` and
``jax.jit(..., out_shardings=...)`` (see ``models/dit.py:abstract_model``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from cosmos_policy_jax.parallel.rules import BATCH_AXES

Axes = tuple[str | None, ...]


def truncated_normal_init(std: float):
    """Normal(0, std) truncated at +-3 std (``torch.nn.init.trunc_normal_(std=s, a=-3s, b=3s)``)."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)

    return init


def zeros_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    del key
    return jnp.zeros(shape, dtype)


def ones_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    del key
    return jnp.ones(shape, dtype)


def constrain_batch(x: jax.Array) -> jax.Array:
    """Shard an activation's leading (batch) axis over the batch mesh axes, replicate the rest.

    Used on the DiT's residual stream at every block boundary. Without it GSPMD may resolve an FSDP
    matmul (activations batch-sharded over ``fsdp``, weight rows sharded over ``fsdp``) by gathering
    the activations of the whole global batch on every device instead of gathering the weights:
    162 GiB of temporaries per device for the 2B ``libero`` step at fsdp=8 with 30 samples per
    device, 36 GiB with the constraint (``benchmarks/memory_plan.py``). The other axes are
    replicated, as the residual stream is in Megatron without sequence parallelism; leaving them
    ``UNCONSTRAINED`` instead gave wrong attention gradients on a (data 1, fsdp 2, tensor 4) mesh
    with jax 0.12 (tests/training/test_step.py::test_same_step_on_three_meshes caught it). A no-op
    without a mesh (tests, CPU tools) or when the batch does not divide (e.g. one eval sample).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or x.ndim == 0:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    spec = PartitionSpec(axes, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


class Dense(nnx.Module):
    """Bias-free linear layer, kernel ``[in, out]`` (the transpose of a torch ``Linear.weight``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: Axes,
        *,
        init_std: float | None = None,
        zero_init: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if init_std is None:
            init_std = in_features**-0.5
        init = zeros_init if zero_init else truncated_normal_init(init_std)
        init = nnx.with_partitioning(init, axes)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype), eager_sharding=False)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last axis in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters; float32 statistics, output in x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with a learnable gain (TransformerEngine semantics)."""

    def __init__(self, dim: int, axes: Axes, *, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = nnx.Param(nnx.with_partitioning(ones_init, axes)(None, (dim,), param_dtype), eager_sharding=False)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # The reference holds the gain in the compute dtype (whole net cast to bf16): round it the same way.
        return rms_norm(x, self.scale[...].astype(self.dtype), self.eps)


def rotate_half(x: jax.Array) -> jax.Array:
    """Non-interleaved rotation partner: ``[-x[d/2:], x[:d/2]]`` along the last axis."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x*cos + rotate_half(x)*sin`` in float32 (cos/sin broadcast against x), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def resolve_attention_impl(impl: str, dtype, head_dim: int) -> str | None:
    """Map the config's ``attention_impl`` to ``jax.nn.dot_product_attention(implementation=...)``.

    ``auto`` picks cuDNN on a GPU for 16-bit inputs with a head dim cuDNN supports, XLA otherwise.
    """
    if impl == "xla":
        return "xla"
    if impl == "cudnn":
        return "cudnn"
    if impl != "auto":
        raise ValueError(f"model.net.attention_impl must be auto, xla or cudnn, got {impl!r}")
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if jax.default_backend() == "gpu" and sixteen_bit and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None) -> jax.Array:
    """Full non-causal softmax attention, scale 1/sqrt(head_dim), no mask. Shapes ``(B, L, N, H)``."""
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
