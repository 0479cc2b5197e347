"""Static settings of the policy objective and sampler (``PolicyConfig``), built from the run config.

``precision`` chooses the production path: "bfloat16" casts the batch floats, gt frames, condition mask and
network inputs to bf16 while the loss math stays float32; "float32" reproduces the float32 fixtures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from cosmos_policy_jax.diffusion import scaling as scaling_lib
from cosmos_policy_jax.diffusion.sde import HIGH_SIGMA_STRATEGIES, SDEConfig
from cosmos_policy_jax.policy.layout import LatentLayout

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOSS_REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Static (hashable) settings of the policy objective and sampler; build with ``from_config``."""

    layout: LatentLayout
    sde: SDEConfig = dataclasses.field(default_factory=SDEConfig)
    state_ch: int = 16
    sigma_data: float = 1.0
    loss_scale: float = 10.0
    loss_reduce: str = "mean"
    scaling: str = "rectified_flow"
    rectified_flow_t_scaling_factor: float = 1.0
    rectified_flow_loss_weight_uniform: bool = True
    adjust_video_noise: bool = True
    sigma_conditional: float = 0.0
    conditioning_strategy: str = "frame_replace"
    denoise_replace_gt_frames: bool = True
    precision: str = "bfloat16"
    high_sigma_strategy: str = "none"
    high_sigma_ratio: float = 0.05
    mask_loss_for_action_future_state_prediction: bool = False
    mask_value_prediction_loss_for_policy_prediction: bool = False
    mask_current_state_action_for_value_prediction: bool = False
    mask_future_state_for_qvalue_prediction: bool = False
    action_loss_multiplier: int = 1
    text_dropout_rate: float = 0.0
    # Data sizes and video layout (dataloader_train.dataset, tokenizer).
    chunk_size: int = 16
    action_dim: int = 7
    proprio_dim: int = 9
    temporal_compression: int = 4
    # Inference sampler (model.sampler).
    sampler_num_steps: int = 5
    sampler_sigma_min: float = 4.0
    sampler_sigma_max: float = 80.0
    sampler_rho: float = 7.0
    sampler_solver: str = "2ab"
    sampler_seed: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"model.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.loss_reduce not in LOSS_REDUCTIONS:
            raise ValueError(f"model.loss_reduce must be one of {LOSS_REDUCTIONS}, got {self.loss_reduce!r}")
        if self.scaling not in scaling_lib.SCALINGS:
            raise ValueError(f"model.scaling must be one of {scaling_lib.SCALINGS}, got {self.scaling!r}")
        if self.conditioning_strategy != "frame_replace":
            raise ValueError(f"model.conditioning_strategy must be 'frame_replace', got {self.conditioning_strategy!r}")
        if self.high_sigma_strategy not in HIGH_SIGMA_STRATEGIES:
            raise ValueError(
                f"model.high_sigma_strategy must be one of {HIGH_SIGMA_STRATEGIES}, got {self.high_sigma_strategy!r}"
            )
        if self.mask_loss_for_action_future_state_prediction and self.mask_value_prediction_loss_for_policy_prediction:
            raise ValueError(
                "model.mask_loss_for_action_future_state_prediction and "
                "model.mask_value_prediction_loss_for_policy_prediction cannot both be on"
            )
        if int(self.action_loss_multiplier) != self.action_loss_multiplier or self.action_loss_multiplier < 1:
            raise ValueError(
                f"model.action_loss_multiplier must be a positive integer, got {self.action_loss_multiplier}"
            )
        if self.chunk_size * self.action_dim <= 0 or self.proprio_dim <= 0:
            raise ValueError("dataset chunk_size, action_dim and proprio_dim must be positive")

    @property
    def state_t(self) -> int:
        return self.layout.state_t

    @property
    def compute_dtype(self) -> jnp.dtype:
        return PRECISIONS[self.precision]

    @property
    def any_loss_mask(self) -> bool:
        return (
            self.mask_loss_for_action_future_state_prediction
            or self.mask_value_prediction_loss_for_policy_prediction
            or self.mask_current_state_action_for_value_prediction
            or self.mask_future_state_for_qvalue_prediction
            or self.action_loss_multiplier != 1
        )

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> PolicyConfig:
        """From the full ml_collections config (``model.*``, ``model.sde``, ``model.sampler``, dataset sizes)."""
        m = config.model
        kw: dict[str, Any] = dict(
            layout=LatentLayout.from_config(m),
            sde=SDEConfig.from_config(m.sde),
        )
        for name in (
            "state_ch",
            "sigma_data",
            "loss_scale",
            "loss_reduce",
            "scaling",
            "rectified_flow_t_scaling_factor",
            "rectified_flow_loss_weight_uniform",
            "adjust_video_noise",
            "sigma_conditional",
            "conditioning_strategy",
            "denoise_replace_gt_frames",
            "precision",
            "high_sigma_strategy",
            "high_sigma_ratio",
            "mask_loss_for_action_future_state_prediction",
            "mask_value_prediction_loss_for_policy_prediction",
            "mask_current_state_action_for_value_prediction",
            "mask_future_state_for_qvalue_prediction",
            "action_loss_multiplier",
            "text_dropout_rate",
        ):
            if name in m:
                kw[name] = m[name]
        if "tokenizer" in m and "temporal_compression" in m.tokenizer:
            kw["temporal_compression"] = int(m.tokenizer.temporal_compression)
        if "dataloader_train" in config:
            ds = config.dataloader_train.dataset
            for name in ("chunk_size", "action_dim", "proprio_dim"):
                if name in ds:
                    kw[name] = int(ds[name])
        if "sampler" in m:
            s = m.sampler
            for name in ("num_steps", "sigma_min", "sigma_max", "rho", "solver", "seed"):
                if name in s:
                    kw[f"sampler_{name}"] = s[name]
        kw.update(overrides)
        return cls(**_coerce(kw))

    @classmethod
    def from_reference(
        cls, model_config: Mapping[str, Any], sde: Mapping[str, Any], layout: LatentLayout, **overrides: Any
    ) -> PolicyConfig:
        """From a reference model-config dict (the fixtures' ``info['model_config']``) and its SDE kwargs."""
        lo, hi = model_config.get("min_num_conditional_frames"), model_config.get("max_num_conditional_frames")
        if lo is not None and hi is not None and lo != hi:
            raise ValueError(f"a random number of conditional frames ({lo}..{hi}) is not supported")
        kw: dict[str, Any] = dict(layout=layout, sde=SDEConfig.from_config(sde))
        for f in dataclasses.fields(cls):
            if f.name in model_config and f.name not in ("layout", "sde"):
                kw[f.name] = model_config[f.name]
        kw.update(overrides)
        return cls(**_coerce(kw))


def _coerce(kw: dict[str, Any]) -> dict[str, Any]:
    """Cast config values to the field types (ml_collections may hold ints for floats and vice versa)."""
    types = {f.name: f.type for f in dataclasses.fields(PolicyConfig)}
    out = {}
    for k, v in kw.items():
        t = types.get(k)
        if t == "float":
            v = float(v)
        elif t == "int":
            v = int(v)
        elif t == "bool":
            v = bool(v)
        elif t == "str":
            v = str(v)
        out[k] = v
    return out
