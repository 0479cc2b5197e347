"""Best-of-N planning behind the evaluation's policy call (``eval.policies.Policy``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
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

    def run(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """The server's call (``policy.api.CosmosPolicy.run``'s interface): prepared rows -> result dicts.

        One planning call per row: a row's N queries, ensembles and depths are one batched call, and
        rows of other requests carry other base seeds (query q of a row uses its seed + q)."""
        out = []
        for r in rows:
            batch = PolicyInput(
                images={k: v[None] for k, v in r.images.items()},
                proprio=np.asarray(r.proprio)[None],
                embedding=np.asarray(r.embedding)[None],
            )
            want_images = bool(r.options.get("return_future_images"))
            res = self.plan(batch, r.seed, return_future_images=want_images)
            result = {
                "actions": unnormalize(res.actions_normalized, self.stats)[0].astype(np.float32),
                "value": np.asarray(res.value[0]),
                "selected_query": int(res.selected_query[0]),
                "all_actions": unnormalize(res.all_actions_normalized, self.stats)[0].astype(np.float32),
                "all_values": np.asarray(res.all_values[0]),
            }
            if want_images and res.future_images is not None:
                result["future_images"] = {k: np.asarray(v[0]) for k, v in res.future_images.items()}
            out.append(result)
        return out

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
    from cosmos_policy_jax.policy.api import build_model

    model, meta = build_model(config, checkpoint, use_ema=use_ema)
    return planning_policy_from_model(config, model, meta, stats, pcfg, planning_checkpoint, use_ema)


def planning_policy_from_model(
    config: Any,
    model: tuple[Any, Any, Any, Any],
    meta: dict[str, Any],
    stats: dict[str, np.ndarray],
    pcfg: PlanningConfig,
    planning_checkpoint: str = "",
    use_ema: bool | None = None,
) -> tuple[PlanningPolicy, dict[str, Any]]:
    """The planner over an already loaded ``(net graphdef, net state, vae graphdef, vae state)`` (e.g. a
    ``CosmosPolicy``'s: the weights are shared, not copied)."""
    from flax import nnx

    from cosmos_policy_jax.config_drift import check_checkpoint_matches
    from cosmos_policy_jax.policy.api import build_model
    from cosmos_policy_jax.policy.config import PolicyConfig

    if planning_checkpoint:  # before any weight is read: the planner shares the policy's latent layout
        check_checkpoint_matches(planning_checkpoint, config, name="planning checkpoint")
    t0 = time.perf_counter()
    net_def, net_state, vae_def, vae_state = model
    planning_net = None
    if planning_checkpoint:
        p_def, p_state = build_model(config, planning_checkpoint, use_ema=use_ema)[0][:2]
        planning_net = nnx.merge(p_def, p_state)
    models = Models(policy=nnx.merge(net_def, net_state), vae=nnx.merge(vae_def, vae_state), planning=planning_net)
    meta = {
        **meta,
        "planning": dataclasses.asdict(pcfg),
        "planning_checkpoint": planning_checkpoint or None,
        "load_s": round(float(meta.get("load_s", 0.0)) + time.perf_counter() - t0, 2),
    }
    return PlanningPolicy(models, PolicyConfig.from_config(config), pcfg, stats), meta
