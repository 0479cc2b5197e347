r"""Where the training step's time goes: per-component timing and a per-XLA-op profile.

    python benchmarks/profile_step.py --config=configs/cosmos_policy.py:bench
    python benchmarks/profile_step.py --parts=components,dit_ops --top=25 --json

Parts (``--parts``):

* ``components``: medians of separately compiled programs on the same batch: VAE encode, DiT
  forward (loss only), DiT forward + backward, the optimizer update alone (MultiSteps(clip, AdamW)),
  the DiT step (all three) and the trainer's full micro-step; ``other_s`` is what the full step
  spends beyond VAE + DiT step (fusion differences, the loss's batch preparation).
* ``vae_stages``: the VAE encoder stage by stage (conv1, each residual/downsample block, middle, head).
* ``step_ops`` / ``dit_ops``: one traced call of the full / DiT step under ``jax.profiler.trace``; each
  XLA thunk's time is mapped to its HLO instruction (opcode, convolution/matmul/elementwise, and the
  Python source frame that emitted it, e.g. ``vae.py:causal_conv3d`` or ``optax``), then summed
  by category and by source. Thread times are summed, so on a multi-threaded op the shares, not
  the absolute numbers, are what to read.

The trace is kept under ``--trace_dir`` (Perfetto: ``perfetto_trace.json.gz``).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cosmos_policy.py:bench", "Config file and arg")
_MESH = flags.DEFINE_string("mesh", None, "data,fsdp,tensor mesh sizes; default: config.parallel")
_STEPS = flags.DEFINE_integer("steps", 3, "timed calls per component")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed calls per component")
_PARTS = flags.DEFINE_list("parts", ["components", "vae_stages", "dit_ops", "step_ops"], "what to profile")
_TOP = flags.DEFINE_integer("top", 15, "HLO instructions listed per traced program")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "where traces go (default: a temporary directory)")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")

# ---------------------------------------------------------------------------------------------------
# HLO text -> per-instruction info


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_HEAVY = ("convolution", "dot")


def _kv(rest: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=(%?[\w.\-]+|\"[^\"]*\")", rest)
    return m.group(1).strip('"').lstrip("%") if m else None


def _tables(text: str) -> dict[int, tuple[str, str, int]]:
    """stack_frame_id -> (file, function, line) of the innermost frame, from the HLO text's tables."""
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if s in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = s
            continue
        if not s or s.startswith(("%", "ENTRY", "HloModule", "ROOT", "}")):
            section = None if not s or not s[0].isdigit() else section
            continue
        m = re.match(r"(\d+)\s+(.*)", s)
        if not m or section is None:
            continue
        i, body = int(m.group(1)), m.group(2)
        if section == "FileNames":
            files[i] = body.strip('"')
        elif section == "FunctionNames":
            funcs[i] = body.strip('"')
        elif section == "FileLocations":
            f = re.search(r"file_name_id=(\d+)", body)
            fn = re.search(r"function_name_id=(\d+)", body)
            ln = re.search(r"\bline=(\d+)", body)
            locs[i] = (int(f.group(1)) if f else 0, int(fn.group(1)) if fn else 0, int(ln.group(1)) if ln else 0)
        elif section == "StackFrames":
            loc = re.search(r"file_location_id=(\d+)", body)
            frames[i] = int(loc.group(1)) if loc else 0
    out = {}
    for fid, lid in frames.items():
        f, fn, ln = locs.get(lid, (0, 0, 0))
        out[fid] = (files.get(f, "?"), funcs.get(fn, "?"), ln)
    return out


