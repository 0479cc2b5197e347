r"""Policy-query benchmark: one action chunk (VAE encode + the 5-step sampler + decode) with ``generate_actions``.

    python benchmarks/sample_actions.py --config=configs/cosmos_policy.py:bench --json
    python benchmarks/sample_actions.py --config=configs/cosmos_policy.py:demo --batch=8
    python benchmarks/sample_actions.py --config=configs/cosmos_policy.py:libero \
        --config.checkpoint.load_path= --json            # 2B at 224 px (a GPU job)

Random weights (speed does not depend on them), one observation per environment (``--batch``),
``make_policy_fn`` (``nnx.jit``, everything static but the arrays). Reports the first call (compile +
run), then median/min/max over ``--steps`` calls after ``--warmup``, queries/s and chunks/s, and the
analytic FLOPs: the VAE encode of the observation video plus one DiT forward per denoiser call
(``model.sampler.num_steps`` = 5 gives 5 calls: 4 solver steps and the final x0 at sigma_min).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cosmos_policy.py:bench", "Config file and arg")
_BATCH = flags.DEFINE_integer("batch", 1, "environments per query")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "sampler steps (0: model.sampler.num_steps)")
_STEPS = flags.DEFINE_integer("steps", 5, "timed queries")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed queries after the first (compiling) one")
_FUTURE = flags.DEFINE_bool("future_images", False, "also decode the predicted future images")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")


def observation(config, batch: int, seed: int = 0) -> tuple[dict, object, dict]:
    """(observation, instruction embedding, dataset statistics) with the config's sizes."""
    import numpy as np

    from cosmos_policy_jax.policy.layout import LatentLayout

    ds = config.dataloader_train.dataset
    layout = LatentLayout.from_config(config.model)
    rng = np.random.default_rng(seed)
    s = int(ds.final_image_size)
    obs = {slot: rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8) for slot in layout.current_image_slots}
    obs["proprio"] = rng.uniform(-1, 1, (batch, int(ds.proprio_dim))).astype(np.float32)
    emb = rng.standard_normal((int(ds.text_len), int(ds.text_dim))).astype(np.float32)
    stats = {
        "actions_min": -np.ones(int(ds.action_dim), np.float32),
        "actions_max": np.ones(int(ds.action_dim), np.float32),
        "proprio_min": -np.ones(int(ds.proprio_dim), np.float32),
        "proprio_max": np.ones(int(ds.proprio_dim), np.float32),
    }
    return obs, emb, stats


def run(config, batch: int, num_steps: int, steps: int, warmup: int, future_images: bool) -> dict:
    from flax import nnx

    from cosmos_policy_jax.diffusion.sampler import solver_plan
    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
    from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig, resolve_conv_impl
    from cosmos_policy_jax.policy.config import PolicyConfig
    from cosmos_policy_jax.policy.inference import make_policy_fn
    from cosmos_policy_jax.training import flops as flops_lib

    pcfg = PolicyConfig.from_config(config)
    num_steps = num_steps or pcfg.sampler_num_steps
    net = MinimalV1LVGDiT(DiTConfig.from_config(config.model.net), rngs=nnx.Rngs(0))
    vae_cfg = WanVAEConfig.from_config(config.model.tokenizer)
    vae = WanVAE(vae_cfg, rngs=nnx.Rngs(1))
    fn = make_policy_fn(pcfg, num_steps=num_steps, return_future_images=future_images)
    obs, emb, stats = observation(config, batch)

    t0 = time.perf_counter()
    common.block(fn(net, vae, obs, emb, stats))
    first = time.perf_counter() - t0
    times = common.time_calls(lambda: fn(net, vae, obs, emb, stats), steps=steps, warmup=warmup)

    plan = solver_plan(num_steps, pcfg.sampler_sigma_min, pcfg.sampler_sigma_max, pcfg.sampler_rho, pcfg.sampler_solver)
    nfe = int(plan.a.shape[0]) + 1
    shape, (frames, h, w) = flops_lib.policy_sample_shape(config)
    flops = batch * (
        flops_lib.vae_encode_flops(config.model.tokenizer, frames, h, w)
        + nfe * flops_lib.dit_forward_flops(config.model.net, shape)
    )
    out = {
        "benchmark": "sample_actions",
        "config": config.get("config_arg", ""),
        "batch": batch,
        "num_steps": num_steps,
        "denoiser_calls": nfe,
        "future_images": future_images,
        "compute_dtype": str(config.model.net.dtype),
        "vae_conv_impl": resolve_conv_impl(vae_cfg.conv_impl),
        "first_call_s": round(first, 3),
        **common.summary(times, "query_s"),
    }
    med = out["query_s_median"]
    out["queries_per_s"] = 1.0 / med
    out["chunks_per_s"] = batch / med
    out["flops_per_query"] = flops
    out["tflops_per_s"] = flops / med / 1e12
    out["peak_device_memory_bytes"] = common.device_peak_memory()
    out["steps"], out["warmup"] = steps, warmup
    out.update(common.run_info())
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    r = run(_CONFIG.value, _BATCH.value, _NUM_STEPS.value, _STEPS.value, _WARMUP.value, _FUTURE.value)
    if _JSON.value:
        print(json.dumps(r), flush=True)
    else:
        print(
            f"sample_actions {r['config']} batch={r['batch']} {r['num_steps']} steps ({r['denoiser_calls']} denoiser "
            f"calls), {r['compute_dtype']}, VAE conv {r['vae_conv_impl']} on {r['backend']}, load {r['load_avg']}:\n"
            f"  first call (compile + run) {r['first_call_s']} s; query median {r['query_s_median']:.4f} s "
            f"(min {r['query_s_min']:.4f}, max {r['query_s_max']:.4f}); {r['chunks_per_s']:.2f} chunks/s; "
            f"{r['flops_per_query'] / 1e9:.1f} GFLOP/query, {r['tflops_per_s'] * 1e3:.1f} GFLOP/s",
            flush=True,
        )


if __name__ == "__main__":
    common.apply_project_xla_defaults()
    app.run(main)
