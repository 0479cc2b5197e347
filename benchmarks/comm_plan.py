r"""Communication plan of the 2B ``libero`` training step for 8, 64 and 256 GPUs, on paper.

    python benchmarks/comm_plan.py --json
    python benchmarks/comm_plan.py --meshes="1,8,1;8,8,1;32,8,1" --batch_per_device=30

For each (data, fsdp, tensor) mesh the DiT training step on precomputed latents (forward, backward,
clip, AdamW: every collective of the trainer's step; the frozen VAE encode is local to each device's
batch shard) is compiled (never run) for fake CPU devices, and the collectives are read from the
optimized HLO: kind, bytes, replica groups. Blocks are unrolled and the program is compiled with 1
and with 2 DiT blocks; the per-block difference times ``num_blocks - 1`` plus the 1-block program
gives the whole model (a scanned loop body would be counted once).

Bytes per device follow the ring algorithms: all-gather and all-to-all move (n-1)/n of the gathered
bytes, reduce-scatter (n-1)/n of its input, all-reduce twice that, collective-permute its buffer.
A replica group inside one node (``--gpus_per_node`` consecutive device ids: the fsdp x tensor axes
of the mesh when their product is the node size) goes over NVLink (``--nvlink_gbs``, ~300 GB/s usable
per GPU), any other over InfiniBand (``--ib_gbs``, ~50 GB/s per GPU). Times are compared with the
step's compute at the goal rate (``--goal_samples_per_s`` per GPU): what fraction of it the
collectives would need if nothing overlapped. Whether they overlap is decided by XLA's GPU
latency-hiding scheduler, which a CPU compile does not run: the figures are an upper bound on the
exposed time, not a prediction of it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # puts the repository root on sys.path for `configs`
from absl import app, flags

_MESHES = flags.DEFINE_string(
    "meshes", "1,8,1;8,8,1;1,64,1;32,8,1;32,4,2", "';'-separated data,fsdp,tensor meshes (product = GPU count)"
)
_BATCH = flags.DEFINE_integer("batch_per_device", 30, "dataloader_train.batch_size (per data-parallel device)")
_NODE = flags.DEFINE_integer("gpus_per_node", 8, "GPUs that share NVLink")
_NVLINK = flags.DEFINE_float("nvlink_gbs", 300.0, "usable NVLink bandwidth per GPU, GB/s")
_IB = flags.DEFINE_float("ib_gbs", 50.0, "usable InfiniBand bandwidth per GPU, GB/s")
_GOAL = flags.DEFINE_float("goal_samples_per_s", 14.0, "goal training rate per GPU (samples/s)")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<kind>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|f8e4m3fn|f8e5m2)\[([0-9,]*)\]")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
             "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}  # fmt: skip


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, a tuple's elements summed."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _ITEMSIZE[dtype]
    return total


def replica_groups(line: str, num_devices: int) -> list[list[int]]:
    """The replica groups of a collective: explicit ``{{0,1},{2,3}}``, iota ``[G,S]<=[dims]T(perm)`` or
    mesh axes ``mesh['data'=2,'fsdp'=4,'tensor'=1] {'fsdp'}`` (devices in the mesh's row-major order)."""
    import numpy as np

    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
        chosen = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(2))]
        rest = [i for i in range(len(names)) if i not in chosen]
        ids = np.arange(math.prod(sizes)).reshape(sizes).transpose(rest + chosen)
        return ids.reshape(-1, math.prod(sizes[i] for i in chosen)).tolist()
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
    if m:
        g, s = int(m.group(1)), int(m.group(2))
        dims = [int(x) for x in m.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(x) for x in m.group(4).split(",")])
        return ids.reshape(g, s).tolist()
    m = re.search(r"replica_groups=\{(\{[0-9,]*\}(?:,\{[0-9,]*\})*)\}", line)
    if m:
        groups = [[int(x) for x in grp.split(",") if x] for grp in re.findall(r"\{([0-9,]*)\}", m.group(1))]
        return [grp for grp in groups if grp] or [list(range(num_devices))]
    if "source_target_pairs" in line:
        pairs = re.findall(r"\{(\d+),(\d+)\}", line.split("source_target_pairs=")[1])
        return [[int(a), int(b)] for a, b in pairs]
    return [list(range(num_devices))]  # empty groups: all devices


