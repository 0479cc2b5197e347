"""The 2B ``libero`` training step lowers for the CUDA platform, from a CPU-only machine.

Lowering (not compiling) from abstract inputs: sharding annotations, dtypes and the StableHLO of the
GPU program are produced exactly as on a GPU host, so errors of that program surface in CI without a
GPU. ``attention_impl=xla``: the cuDNN attention custom call needs cuDNN present to lower (that path is
exercised by ``benchmarks/gpu_check.sh`` on the device).
"""

from __future__ import annotations

import jax
import pytest

from benchmarks import common
from configs.cosmos_policy import get_config
from cosmos_policy_jax.parallel.mesh import make_mesh


def _libero_2b(batch_per_device: int, mesh_sizes: tuple[int, int, int]):
    c = get_config("libero,synthetic,random_weights")
    c.model.net.attention_impl = "xla"
    c.dataloader_train.batch_size = batch_per_device
    c.dataloader_train.global_batch_size = None
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh_sizes
    return c


@pytest.mark.parametrize("mesh_sizes", [(1, 1, 1), (2, 4, 1)], ids=["one_gpu", "data2_fsdp4"])
def test_libero_step_lowers_for_cuda(mesh_sizes):
    n = mesh_sizes[0] * mesh_sizes[1] * mesh_sizes[2]
    config = _libero_2b(2, mesh_sizes)
    mesh = make_mesh(config.parallel, jax.devices()[:n])
    b = common.abstract_bench(config, mesh)
    with jax.set_mesh(mesh):
        traced = common.jit_full_step(b).trace(b.state, b.batch, b.vae, b.rest)
        lowered = traced.lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    # The program is the GPU one: bf16 compute, the 28 DiT blocks scanned, and for the sharded mesh
    # the SPMD annotations of the trainer's shardings.
    assert "bf16" in text
    assert "stablehlo.while" in text
    if n > 1:
        assert "mhlo.sharding" in text or "sdy.sharding" in text
    # The donated train state stays donated in the CUDA program (no copy of the 2B parameters).
    assert "tf.aliasing_output" in text or "jax.buffer_donor" in text
