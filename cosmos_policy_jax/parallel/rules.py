"""Logical axis names, their mapping to mesh axes, and data-parallel helpers.

Model code annotates every parameter with *logical* axis names from ``LOGICAL_AXES``
(``nnx.with_partitioning(init, ("embed", "heads"))``); the config's
``parallel.logical_axis_rules`` maps them to the physical mesh axes ``data``, ``fsdp``, ``tensor``.
The default table (configs/cosmos_policy.py) gives the Megatron layout: q/k/v and the first MLP
matmul are column-parallel (output dim on ``tensor``), the attention output projection and the
second MLP matmul are row-parallel (input dim on ``tensor``); the model width ``embed`` is
sharded on ``fsdp`` (ZeRO-3 style parameter + optimizer-state sharding); batches are sharded on
``("data", "fsdp")``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Every logical name a parameter or activation may carry, with its meaning.
LOGICAL_AXES = {
    "batch": "samples of a batch (activations only)",
    "embed": "model width D of the DiT (parameter rows/cols that touch the residual stream)",
    "heads": "flattened attention heads x head_dim (q/k/v outputs, output-projection inputs)",
    "mlp": "MLP hidden width",
    "modulation": "AdaLN modulation outputs (3D shift/scale/gate, 2D in the final layer)",
    "context": "T5 context width (cross-attention k/v inputs)",
    "patch": "flattened patch features (patch-embed input)",
    "adaln_lora": "AdaLN-LoRA rank",
    "head_dim": "per-head dimension (q/k RMSNorm weights)",
    "norm": "other norm weights",
    "layers": "stacked transformer blocks (nnx.scan axis)",
    "length": "token sequence length (activations only)",
    "frames": "latent frames (activations only)",
    "conv_in": "VAE convolution input channels",
    "conv_out": "VAE convolution output channels",
    "kernel": "VAE convolution spatial/temporal taps",
}

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def normalize_rules(rules: Sequence[Sequence]) -> Rules:
    """Turn config rules (tuples or lists, from YAML or Python) into a hashable tuple of pairs."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"parallel.logical_axis_rules: each rule must be (logical, mesh_axes), got {rule!r}")
        name, target = rule
        if isinstance(target, list):
            target = tuple(target)
        out.append((str(name), target))
    return tuple(out)


def check_rules(rules: Rules, mesh_axes: Sequence[str] = MESH_AXES) -> None:
    """Raise ValueError naming the rule if a logical name is unknown or maps to a missing mesh axis."""
    seen = set()
    for name, target in rules:
        if name not in LOGICAL_AXES:
            raise ValueError(
                f"parallel.logical_axis_rules: unknown logical axis {name!r}; known: {sorted(LOGICAL_AXES)}"
            )
        if name in seen:
            raise ValueError(f"parallel.logical_axis_rules: logical axis {name!r} appears twice")
        seen.add(name)
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        for t in targets:
            if t not in mesh_axes:
                raise ValueError(f"parallel.logical_axis_rules: {name!r} maps to unknown mesh axis {t!r}")


def logical_to_mesh_spec(logical: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """PartitionSpec of an array whose dims carry the given logical names (None = replicated)."""
    table = dict(rules)
    spec = []
    used: set[str] = set()
    for name in logical:
        target = None if name is None else table.get(name)
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        # A mesh axis may shard only one dim of an array; later dims fall back to replication.
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        spec.append(None if not targets else (targets[0] if len(targets) == 1 else targets))
    return PartitionSpec(*spec)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of a global batch array: leading dim over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    """Number of distinct batch shards (devices along data x fsdp)."""
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def process_data_parallel_info(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
    """(rank, size) of a process for data loading, derived from the mesh.

    A process loads the batch rows of the batch shards its devices hold. Processes whose devices
    hold the same set of shards (they differ only along ``tensor``) get the same rank and load the
    same rows; ``size`` is the number of distinct sets. Every process must hold the same number of
    shards, and they must be contiguous (``make_array_from_process_local_data`` needs that).
    """
    if process_index is None:
        process_index = jax.process_index()
    devices = np.asarray(mesh.devices)  # shape (data, fsdp, tensor)
    d, f, _ = devices.shape
    sets: dict[int, set[int]] = {}
    for i in range(d):
        for j in range(f):
            for dev in devices[i, j, :].ravel():
                sets.setdefault(dev.process_index, set()).add(i * f + j)
    unique = sorted({tuple(sorted(s)) for s in sets.values()})
    sizes = {len(s) for s in unique}
    if len(sizes) != 1:
        raise ValueError(f"mesh gives processes unequal numbers of batch shards: {unique}")
    for s in unique:
        if list(s) != list(range(s[0], s[0] + len(s))):
            raise ValueError(f"mesh gives a process non-contiguous batch shards {s}; reorder the mesh axes")
    flat = [i for s in unique for i in s]
    if len(flat) != len(set(flat)):
        raise ValueError("mesh gives two processes overlapping but unequal batch shard sets")
    if process_index not in sets:
        raise ValueError(f"process {process_index} holds no device of the mesh")
    rank = unique.index(tuple(sorted(sets[process_index])))
    return rank, len(unique)
