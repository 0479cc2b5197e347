"""Best-of-N planning behind the evaluation's policy call (``eval.policies.Policy``)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from cosmos_policy_jax.eval.policies import PolicyInput, PolicyOutput
from cosmos_policy_jax.planning.config import PlanningConfig
from cosmos_policy_jax.planning.search import Models, PlanResult, bf16_proprio, plan, unnormalize


class PlanningPolicy:
    """``policy(batch, seed=S)``: plan for the M observations of ``batch`` with base seed S (query q: S + q).

    Returns the selected un-normalised chunks, their values and, in ``extras``, the selected query and
    every query's value.
    """

    def __init__(self, models: Models, cfg: Any, pcfg: PlanningConfig, stats: dict[str, np.ndarray]):
        self.models, self.cfg, self.pcfg = models, cfg, pcfg
        self.stats = {k: np.asarray(v) for k, v in stats.items()}

    def plan(self, batch: PolicyInput, seed: int, *, return_future_images: bool = False) -> PlanResult:
        """The full planning result for ``batch`` (normalised actions; see ``search.PlanResult``)."""
        proprio = None
        if self.cfg.layout.has("current_proprio"):
            # The reference's bf16 models round the proprio to bf16; a float32 model was trained without it.
            proprio = bf16_proprio(batch.proprio, self.stats, round_bf16=self.cfg.precision == "bfloat16")
        pcfg = dataclasses.replace(self.pcfg, seed=int(seed))
        return plan(
            self.models, self.cfg, pcfg, batch.images, proprio, batch.embedding,
            return_future_images=return_future_images,
        )  # fmt: skip

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        res = self.plan(batch, seed)
        return PolicyOutput(
            actions=unnormalize(res.actions_normalized, self.stats),
            value=res.value,
            extras={"selected_query": res.selected_query, "all_values": res.all_values},
        )


def build_planning_policy(
    config: Any,
    checkpoint: str,
    stats: dict[str, np.ndarray],
    pcfg: PlanningConfig,
    *,
    planning_checkpoint: str = "",
    use_ema: bool | None = None,
) -> tuple[PlanningPolicy, dict[str, Any]]:
    """(policy, report metadata): the policy weights for action queries and, with ``planning_checkpoint``,
    a second network of the same config for the future-state and value queries."""
    from cosmos_policy_jax.eval.model_policy import build_model_policy

    t0 = time.perf_counter()
    base, meta = build_model_policy(
        config, checkpoint, stats, use_ema=use_ema, num_steps=pcfg.num_denoising_steps_action
    )
    planning_net = None
    if planning_checkpoint:
        planning_net = build_model_policy(config, planning_checkpoint, stats, use_ema=use_ema)[0].net
    models = Models(policy=base.net, vae=base.vae, planning=planning_net)
    meta = {
        **meta,
        "planning": dataclasses.asdict(pcfg),
        "planning_checkpoint": planning_checkpoint or None,
        "load_s": round(time.perf_counter() - t0, 2),
    }
    return PlanningPolicy(models, base.cfg, pcfg, stats), meta