def collectives(hlo: str, num_devices: int, node: int) -> list[dict]:
    """Every collective of the optimized HLO with its per-device bytes and link (nvlink or ib)."""
    out = []
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m or "-done" in line.split("=")[1].split("(")[0]:
            continue
        kind, shape = m.group("kind"), m.group("shape")
        nbytes = shape_bytes(shape)
        if m.group("start") and shape.startswith("("):
            nbytes //= 2  # async start ops carry (operand, result) in their tuple
        groups = replica_groups(line, num_devices)
        n = max(len(g) for g in groups)
        if kind in ("all-gather", "all-to-all"):
            moved = nbytes * (n - 1) / n
        elif kind == "reduce-scatter":
            moved = nbytes * (n - 1)  # its output is 1/n of the reduced input
        elif kind == "all-reduce":
            moved = 2 * nbytes * (n - 1) / n
        else:
            moved = nbytes
        in_node = all(len({d // node for d in g}) == 1 for g in groups)
        out.append({"kind": kind, "group_size": n, "bytes": moved, "link": "nvlink" if in_node else "ib"})
    return out


def summarise(ops: list[dict]) -> dict[str, dict]:
    """{kind@link: {count, bytes}} of a list of collectives."""
    table: dict[str, dict] = {}
    for op in ops:
        row = table.setdefault(f"{op['kind']}@{op['link']}", {"count": 0, "bytes": 0.0, "group_size": 0})
        row["count"] += 1
        row["bytes"] += op["bytes"]
        row["group_size"] = max(row["group_size"], op["group_size"])
    return table


def compile_dit_step(mesh_sizes: tuple[int, int, int], num_blocks: int) -> str:
    import jax

    from configs.cosmos_policy import get_config
    from cosmos_policy_jax.parallel.mesh import make_mesh

    c = get_config("libero,synthetic,random_weights")
    c.model.net.attention_impl = "xla"
    c.model.net.num_blocks = num_blocks
    c.model.net.scan_layers = False
    c.dataloader_train.batch_size = _BATCH.value
    c.dataloader_train.global_batch_size = None
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh_sizes
    n = math.prod(mesh_sizes)
    mesh = make_mesh(c.parallel, jax.devices()[:n])
    b = common.abstract_bench(c, mesh)
    with jax.set_mesh(mesh):
        latent = common.abstract_latent(b)
        args = (b.state.params, b.state.opt_state, latent, common.dit_batch(b.batch), b.rest, jax.random.key(0))
        return common.make_dit_step(b).lower(*args).compile().as_text()


def plan_mesh(mesh_sizes: tuple[int, int, int], num_blocks: int) -> dict:
    n = math.prod(mesh_sizes)
    t0 = time.perf_counter()
    one = summarise(collectives(compile_dit_step(mesh_sizes, 1), n, _NODE.value))
    two = summarise(collectives(compile_dit_step(mesh_sizes, 2), n, _NODE.value))
    rows = {}
    for key in sorted(set(one) | set(two)):
        a = one.get(key, {"count": 0, "bytes": 0.0, "group_size": 0})
        b = two.get(key, {"count": 0, "bytes": 0.0, "group_size": 0})
        count = a["count"] + (b["count"] - a["count"]) * (num_blocks - 1)
        nbytes = a["bytes"] + (b["bytes"] - a["bytes"]) * (num_blocks - 1)
        gbs = _NVLINK.value if key.endswith("@nvlink") else _IB.value
        rows[key] = {
            "count": count,
            "group_size": max(a["group_size"], b["group_size"]),
            "gb_per_device": round(nbytes / 1e9, 3),
            "seconds": round(nbytes / (gbs * 1e9), 4),
        }
    compute_s = _BATCH.value / _GOAL.value
    comm_s = sum(r["seconds"] for r in rows.values())
    return {
        "gpus": n,
        "mesh": dict(zip(("data", "fsdp", "tensor"), mesh_sizes)),
        "collectives": rows,
        "comm_s": round(comm_s, 3),
        "nvlink_s": round(sum(r["seconds"] for k, r in rows.items() if k.endswith("@nvlink")), 3),
        "ib_s": round(sum(r["seconds"] for k, r in rows.items() if k.endswith("@ib")), 3),
        "compute_s_at_goal": round(compute_s, 3),
        "comm_fraction_of_compute": round(comm_s / compute_s, 3),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


def format_row(r: dict) -> str:
    head = (
        f"{r['gpus']} GPUs mesh {r['mesh']}: collectives {r['comm_s']} s per step (NVLink {r['nvlink_s']} s, "
        f"IB {r['ib_s']} s) vs compute {r['compute_s_at_goal']} s at the goal rate "
        f"({r['comm_fraction_of_compute']:.0%} if nothing overlapped)"
    )
    lines = [head]
    for key, c in sorted(r["collectives"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(
            f"  {key:28s} x{c['count']:5d} groups of {c['group_size']:3d}: {c['gb_per_device']:8.3f} GB/device "
            f"{c['seconds']:7.3f} s"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    import jax

    meshes = [tuple(int(x) for x in m.split(",")) for m in _MESHES.value.split(";") if m]
    jax.config.update("jax_num_cpu_devices", max(math.prod(m) for m in meshes))
    from configs.cosmos_policy import get_config

    num_blocks = int(get_config("libero").model.net.num_blocks)
    rows = []
    for mesh in meshes:
        row = plan_mesh(mesh, num_blocks)
        rows.append(row)
        if not _JSON.value:
            print(format_row(row), flush=True)
    if _JSON.value:
        out = {
            "benchmark": "comm_plan",
            "batch_per_device": _BATCH.value,
            "num_blocks": num_blocks,
            "nvlink_gbs": _NVLINK.value,
            "ib_gbs": _IB.value,
            "goal_samples_per_s": _GOAL.value,
            "rows": rows,
            **common.run_info(),
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    app.run(main)