def hlo_index(text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, category, source, op_name} for every instruction of the HLO module."""
    frames = _tables(text)
    comps: dict[str, list[str]] = collections.defaultdict(list)  # computation -> opcodes inside
    instrs: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        mc = _COMP.match(line)
        if mc and "=" not in line.split("(")[0]:
            current = mc.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode, rest = m.group(1), m.group(3), m.group(4)
        if current:
            comps[current].append(opcode)
            if opcode == "custom-call":
                comps[current].append(_kv(rest, "custom_call_target") or "")
        sf = _kv(rest, "stack_frame_id")
        src = frames.get(int(sf)) if sf and sf.isdigit() else None
        op_name = _kv(rest, "op_name") or ""
        instrs[name] = {
            "opcode": opcode,
            "calls": _kv(rest, "calls"),
            "target": _kv(rest, "custom_call_target"),
            "kind": _kv(rest, "kind"),
            "source": src,
            "op_name": op_name,
        }
    for info in instrs.values():
        inner = comps.get(info["calls"] or "", [])
        info["category"] = _category(info, inner)
        info["phase"] = "backward" if "transpose(" in info["op_name"] else "forward"
        info["where"] = _where(info["source"])
    return instrs


def _category(info: dict, inner: list[str]) -> str:
    ops = [info["opcode"], *inner, info.get("target") or ""]
    text = " ".join(ops).lower()
    if "convolution" in text or "conv" in (info.get("target") or "").lower():
        return "convolution"
    if "dot" in ops or "matmul" in text:
        return "matmul"
    if info["opcode"] in ("copy", "transpose") or (
        inner and set(inner) <= {"parameter", "copy", "transpose", "bitcast"}
    ):
        return "copy/transpose"
    if any(o in ("reduce", "reduce-window") for o in ops):
        return "reduction"
    if info["opcode"] in ("while", "conditional", "call"):
        return "control"
    if any(o in ("rng-bit-generator", "rng") for o in ops):
        return "rng"
    return "elementwise"


def _where(src: tuple[str, str, int] | None) -> str:
    """Short source label: ``vae.py:causal_conv3d``, ``optax``, ``jax`` ..."""
    if not src:
        return "?"
    path, fn, _ = src
    if "optax" in path:
        return "optax"
    base = os.path.basename(path)
    if "cosmos_policy_jax" in path:
        return f"{base}:{fn}"
    if "/jax/" in path or "/flax/" in path:
        return f"{'flax' if '/flax/' in path else 'jax'}:{base}"
    return f"{base}:{fn}"


def trace_op_times(trace_dir: str, names: set[str]) -> dict[str, float]:
    """Summed duration (s) of every traced event whose name is an HLO instruction of the program."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        return {}
    with gzip.open(paths[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            out[e["name"]] += e.get("dur", 0.0) * 1e-6
    return dict(out)


def op_profile(compiled, call, trace_dir: str, top: int) -> dict:
    """Trace one call of ``compiled`` (via ``call``) and attribute the time to HLO instructions."""
    import jax

    index = hlo_index(compiled.as_text())
    os.makedirs(trace_dir, exist_ok=True)
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        common.block(call())
    wall = time.perf_counter() - t0
    times = trace_op_times(trace_dir, set(index))
    total = sum(times.values()) or 1.0
    by_cat: dict[str, float] = collections.defaultdict(float)
    by_where: dict[str, float] = collections.defaultdict(float)
    by_phase: dict[str, float] = collections.defaultdict(float)
    for name, t in times.items():
        info = index[name]
        by_cat[info["category"]] += t
        by_where[info["where"]] += t
        by_phase[info["phase"]] += t
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return {
        "traced_wall_s": round(wall, 4),
        "op_time_sum_s": round(total, 4),
        "by_category": _shares(by_cat, total),
        "by_phase": _shares(by_phase, total),
        "by_source": _shares(by_where, total, limit=top),
        "top_ops": [
            {
                "name": n,
                "s": round(t, 4),
                "share": round(t / total, 4),
                "category": index[n]["category"],
                "phase": index[n]["phase"],
                "where": index[n]["where"],
                "op_name": index[n]["op_name"][-120:],
            }
            for n, t in ranked
        ],
        "trace_dir": trace_dir,
    }


def _shares(d: dict[str, float], total: float, limit: int | None = None) -> list[tuple[str, float, float]]:
    items = sorted(d.items(), key=lambda kv: -kv[1])
    if limit:
        items = items[:limit]
    return [(k, round(v, 4), round(v / total, 4)) for k, v in items]


# ---------------------------------------------------------------------------------------------------
# Components and VAE stages


def components(b: common.Bench, steps: int, warmup: int) -> dict:
    import jax

    key = jax.random.key(0)
    out = {}

    def timed(name, fn):
        out[name] = common.summary(common.time_calls(fn, steps=steps, warmup=warmup), name)[f"{name}_median"]

    enc = common.make_vae_encode(b)
    latent = enc(b.vae, b.batch["video"])
    timed("vae_encode_s", lambda: enc(b.vae, b.batch["video"]))
    small = common.dit_batch(b.batch)
    loss = common.make_dit_loss(b)
    timed("dit_forward_s", lambda: loss(b.state.params, latent, small, b.rest, key))
    grad = common.make_dit_grad(b)
    timed("dit_forward_backward_s", lambda: grad(b.state.params, latent, small, b.rest, key))
    grads = grad(b.state.params, latent, small, b.rest, key)[1]

    params = jax.tree.map(lambda x: x.copy(), b.state.params)
    opt_state = jax.tree.map(lambda x: x.copy(), b.state.opt_state)
    holder = [params, opt_state]
    upd = common.make_optimizer_update(b)

    def opt_call():
        holder[0], holder[1] = upd(holder[0], holder[1], grads)
        return holder[1]

    timed("optimizer_update_s", opt_call)
    step = common.make_dit_step(b)

    def dit_call():
        holder[0], holder[1], loss_value = step(holder[0], holder[1], latent, small, b.rest, key)
        return loss_value

    timed("dit_step_s", dit_call)
    full = common.jit_full_step(b)
    state_holder = [jax.tree.map(lambda x: x.copy(), b.state)]

    def full_call():
        state_holder[0], metrics = full(state_holder[0], b.batch, b.vae, b.rest)
        return metrics

    timed("full_step_s", full_call)
    out["dit_backward_s"] = round(out["dit_forward_backward_s"] - out["dit_forward_s"], 5)
    out["other_s"] = round(out["full_step_s"] - out["vae_encode_s"] - out["dit_step_s"], 5)
    return out


def vae_stages(b: common.Bench, steps: int, warmup: int) -> list[dict]:
    """Each encoder stage jitted on its real input; time, XLA FLOPs, output shape."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cosmos_policy_jax.policy.conditioning import normalize_video

    vae = nnx.merge(b.defs.vae_graphdef, b.vae)
    enc = vae.encoder
    stages = [("conv1", enc.conv1)]
    stages += [(f"downsamples[{i}] {type(m).__name__}", m) for i, m in enumerate(enc.downsamples)]
    stages += [(f"middle[{i}] {type(m).__name__}", m) for i, m in enumerate(enc.middle)]

    def head(x):
        return enc.head_conv(jax.nn.silu(enc.head_norm(x)))

    stages.append(("head", head))
    x = normalize_video(b.batch["video"], jnp.dtype(vae.cfg.dtype))
    x = jnp.transpose(x, (0, 2, 3, 4, 1))
    rows = []
    for name, mod in stages:
        fn = nnx.jit(lambda m, v: m(v)) if isinstance(mod, nnx.Module) else jax.jit(mod)
        call = (lambda fn=fn, mod=mod, x=x: fn(mod, x)) if isinstance(mod, nnx.Module) else (lambda fn=fn, x=x: fn(x))
        y = common.block(call())
        t = common.time_calls(call, steps=steps, warmup=warmup)
        flops = None
        if not isinstance(mod, nnx.Module):
            flops = common.xla_flops(fn.lower(x).compile())
        rows.append(
            {"stage": name, "in": list(x.shape), "out": list(y.shape), "s": round(min(t), 4), "xla_flops": flops}
        )
        x = y
    total = sum(r["s"] for r in rows) or 1.0
    for r in rows:
        r["share"] = round(r["s"] / total, 4)
    return rows


def run(config, mesh_flag, parts, steps: int, warmup: int, top: int, trace_dir: str | None) -> dict:
    import jax

    from cosmos_policy_jax.parallel.mesh import make_mesh

    common.apply_mesh_flag(config, mesh_flag)
    mesh = make_mesh(config.parallel)
    b = common.build_bench(config, mesh)
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="cosmos_profile_")
    out: dict = {"benchmark": "profile_step", "config": config.get("config_arg", ""), "global_batch": b.global_batch}
    with jax.set_mesh(mesh):
        if "components" in parts:
            out["components"] = components(b, steps, warmup)
        if "vae_stages" in parts:
            out["vae_stages"] = vae_stages(b, steps, warmup)
        if "dit_ops" in parts:
            key = jax.random.key(0)
            latent = common.make_vae_encode(b)(b.vae, b.batch["video"])
            small = common.dit_batch(b.batch)
            step = common.make_dit_step(b)
            params = jax.tree.map(lambda x: x.copy(), b.state.params)
            opt = jax.tree.map(lambda x: x.copy(), b.state.opt_state)
            compiled = step.lower(params, opt, latent, small, b.rest, key).compile()
            holder = [params, opt]

            def dit_call():
                holder[0], holder[1], loss = compiled(holder[0], holder[1], latent, small, b.rest, key)
                return loss

            for _ in range(warmup):
                common.block(dit_call())
            out["dit_ops"] = op_profile(compiled, dit_call, os.path.join(trace_dir, "dit"), top)
        if "step_ops" in parts:
            compiled = common.jit_full_step(b).lower(b.state, b.batch, b.vae, b.rest).compile()
            holder = [jax.tree.map(lambda x: x.copy(), b.state)]

            def full_call():
                holder[0], metrics = compiled(holder[0], b.batch, b.vae, b.rest)
                return metrics

            for _ in range(warmup):
                common.block(full_call())
            out["step_ops"] = op_profile(compiled, full_call, os.path.join(trace_dir, "step"), top)
    out.update(common.run_info())
    return out


def report(r: dict) -> str:
    lines = [f"profile_step {r['config']} global_batch={r['global_batch']} load {r['load_avg']} {r['xla_flags']}"]
    if "components" in r:
        lines.append("components (median s):")
        lines += [f"  {k:24s} {v:8.4f}" for k, v in r["components"].items()]
    if "vae_stages" in r:
        lines.append("VAE encoder stages (min s, share):")
        for s in r["vae_stages"]:
            gf = f"{s['xla_flops'] / 1e9:8.1f} GFLOP" if s["xla_flops"] else ""
            lines.append(f"  {s['stage']:34s} {s['s']:8.4f} {s['share']:6.1%} {s['out']!s:24s} {gf}")
    for part in ("dit_ops", "step_ops"):
        if part not in r:
            continue
        p = r[part]
        lines.append(f"{part}: traced wall {p['traced_wall_s']} s, op time (threads summed) {p['op_time_sum_s']} s")
        for title in ("by_category", "by_phase", "by_source"):
            lines.append(f"  {title}: " + ", ".join(f"{k} {share:.1%}" for k, _, share in p[title]))
        lines.append("  top ops:")
        for o in p["top_ops"]:
            lines.append(
                f"    {o['share']:6.1%} {o['s']:8.4f}s {o['category']:14s} {o['phase']:8s} {o['where']:34s} {o['name']}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    r = run(_CONFIG.value, _MESH.value, set(_PARTS.value), _STEPS.value, _WARMUP.value, _TOP.value, _TRACE_DIR.value)
    print(json.dumps(r) if _JSON.value else report(r), flush=True)


if __name__ == "__main__":
    common.apply_project_xla_defaults()
    app.run(main)
