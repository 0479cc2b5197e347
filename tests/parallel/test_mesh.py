"""Meshes on 8 fake CPU devices, logical rules, data-parallel ranks."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import cosmos_policy
from cosmos_policy_jax.parallel import mesh as mesh_lib
from cosmos_policy_jax.parallel import rules as rules_lib

SHAPES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def _parallel(data, fsdp, tensor):
    c = cosmos_policy.get_config("tiny").parallel
    c.data, c.fsdp, c.tensor = data, fsdp, tensor
    return c


@pytest.mark.parametrize("shape", SHAPES)
def test_meshes_build(shape):
    mesh = mesh_lib.make_mesh(_parallel(*shape))
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    ("sizes", "expected"), [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 2, -1), (1, 2, 4))]
)
def test_fill_axis(sizes, expected):
    assert mesh_lib.resolve_axis_sizes(sizes, 8) == expected


@pytest.mark.parametrize("sizes", [(3, 1, 1), (-1, -1, 1), (3, -1, 1), (0, 8, 1)])
def test_bad_mesh_sizes_raise(sizes):
    with pytest.raises(ValueError, match="parallel"):
        mesh_lib.resolve_axis_sizes(sizes, 8)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_logical_rule_resolves(shape):
    mesh = mesh_lib.make_mesh(_parallel(*shape))
    rules = rules_lib.normalize_rules(cosmos_policy.DEFAULT_LOGICAL_AXIS_RULES)
    rules_lib.check_rules(rules)
    assert {name for name, _ in rules} == set(rules_lib.LOGICAL_AXES)
    for name, _ in rules:
        spec = rules_lib.logical_to_mesh_spec((name,), rules)
        # Builds a valid sharding for a dim divisible by every axis size.
        sharding = jax.sharding.NamedSharding(mesh, spec)
        x = jax.device_put(np.zeros((8,), np.float32), sharding)
        assert x.sharding.spec == spec
    # Megatron layout: column-parallel in, row-parallel out, fsdp on the width.
    assert rules_lib.logical_to_mesh_spec(("embed", "heads"), rules) == PartitionSpec("fsdp", "tensor")
    assert rules_lib.logical_to_mesh_spec(("heads", "embed"), rules) == PartitionSpec("tensor", "fsdp")
    assert rules_lib.logical_to_mesh_spec(("mlp", "embed"), rules) == PartitionSpec("tensor", "fsdp")
    assert rules_lib.logical_to_mesh_spec(("batch", "length"), rules) == PartitionSpec(("data", "fsdp"), None)
    # One mesh axis never shards two dims of the same array.
    assert rules_lib.logical_to_mesh_spec(("embed", "embed"), rules) == PartitionSpec("fsdp", None)


def test_unknown_rules_rejected():
    with pytest.raises(ValueError, match="unknown logical axis"):
        rules_lib.check_rules((("embedding", "fsdp"),))
    with pytest.raises(ValueError, match="unknown mesh axis"):
        rules_lib.check_rules((("embed", "model"),))


@pytest.mark.parametrize("shape", SHAPES)
def test_single_process_data_parallel_info(shape):
    mesh = mesh_lib.make_mesh(_parallel(*shape))
    assert rules_lib.process_data_parallel_info(mesh) == (0, 1)
    assert rules_lib.data_parallel_size(mesh) == shape[0] * shape[1]


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int


class FakeMesh:
    def __init__(self, devices):
        self.devices = devices


def _fake_mesh(shape, devices_per_process):
    devs = [FakeDevice(i, i // devices_per_process) for i in range(int(np.prod(shape)))]
    return FakeMesh(np.array(devs, dtype=object).reshape(shape))


@pytest.mark.parametrize(
    ("shape", "per_proc", "expected"),
    [
        # 4 processes x 2 devices, pure data parallel: 4 distinct ranks.
        ((8, 1, 1), 2, [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4)]),
        # tensor=2 inside each process: still one rank per process.
        ((2, 2, 2), 2, [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4)]),
        # tensor=4 spans two processes: they share a data shard and get the same rank.
        ((1, 2, 4), 2, [(0, 2), (0, 2), (0, 2), (0, 2), (1, 2), (1, 2), (1, 2), (1, 2)]),
        # two processes with 4 devices each.
        ((2, 2, 2), 4, [(0, 2)] * 4 + [(1, 2)] * 4),
    ],
)
def test_multi_process_data_parallel_ranks(shape, per_proc, expected):
    mesh = _fake_mesh(shape, per_proc)
    got = [rules_lib.process_data_parallel_info(mesh, p) for p in range(8 // per_proc)]
    assert got == expected[::per_proc]
