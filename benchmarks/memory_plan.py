r"""Memory plan of the 2B ``libero`` training step: compile (never run) on fake CPU devices, read XLA's analysis.

    python benchmarks/memory_plan.py                       # fsdp=8 and (data 2, fsdp 4), batch 30/device
    python benchmarks/memory_plan.py --meshes=1,8,1 --remat=dots_saveable --batch_steps=1,6 --json
    python benchmarks/memory_plan.py --num_blocks=4 ...    # shrink the DiT (then scale per block)

For every (mesh, remat policy, VAE batch_steps) the trainer's jitted micro-step (VAE encode, loss,
backward, MultiSteps(clip, AdamW)) is lowered from abstract inputs (ShapeDtypeStructs carrying the
trainer's shardings: nothing is allocated) and compiled for ``--devices`` fake CPU devices; the
per-device sizes of ``compiled.memory_analysis()`` are printed: arguments (train state shard,
VAE parameters, batch shard), outputs, aliased (donated state), temporaries, generated code.
``--parts=vae,dit`` also compiles the VAE encode and the DiT step on precomputed latents alone.

What a CPU compile can and cannot say about a GPU: the SPMD partitioning, the remat decisions and
the parameter/optimizer shards are the same; the temporaries are the CPU backend's buffer
assignment. ``--attention_impl=xla`` materialises the (B, heads, L, L) attention scores, which
cuDNN flash attention on a GPU never stores; ``dots_with_no_batch_dims_saveable`` does not save
them (nor any batched matmul) and is the closer proxy for the GPU step with ``dots_saveable``.
``--conv_impl=conv3d`` (default here) is the convolution the VAE uses on a GPU.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from absl import app, flags

_CONFIG_ARG = flags.DEFINE_string("config_arg", "libero,synthetic", "configs/cosmos_policy.py argument")
_DEVICES = flags.DEFINE_integer("devices", 8, "fake CPU devices (jax_num_cpu_devices)")
_MESHES = flags.DEFINE_string("meshes", "1,8,1;2,4,1", "';'-separated data,fsdp,tensor meshes")
_REMAT = flags.DEFINE_list("remat", ["attention_saveable", "full"], "model.net.remat_policy values")
_BATCH_STEPS = flags.DEFINE_list("batch_steps", ["1", "6"], "model.tokenizer.batch_steps values")
_BATCH = flags.DEFINE_integer("batch_per_device", 30, "dataloader_train.batch_size (per data-parallel device)")
_BLOCKS = flags.DEFINE_integer("num_blocks", 0, "override model.net.num_blocks (0: the config's, 28)")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype of the net, the VAE and the batch")
_CONV = flags.DEFINE_string("conv_impl", "conv3d", "model.tokenizer.conv_impl (conv3d = the GPU kernel)")
_ATTN = flags.DEFINE_string("attention_impl", "xla", "model.net.attention_impl (cudnn cannot compile on CPU)")
_PARTS = flags.DEFINE_list("parts", ["step"], "step (full micro-step), vae (encode alone), dit (DiT step alone)")
_GPUS = flags.DEFINE_list("gpu_gib", ["80", "141"], "GPU memory sizes (GB as sold) to compare with")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")

# Usable fraction of a GPU's memory for XLA buffers: allocator slack, CUDA context, cuDNN/NCCL
# workspaces (needs XLA_PYTHON_CLIENT_MEM_FRACTION=0.95; JAX's default preallocation is 0.75).
USABLE_FRACTION = 0.92


def build_config(mesh: tuple[int, int, int], remat: str, batch_steps: int):
    from configs.cosmos_policy import get_config

    c = get_config(_CONFIG_ARG.value)
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = mesh
    c.dataloader_train.batch_size = _BATCH.value
    c.dataloader_train.global_batch_size = None
    c.model.net.remat_policy = remat
    c.model.net.attention_impl = _ATTN.value
    c.model.precision = c.model.net.dtype = c.model.tokenizer.dtype = _DTYPE.value
    if _BLOCKS.value:
        c.model.net.num_blocks = _BLOCKS.value
    c.model.tokenizer.batch_steps = batch_steps
    c.model.tokenizer.conv_impl = _CONV.value
    c.checkpoint.load_path = ""
    c.model.tokenizer.load_path = ""
    c.model.tokenizer.random_init = True
    return c


def plan_one(mesh_sizes, remat: str, batch_steps: int, parts) -> dict:
    import jax

    from cosmos_policy_jax.parallel.mesh import make_mesh

    config = build_config(mesh_sizes, remat, batch_steps)
    mesh = make_mesh(config.parallel, jax.devices()[: _DEVICES.value])
    b = common.abstract_bench(config, mesh)
    row: dict = {
        "mesh": dict(mesh.shape),
        "remat_policy": remat,
        "vae_batch_steps": batch_steps,
        "batch_per_device": _BATCH.value,
        "global_batch": b.global_batch,
        "num_blocks": int(config.model.net.num_blocks),
    }
    with jax.set_mesh(mesh):
        if "step" in parts:
            compiled, secs = common.compile_timed(common.jit_full_step(b), b.state, b.batch, b.vae, b.rest)
            row["step"] = {"compile_s": round(secs, 1), **(common.memory_analysis(compiled) or {})}
            del compiled
        if "vae" in parts:
            compiled, secs = common.compile_timed(common.make_vae_encode(b), b.vae, b.batch["video"])
            row["vae"] = {"compile_s": round(secs, 1), **(common.memory_analysis(compiled) or {})}
            del compiled
        if "dit" in parts:
            latent = common.abstract_latent(b)
            args = (b.state.params, b.state.opt_state, latent, common.dit_batch(b.batch), b.rest, jax.random.key(0))
            compiled, secs = common.compile_timed(common.make_dit_step(b), *args)
            row["dit"] = {"compile_s": round(secs, 1), **(common.memory_analysis(compiled) or {})}
            del compiled
    return row


def verdict(total_bytes: int, gpus: list[float]) -> dict[str, bool]:
    return {f"fits_{g:g}GB": total_bytes <= g * 1e9 * USABLE_FRACTION for g in gpus}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    import jax

    jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    meshes = [tuple(int(x) for x in m.split(",")) for m in _MESHES.value.split(";") if m]
    gpus = [float(g) for g in _GPUS.value]
    parts = set(_PARTS.value)
    rows = []
    t0 = time.perf_counter()
    for mesh in meshes:
        for remat in _REMAT.value:
            for steps in (int(s) for s in _BATCH_STEPS.value):
                row = plan_one(mesh, remat, steps, parts)
                for part in ("step", "vae", "dit"):
                    if part in row and "total_bytes" in row[part]:
                        row[part].update(verdict(row[part]["total_bytes"], gpus))
                rows.append(row)
                if not _JSON.value:
                    print(format_row(row), flush=True)
    out = {
        "benchmark": "memory_plan",
        "config_arg": _CONFIG_ARG.value,
        "dtype": _DTYPE.value,
        "conv_impl": _CONV.value,
        "attention_impl": _ATTN.value,
        "usable_fraction": USABLE_FRACTION,
        "rows": rows,
        "total_compile_s": round(time.perf_counter() - t0, 1),
        **common.run_info(),
    }
    if _JSON.value:
        print(json.dumps(out), flush=True)


def format_row(row: dict) -> str:
    head = (
        f"mesh {row['mesh']} remat={row['remat_policy']} vae batch_steps={row['vae_batch_steps']} "
        f"batch {row['batch_per_device']}/device ({row['global_batch']} global), {row['num_blocks']} blocks"
    )
    lines = [head]
    for part in ("step", "vae", "dit"):
        if part not in row:
            continue
        r = row[part]
        sizes = ", ".join(
            f"{k} {common.gib(r[k]):.2f}"
            for k in ("argument_size", "output_size", "alias_size", "temp_size", "generated_code_size", "total_bytes")
            if k in r
        )
        fits = ", ".join(f"{k}={v}" for k, v in r.items() if k.startswith("fits_"))
        lines.append(f"  {part}: compile {r['compile_s']} s; per device GiB: {sizes}; {fits}")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
