r"""Planning latency: a best-of-N query (one batched call per stage) against plain queries.

    python benchmarks/planning_latency.py --config=configs/cosmos_policy.py:bench --json
    python benchmarks/planning_latency.py --config=configs/cosmos_policy.py:demo --num_queries=8

Random weights (speed does not depend on them), one observation. Three measurements through
``planning.search.plan``: the plain query (N=1, no world-model/value call: the policy's ordinary
action query), one planning query (N=1 with ``--ar_future_prediction --ar_value_prediction``: action,
future state and V(s') calls) and the best-of-N planning query (N queries, each stage one batched
call). ``serial_estimate_s`` = N x the N=1 planning query, what N separate queries would cost;
``batched_over_serial`` = best-of-N / that estimate. Each timing: median over ``--steps`` calls
after one compiling call.
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
_N = flags.DEFINE_integer("num_queries", 8, "N of the best-of-N query")
_ACTION = flags.DEFINE_integer("steps_action", 0, "denoising steps of action queries (0: model.sampler.num_steps)")
_FUTURE = flags.DEFINE_integer("steps_future", 1, "denoising steps of future-state queries")
_VALUE = flags.DEFINE_integer("steps_value", 1, "denoising steps of value queries")
_STEPS = flags.DEFINE_integer("steps", 3, "timed calls per measurement")
_JSON = flags.DEFINE_bool("json", False, "print one JSON line")


def _time(fn, steps: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    return first, common.time_calls(fn, steps=steps, warmup=0)


def run(config, n: int, steps_action: int, steps_future: int, steps_value: int, steps: int) -> dict:
    import numpy as np
    from flax import nnx

    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
    from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig
    from cosmos_policy_jax.planning.config import PlanningConfig
    from cosmos_policy_jax.planning.search import Models, plan
    from cosmos_policy_jax.policy.config import PolicyConfig

    cfg = PolicyConfig.from_config(config)
    steps_action = steps_action or cfg.sampler_num_steps
    models = Models(
        policy=MinimalV1LVGDiT(DiTConfig.from_config(config.model.net), rngs=nnx.Rngs(0)),
        vae=WanVAE(WanVAEConfig.from_config(config.model.tokenizer), rngs=nnx.Rngs(1)),
    )
    ds, rng = config.dataloader_train.dataset, np.random.default_rng(0)
    s = int(ds.final_image_size)
    images = {slot: rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8) for slot in cfg.layout.current_image_slots}
    proprio = rng.uniform(-1, 1, (1, cfg.proprio_dim)).astype(np.float32) if cfg.layout.has("current_proprio") else None
    emb = rng.standard_normal((1, int(ds.text_len), int(ds.text_dim))).astype(np.float32)
    planning = dict(
        ar_future_prediction=True,
        ar_value_prediction=True,
        mask_current_state_action_for_value_prediction=True,
        num_denoising_steps_future_state=steps_future,
        num_denoising_steps_value=steps_value,
    )
    settings = {
        "plain": PlanningConfig(num_denoising_steps_action=steps_action),
        "planning_n1": PlanningConfig(num_denoising_steps_action=steps_action, **planning),
        "best_of_n": PlanningConfig(num_denoising_steps_action=steps_action, num_queries_best_of_n=n, **planning),
    }
    out = {
        "benchmark": "planning_latency",
        "config": config.get("config_arg", ""),
        "num_queries": n,
        "steps_action": steps_action,
        "steps_future": steps_future,
        "steps_value": steps_value,
        "steps": steps,
    }
    for name, pcfg in settings.items():
        first, times = _time(lambda p=pcfg: plan(models, cfg, p, images, proprio, emb).all_values, steps)
        out[f"{name}_first_call_s"] = round(first, 3)
        out.update(common.summary(times, f"{name}_s"))
    out["serial_estimate_s"] = n * out["planning_n1_s_median"]
    out["batched_over_serial"] = out["best_of_n_s_median"] / out["serial_estimate_s"]
    out["best_of_n_over_plain"] = out["best_of_n_s_median"] / out["plain_s_median"]
    out.update(common.run_info())
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    r = run(_CONFIG.value, _N.value, _ACTION.value, _FUTURE.value, _VALUE.value, _STEPS.value)
    if _JSON.value:
        print(json.dumps(r), flush=True)
    else:
        print(
            f"planning_latency {r['config']} on {r['backend']}, load {r['load_avg']}: plain {r['plain_s_median']:.3f} s, "
            f"N=1 planning {r['planning_n1_s_median']:.3f} s, best-of-{r['num_queries']} {r['best_of_n_s_median']:.3f} s "
            f"(serial estimate {r['serial_estimate_s']:.3f} s, ratio {r['batched_over_serial']:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    common.apply_project_xla_defaults()
    app.run(main)
