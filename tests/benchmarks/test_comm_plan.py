"""The HLO reading of benchmarks/comm_plan.py: replica-group forms, shape bytes, ring bytes, link choice.

The HLO lines are in the forms XLA prints (explicit groups, iota groups, mesh-axis groups); a small
real program compiled for 8 fake devices checks that the reader finds its collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks import comm_plan


def test_replica_group_forms_give_the_same_groups():
    mesh_form = "replica_groups=mesh['data'=2,'fsdp'=4,'tensor'=1] {'fsdp'}, use_global_device_ids=true"
    iota_form = "replica_groups=[2,4]<=[8], use_global_device_ids=true"
    explicit = "replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true"
    want = [[0, 1, 2, 3], [4, 5, 6, 7]]
    for line in (mesh_form, iota_form, explicit):
        assert comm_plan.replica_groups(line, 8) == want, line
    # Across the outer axis: strided groups, in both the mesh and the transposed iota form.
    strided = [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert comm_plan.replica_groups("replica_groups=mesh['data'=2,'fsdp'=4,'tensor'=1] {'data'}", 8) == strided
    assert comm_plan.replica_groups("replica_groups=[4,2]<=[2,4]T(1,0)", 8) == strided


def test_shape_bytes_of_arrays_and_tuples():
    assert comm_plan.shape_bytes("bf16[4,8]{1,0}") == 64
    assert comm_plan.shape_bytes("(f32[], f32[10]{0}, s8[3])") == 4 + 40 + 3


def test_ring_bytes_and_links():
    lines = [
        "%ag = bf16[8,1024]{1,0} all-gather(bf16[1,1024]{1,0} %p), replica_groups=[1,8]<=[8], dimensions={0}",
        "%ar = f32[1000]{0} all-reduce(f32[1000]{0} %g), replica_groups=[2,8]<=[16], to_apply=%add",
        "%rs = f32[125]{0} reduce-scatter(f32[1000]{0} %g), replica_groups=[2,8]<=[8,2]T(1,0), dimensions={0}",
    ]
    ops = comm_plan.collectives("\n".join(lines), num_devices=16, node=8)
    ag, ar, rs = ops
    assert ag["bytes"] == 8 * 1024 * 2 * 7 / 8 and ag["link"] == "nvlink"
    assert ar["bytes"] == 2 * 4000 * 7 / 8 and ar["link"] == "nvlink"
    # Groups {0,2,4,...} and {1,3,...} span both nodes of 8: InfiniBand.
    assert rs["bytes"] == 500 * 7 and rs["link"] == "ib"


def test_reads_the_collectives_of_a_compiled_program():
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), devices=jax.devices()[:8])
    w_sharding = NamedSharding(mesh, PartitionSpec("fsdp", None))
    x_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))

    def f(w, x):
        return jnp.sum((x @ w) ** 2)

    w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=w_sharding)
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=x_sharding)
    hlo = jax.jit(jax.grad(f)).lower(w, x).compile().as_text()
    ops = comm_plan.collectives(hlo, num_devices=8, node=8)
    kinds = {op["kind"] for op in ops}
    # The FSDP weight is gathered for the matmul and its gradient reduced over the batch shards.
    assert "all-gather" in kinds
    assert kinds & {"all-reduce", "reduce-scatter"}
    assert all(op["link"] == "nvlink" for op in ops)
    assert np.isfinite(sum(op["bytes"] for op in ops))
