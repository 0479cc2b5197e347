"""Planning settings, with the reference deploy server's flag names and defaults (docs/planning.md)."""

from __future__ import annotations

import dataclasses

from cosmos_policy_jax.planning.aggregation import DEPTH_SCHEMES, FUTURE_SCHEMES, VALUE_SCHEMES


@dataclasses.dataclass(frozen=True)
class PlanningConfig:
    """How one planning query runs. ``num_queries_best_of_n=1`` without ``ar_*`` flags is a plain query."""

    num_queries_best_of_n: int = 1
    search_depth: int = 1
    search_depth_value_aggregation_scheme: str = "use_last_value"
    ar_future_prediction: bool = False
    ar_value_prediction: bool = False
    ar_qvalue_prediction: bool = False
    num_denoising_steps_action: int = 5
    num_denoising_steps_future_state: int = 1
    num_denoising_steps_value: int = 1
    use_ensemble_future_state_predictions: bool = False
    num_future_state_predictions_in_ensemble: int = 3
    future_state_ensemble_aggregation_scheme: str = "average"
    use_ensemble_value_predictions: bool = False
    num_value_predictions_in_ensemble: int = 5
    value_ensemble_aggregation_scheme: str = "average"
    mask_current_state_action_for_value_prediction: bool = False
    mask_future_state_for_qvalue_prediction: bool = False
    use_variance_scale: bool = False
    seed: int = 195  # query q uses seed + q

    def __post_init__(self):
        for name in (
            "num_queries_best_of_n",
            "search_depth",
            "num_denoising_steps_action",
            "num_denoising_steps_future_state",
            "num_denoising_steps_value",
            "num_future_state_predictions_in_ensemble",
            "num_value_predictions_in_ensemble",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        checks = (
            ("value_ensemble_aggregation_scheme", VALUE_SCHEMES),
            ("future_state_ensemble_aggregation_scheme", FUTURE_SCHEMES),
            ("search_depth_value_aggregation_scheme", DEPTH_SCHEMES),
        )
        for name, allowed in checks:
            value = getattr(self, name)
            if (value.lower() if name.startswith("future") else value) not in allowed:
                raise ValueError(f"--{name}={value!r} is not one of {', '.join(allowed)}")
        if self.ar_value_prediction and not self.ar_future_prediction:
            raise ValueError("--ar_value_prediction scores a predicted future state: it needs --ar_future_prediction")
        if self.ar_qvalue_prediction and (self.ar_value_prediction or self.search_depth > 1):
            raise ValueError("--ar_qvalue_prediction excludes --ar_value_prediction and --search_depth > 1")
        if self.search_depth > 1 and not self.ar_future_prediction:
            raise ValueError("--search_depth > 1 rolls the world model forward: it needs --ar_future_prediction")

    @property
    def future_members(self) -> int:
        return self.num_future_state_predictions_in_ensemble if self.use_ensemble_future_state_predictions else 1

    @property
    def value_members(self) -> int:
        return self.num_value_predictions_in_ensemble if self.use_ensemble_value_predictions else 1

    @property
    def plain(self) -> bool:
        """One query, no separate world-model or value call: the policy's ordinary action query."""
        return self.num_queries_best_of_n == 1 and not (
            self.ar_future_prediction or self.ar_value_prediction or self.ar_qvalue_prediction
        )
