r"""Training-step benchmark: compile time, step time, samples/s, model FLOPs, TFLOP/s per device, MFU, memory.

    python benchmarks/train_step.py --config=configs/cosmos_policy.py:bench --json
    python benchmarks/train_step.py --config=configs/cosmos_policy.py:libero,synthetic,random_weights \
        --config.dataloader_train.batch_size=8 --mesh=1,-1,1 --json
    COSMOS_POLICY_CPU_ONEDNN=0 python benchmarks/train_step.py --json   # XLA's default CPU kernels, no oneDNN

``--config`` and its ``--config.x=y`` overrides work exactly as in the trainer. Three programs are
timed on one fixed global batch from the config's own pipeline (synthetic for ``bench``), each
compiled once, medians over ``--steps`` timed calls after ``--warmup`` untimed ones, every call
waited for with ``block_until_ready``:

* ``step_time_s``: the trainer's jitted micro-step (VAE encode, policy loss, backward,
  MultiSteps(clip, AdamW)), state donated;
* ``dit_step_time_s``: the same on precomputed latents (DiT forward, backward, clip, AdamW);
* ``vae_encode_s``: the VAE encode of the batch alone.

FLOPs are analytic (``training/flops.py``: matmuls, convolutions and attention products, 2 per
multiply-add; DiT training = forward + backward; the frozen VAE encode forward only).
``model_flops_per_step`` is the full step's (DiT training + VAE encode) for the global batch;
``tflops_per_device`` and ``mfu`` follow from the median step time. The MFU denominator is
``--peak_tflops`` if given, else a ``--matmul_size`` square matmul measured on one device in the
net's compute dtype (``peak_flops_per_device``). ``xla_flops_*`` are XLA's own estimates
(``compiled.cost_analysis()``; a loop body, e.g. scanned DiT blocks, is counted once). Memory:
``memory_analysis`` per device from XLA and, where the backend reports it, the allocator's peak.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/cosmos_policy.py:bench", "Config file and arg, e.g. configs/cosmos_policy.py:bench"
)
_MESH = flags.DEFINE_string("mesh", None, "data,fsdp,tensor mesh sizes (one may be -1); default: config.parallel")
_STEPS = flags.DEFINE_integer("steps", 5, "timed calls per program")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed calls per program before timing")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "peak TFLOP/s per device for MFU; 0: measure a large matmul")
_MATMUL = flags.DEFINE_integer("matmul_size", 0, "square matmul size for the measured peak (0: by backend)")
_PARTS = flags.DEFINE_list("parts", ["full", "dit", "vae"], "programs to time: full, dit, vae")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "fake CPU devices (jax_num_cpu_devices), 0: JAX's default")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")


def run(config, mesh_flag: str | None, *, steps: int, warmup: int, peak_tflops: float, matmul_size: int, parts) -> dict:
    import jax

    from cosmos_policy_jax.parallel.mesh import make_mesh
    from cosmos_policy_jax.training import flops as flops_lib

    common.apply_mesh_flag(config, mesh_flag)
    mesh = make_mesh(config.parallel)
    b = common.build_bench(config, mesh)
    per_sample = flops_lib.train_flops_per_sample(config)
    out = _header(config, mesh, b.global_batch, per_sample)
    out.update(_peak(out["compute_dtype"], peak_tflops, matmul_size))
    timing = dict(steps=steps, warmup=warmup)
    with jax.set_mesh(mesh):
        latent = None
        if "vae" in parts or "dit" in parts:
            latent = _time_vae(b, out, per_sample, time_it="vae" in parts, **timing)
        if "dit" in parts:
            _time_dit(b, out, per_sample, latent, **timing)
        if "full" in parts:
            _time_full(b, out, **timing)
    out["peak_device_memory_bytes"] = common.device_peak_memory()
    out["steps"], out["warmup"] = steps, warmup
    out.update(common.run_info())
    return out


def _header(config, mesh, gb: int, per_sample: dict) -> dict:
    """What was run: config, mesh, batch, dtypes and the analytic FLOPs of each program."""
    return {
        "benchmark": "train_step",
        "config": config.get("config_arg", ""),
        "mesh": dict(mesh.shape),
        "global_batch": gb,
        "compute_dtype": str(config.model.net.dtype),
        "remat_policy": str(config.model.net.remat_policy),
        "vae_conv_impl": _conv_impl(config),
        "model_flops_per_sample": per_sample["total"],
        "dit_train_flops_per_sample": per_sample["dit_train"],
        "vae_encode_flops_per_sample": per_sample["vae_encode"],
        "model_flops_per_step": per_sample["total"] * gb,
        "dit_flops_per_step": per_sample["dit_train"] * gb,
        "vae_flops_per_step": per_sample["vae_encode"] * gb,
    }


def _peak(compute_dtype: str, peak_tflops: float, matmul_size: int) -> dict:
    """The MFU denominator: given, or a large matmul measured on one device."""
    if peak_tflops > 0:
        return {"peak_source": "given", "peak_flops_per_device": peak_tflops * 1e12}
    return {
        "peak_source": f"matmul {matmul_size or common.default_matmul_size()}^2 {compute_dtype}",
        "peak_flops_per_device": common.measure_matmul_peak(compute_dtype, matmul_size or None),
    }


def _rate(flops: float, seconds: float, n_dev: int) -> float:
    """FLOP/s per device."""
    return flops / seconds / n_dev


def _time_vae(b, out: dict, per_sample: dict, *, time_it: bool, steps: int, warmup: int):
    """Compile the VAE encode of the batch (and time it with ``time_it``); returns the latent."""
    enc = common.make_vae_encode(b)
    compiled, secs = common.compile_timed(enc, b.vae, b.batch["video"])
    latent = compiled(b.vae, b.batch["video"])
    out["vae_compile_s"] = round(secs, 2)
    out["vae_xla_flops"] = common.xla_flops(compiled)
    out["vae_memory"] = common.memory_analysis(compiled)
    if time_it:
        times = common.time_calls(lambda: compiled(b.vae, b.batch["video"]), steps=steps, warmup=warmup)
        out.update(common.summary(times, "vae_encode_s"))
        flops = per_sample["vae_encode"] * b.global_batch
        out["vae_tflops_per_device"] = _rate(flops, out["vae_encode_s_median"], b.mesh.devices.size) / 1e12
    return latent


def _time_dit(b, out: dict, per_sample: dict, latent, *, steps: int, warmup: int) -> None:
    """The DiT step on precomputed latents, on its own copies (it donates parameters and optimizer state)."""
    import jax

    params = jax.tree.map(lambda x: x.copy(), b.state.params)
    opt_state = jax.tree.map(lambda x: x.copy(), b.state.opt_state)
    small, key = common.dit_batch(b.batch), jax.random.key(0)
    compiled, secs = common.compile_timed(common.make_dit_step(b), params, opt_state, latent, small, b.rest, key)
    out["dit_compile_s"] = round(secs, 2)
    out["dit_xla_flops"] = common.xla_flops(compiled)
    out["dit_memory"] = common.memory_analysis(compiled)
    holder = [params, opt_state]

    def dit_call():
        holder[0], holder[1], loss = compiled(holder[0], holder[1], latent, small, b.rest, key)
        return loss

    out.update(common.summary(common.time_calls(dit_call, steps=steps, warmup=warmup), "dit_step_time_s"))
    rate = _rate(per_sample["dit_train"] * b.global_batch, out["dit_step_time_s_median"], b.mesh.devices.size)
    out["dit_tflops_per_device"] = rate / 1e12
    out["dit_mfu"] = rate / out["peak_flops_per_device"]


def _time_full(b, out: dict, *, steps: int, warmup: int) -> None:
    """The trainer's jitted micro-step, state donated."""
    compiled, secs = common.compile_timed(common.jit_full_step(b), b.state, b.batch, b.vae, b.rest)
    out["compile_s"] = round(secs, 2)
    out["xla_flops_per_step"] = common.xla_flops(compiled)
    out["memory"] = common.memory_analysis(compiled)
    holder = [b.state]

    def full_call():
        holder[0], metrics = compiled(holder[0], b.batch, b.vae, b.rest)
        return metrics

    times = common.time_calls(full_call, steps=steps, warmup=warmup)
    b.state = holder[0]
    out.update(common.summary(times, "step_time_s"))
    med = out["step_time_s_median"]
    rate = _rate(out["model_flops_per_step"], med, b.mesh.devices.size)
    out["samples_per_s"] = b.global_batch / med
    out["tflops_per_device"] = rate / 1e12
    out["mfu"] = rate / out["peak_flops_per_device"]


