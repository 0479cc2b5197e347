"""Device mesh ``(data, fsdp, tensor)`` from the ``parallel`` config section."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

from cosmos_policy_jax.parallel.rules import MESH_AXES


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill the one ``-1`` entry so that the product equals ``num_devices``; raise on mismatch."""
    sizes = [int(s) for s in sizes]
    names = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"parallel: at most one mesh axis may be -1, got {names}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"parallel: mesh axis sizes must be positive or -1, got {names}")
    known = 1
    for s in sizes:
        if s != -1:
            known *= s
    if fill:
        if num_devices % known:
            raise ValueError(f"parallel: {num_devices} devices are not divisible by the fixed axes ({names})")
        sizes[fill[0]] = num_devices // known
    product = 1
    for s in sizes:
        product *= s
    if product != num_devices:
        raise ValueError(f"parallel: mesh product {product} ({names}) does not equal the device count {num_devices}")
    return tuple(sizes)


def make_mesh(parallel_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the mesh with Auto axis types (GSPMD propagation, needed for tensor-parallel matmuls)."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_axis_sizes((parallel_cfg.data, parallel_cfg.fsdp, parallel_cfg.tensor), len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
