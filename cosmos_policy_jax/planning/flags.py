"""Command-line flags of planning (the reference deploy server's names) for ``eval``."""

from __future__ import annotations

import dataclasses
from typing import Any

from cosmos_policy_jax.planning.aggregation import DEPTH_SCHEMES, FUTURE_SCHEMES, VALUE_SCHEMES
from cosmos_policy_jax.planning.config import PlanningConfig

_HELP = {
    "num_queries_best_of_n": "Best-of-N: action queries per step (query q uses seed + q); 1 = plain policy",
    "search_depth": "World-model rollout depth of each query (needs --ar_future_prediction)",
    "search_depth_value_aggregation_scheme": f"Values over depths: {' | '.join(DEPTH_SCHEMES)}",
    "ar_future_prediction": "Predict the future state of each chunk with a separate world-model call",
    "ar_value_prediction": "Score the predicted future state with a separate value call V(s')",
    "ar_qvalue_prediction": "Score the action with a separate value call Q(s,a) instead",
    "num_denoising_steps_action": "Denoising steps of action queries (default: --num_steps / config)",
    "num_denoising_steps_future_state": "Denoising steps of future-state queries",
    "num_denoising_steps_value": "Denoising steps of value queries",
    "use_ensemble_future_state_predictions": "Ensemble of future-state predictions (seeds s+i, steps linspace)",
    "num_future_state_predictions_in_ensemble": "Future-state ensemble size",
    "future_state_ensemble_aggregation_scheme": f"Future images of the ensemble: {' | '.join(FUTURE_SCHEMES)}",
    "use_ensemble_value_predictions": "Ensemble of value predictions per future state (seeds s+j)",
    "num_value_predictions_in_ensemble": "Value ensemble size per future state",
    "value_ensemble_aggregation_scheme": f"Value ensemble aggregation: {' | '.join(VALUE_SCHEMES)}",
    "mask_current_state_action_for_value_prediction": "V(s'): hide the current state and action from the value call",
    "mask_future_state_for_qvalue_prediction": "Q(s,a): hide the future state from the value call",
    "use_variance_scale": "Per-seed random scaling of the sampler's sigma range (the reference's variance scale)",
}


def define_flags() -> None:
    """Define one absl flag per ``PlanningConfig`` field (except the seed: eval's --seed) + --planning_checkpoint."""
    from absl import flags

    for f in dataclasses.fields(PlanningConfig):
        if f.name == "seed":
            continue
        default = None if f.name == "num_denoising_steps_action" else f.default
        if f.type == "bool":
            flags.DEFINE_bool(f.name, default, _HELP[f.name])
        elif f.type == "int":
            flags.DEFINE_integer(f.name, default, _HELP[f.name])
        else:
            flags.DEFINE_string(f.name, default, _HELP[f.name])
    flags.DEFINE_string("planning_checkpoint", "", "Planning model (world model + value) weights; '' = the policy")


def config_from_flags(values: Any, default_action_steps: int) -> PlanningConfig:
    """``PlanningConfig`` from parsed flags (``values``: absl FLAGS or any object with the attributes)."""
    kw = {f.name: getattr(values, f.name) for f in dataclasses.fields(PlanningConfig) if f.name != "seed"}
    if kw["num_denoising_steps_action"] is None:
        kw["num_denoising_steps_action"] = int(default_action_steps)
    return PlanningConfig(**kw)