def _conv_impl(config) -> str:
    from cosmos_policy_jax.models.vae import resolve_conv_impl

    return resolve_conv_impl(str(config.model.tokenizer.get("conv_impl", "auto")))


def _fmt(x, unit: str = "", scale: float = 1.0, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x / scale:.{nd}f}{unit}"


def report(r: dict) -> str:
    lines = [
        f"train_step {r['config']} mesh={r['mesh']} global_batch={r['global_batch']} {r['compute_dtype']} "
        f"on {r['backend']} ({r['device_kind']} x{r['num_devices']}), load {r['load_avg']}",
        f"  peak per device: {_fmt(r['peak_flops_per_device'], ' GFLOP/s', 1e9, 1)} ({r['peak_source']})",
    ]
    if "step_time_s_median" in r:
        lines.append(
            f"  full step: compile {r['compile_s']} s, median {r['step_time_s_median']:.3f} s "
            f"(min {r['step_time_s_min']:.3f}, max {r['step_time_s_max']:.3f}), {r['samples_per_s']:.3f} samples/s, "
            f"{r['model_flops_per_step'] / 1e9:.1f} GFLOP/step, {r['tflops_per_device'] * 1e3:.1f} GFLOP/s/device, "
            f"MFU {r['mfu']:.1%}"
        )
    if "dit_step_time_s_median" in r:
        lines.append(
            f"  DiT step on latents: median {r['dit_step_time_s_median']:.3f} s, "
            f"{r['dit_flops_per_step'] / 1e9:.1f} GFLOP, {r['dit_tflops_per_device'] * 1e3:.1f} GFLOP/s/device, "
            f"MFU {r['dit_mfu']:.1%}"
        )
    if "vae_encode_s_median" in r:
        lines.append(
            f"  VAE encode ({r['vae_conv_impl']}): median {r['vae_encode_s_median']:.3f} s, "
            f"{r['vae_flops_per_step'] / 1e12:.3f} TFLOP, {r['vae_tflops_per_device'] * 1e3:.1f} GFLOP/s/device"
        )
    mem = r.get("memory") or r.get("dit_memory")
    if mem:
        lines.append(
            "  XLA memory per device (GiB): "
            + ", ".join(f"{k} {common.gib(v)}" for k, v in mem.items() if k != "alias_size")
        )
    if r.get("peak_device_memory_bytes"):
        lines.append(f"  allocator peak: {common.gib(r['peak_device_memory_bytes'])} GiB")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _CPU_DEVICES.value:
        import jax

        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    r = run(
        _CONFIG.value,
        _MESH.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        peak_tflops=_PEAK.value,
        matmul_size=_MATMUL.value,
        parts=set(_PARTS.value),
    )
    print(json.dumps(r) if _JSON.value else report(r), flush=True)


if __name__ == "__main__":
    common.apply_project_xla_defaults()
    app.run(main)
