"""Time the Wan2.1 VAE encode (random weights, compiled once, median over timed runs).

    python benchmarks/vae_encode.py                                   # bench size (2,3,33,64,64), float32
    python benchmarks/vae_encode.py --size=224 --dtype=bfloat16 --json  # production size
    COSMOS_POLICY_CPU_ONEDNN=0 python benchmarks/vae_encode.py        # XLA's default CPU kernels, no oneDNN

Prints compile time and encode time (median/min/max) and, with ``--json``, one JSON line.
The analytic FLOP count covers the convolutions and attention matmuls (2 FLOPs per MAC).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmos_policy_jax.models.vae import (
    WanVAE,
    WanVAEConfig,
    encoder_layout,
    latent_num_frames,
    resolve_conv_impl,
)


def encode_flops(cfg: WanVAEConfig, b: int, t: int, h: int, w: int) -> float:
    """Multiply-add FLOPs (x2) of the encoder convolutions, attention and the final 1x1 conv."""
    flops = 0.0

    def conv(c_in, c_out, taps, positions):
        return 2.0 * c_in * c_out * taps * positions

    n = b * t * h * w
    flops += conv(3, cfg.dim, 27, n)
    for kind, c_in, c_out in encoder_layout(cfg):
        if kind == "res":
            flops += conv(c_in, c_out, 27, n) + conv(c_out, c_out, 27, n)
            if c_in != c_out:
                flops += conv(c_in, c_out, 1, n)
        else:
            h, w = h // 2, w // 2
            n = b * t * h * w
            flops += conv(c_in, c_out, 9, n)
            if kind == "downsample3d":
                t = 1 + (t - 1) // 2
                n = b * t * h * w
                flops += conv(c_in, c_out, 3, b * (t - 1) * h * w)
    top = cfg.dim * cfg.dim_mult[-1]
    flops += 2 * 2 * conv(top, top, 27, n)  # two middle residual blocks
    flops += conv(top, 3 * top, 1, n) + conv(top, top, 1, n) + 2 * 2.0 * b * t * (h * w) ** 2 * top
    flops += conv(top, 2 * cfg.z_dim, 27, n) + conv(2 * cfg.z_dim, cfg.z_dim, 1, n)
    return flops


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=64, help="H = W in pixels")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--conv-impl", default="auto", choices=["auto", "conv3d", "taps"])
    p.add_argument("--batch-steps", type=int, default=1, help="sequential passes over the batch (memory)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    cfg = WanVAEConfig(
        dim=args.dim,
        num_res_blocks=args.num_res_blocks,
        dtype=args.dtype,
        conv_impl=args.conv_impl,
        batch_steps=args.batch_steps,
    )
    model = WanVAE(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda s, v: nnx.merge(graphdef, s).encode(v))
    shape = (args.batch, 3, args.frames, args.size, args.size)
    video = jnp.asarray(np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32))

    t0 = time.perf_counter()
    compiled = encode.lower(state, video).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    compiled(state, video).block_until_ready()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compiled(state, video).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = encode_flops(cfg, args.batch, args.frames, args.size, args.size)
    med = statistics.median(times)
    result = {
        "shape": list(shape),
        "latent_shape": [args.batch, cfg.z_dim, latent_num_frames(args.frames), args.size // 8, args.size // 8],
        "dim": args.dim,
        "dtype": args.dtype,
        "conv_impl": resolve_conv_impl(args.conv_impl),
        "batch_steps": args.batch_steps,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compile_s": round(compile_s, 3),
        "encode_s_median": round(med, 4),
        "encode_s_min": round(min(times), 4),
        "encode_s_max": round(max(times), 4),
        "flops": flops,
        "gflops_per_s": round(flops / med / 1e9, 1),
        "xla_flops": common.xla_flops(compiled),
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "peak_device_memory_bytes": common.device_peak_memory(),
        "repeats": args.repeats,
        **common.run_info(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"VAE encode {tuple(shape)} {args.dtype} dim={args.dim} conv={result['conv_impl']} on {result['backend']}: "
            f"compile {compile_s:.1f}s, encode median {med:.3f}s (min {min(times):.3f}, max {max(times):.3f}) "
            f"over {args.repeats}, {flops / 1e12:.2f} TFLOP, {result['gflops_per_s']} GFLOP/s, load {result['load_avg']}"
        )
    return result


if __name__ == "__main__":
    common.apply_project_xla_defaults()
    main()
