"""Cosmos Policy training objective (REFERENCE.md 4.2-4.10, 12).

One pure function, ``policy_loss``, computes the reference's ``training_step`` on a VAE latent:
per-sample conditioning masks (demo / world-model / value-function samples), injection of proprio, the
action chunk, the future proprio and the value into their latent frames, the noisy latent at a given or
drawn sigma, the rectified-flow denoiser with frame replacement, the weighted x0 loss times ``loss_scale``
(mean over every element, conditioning frames included in the denominator) and every logged metric.

Precision (``PolicyConfig.precision``): "float32" reproduces the float32 fixtures; "bfloat16" is the
production path: batch floats are cast to bf16 first, gt frames and the mask are bf16, the network gets
bf16 inputs and timesteps, while the loss math stays float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_policy_jax.diffusion import scaling as scaling_lib
from cosmos_policy_jax.diffusion.sde import HIGH_SIGMA_STRATEGIES, SDEConfig, draw_training_sigma_and_epsilon
from cosmos_policy_jax.policy import injection
from cosmos_policy_jax.policy.layout import (
    CURRENT_STATE_SLOTS,
    FUTURE_STATE_SLOTS,
    LatentLayout,
)

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOSS_REDUCTIONS = ("mean", "sum")

# Logged per-modality metrics (REFERENCE.md 4.10): sample group -> slots, in the reference's order.
METRIC_GROUPS = {
    "demo_sample": ("action", "future_proprio", "future_wrist_image", "future_image", "value"),
    "world_model_sample": ("future_proprio", "future_wrist_image", "future_image", "value"),
    "value_function_sample": ("value",),
}


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


# ---------------------------------------------------------------------------------------------------
# Batch preparation
# ---------------------------------------------------------------------------------------------------


def cast_batch_floats(batch: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """Every floating-point array of ``batch`` cast to ``dtype`` (the reference's low-precision callback).

    numpy float64 entries are cast directly (no float32 detour) so bf16 rounding matches the reference.
    Integer and non-array entries are untouched.
    """
    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
            out[k] = jnp.asarray(v.astype(np.dtype(dtype)))
        elif isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating):
            out[k] = v.astype(dtype)
    return out


def normalize_video(video_uint8: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 video -> v / 127.5 - 1, evaluated in ``dtype`` (bf16 in production, so pixels are bf16-rounded)."""
    v = jnp.asarray(video_uint8).astype(dtype)
    return v / jnp.asarray(127.5, dtype) - jnp.asarray(1.0, dtype)


def encode_batch_video(vae: Any, batch: Mapping[str, Any], cfg: PolicyConfig) -> jax.Array:
    """The frozen VAE latent of ``batch['video']`` (B, 3, T, H, W) uint8, times sigma_data, float32, no gradient."""
    video = jnp.asarray(batch["video"])
    expected = cfg.layout.num_pixel_frames(cfg.temporal_compression)
    if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] != expected:
        raise ValueError(f"batch['video'] must be (B, 3, {expected}, H, W) uint8 for this layout, got {video.shape}")
    latent = vae.encode(normalize_video(video, cfg.compute_dtype))
    return jax.lax.stop_gradient(jnp.asarray(latent).astype(jnp.float32) * cfg.sigma_data)


def _sample_masks(batch: Mapping[str, Any], batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array, bool]:
    """(rollout, world_model, value_function) int masks (B,) and whether the batch carries them."""
    present = "rollout_data_mask" in batch
    zeros = jnp.zeros((batch_size,), jnp.int32)

    def get(name):
        return jnp.asarray(batch[name]).astype(jnp.int32).reshape(batch_size) if name in batch else zeros

    return get("rollout_data_mask"), get("world_model_sample_mask"), get("value_function_sample_mask"), present


def condition_mask(
    batch: Mapping[str, Any],
    layout: LatentLayout,
    *,
    batch_size: int | None = None,
    latent_hw: tuple[int, int] | None = None,
    mask_current_state_action_for_value_prediction: bool = False,
    mask_future_state_for_qvalue_prediction: bool = False,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Conditioning mask, 1 = clean input frame (REFERENCE.md 4.4): (B, T), or (B, 1, T, H, W) with ``latent_hw``.

    The first ``num_conditional_frames`` frames are inputs. With rollout masks in the batch, world-model
    samples also take the action frame as input, value-function samples take every frame but the value.
    The two input-masking flags turn the current state + action (V(s')) or the future state (Q(s, a)) of
    value-function samples back into noised frames. ``batch_size`` defaults to the length of the batch's
    ``rollout_data_mask`` or ``actions``.
    """
    if batch_size is None:
        for k in ("rollout_data_mask", "actions", "video"):
            if k in batch:
                batch_size = int(np.shape(batch[k])[0])
                break
        else:
            raise ValueError("condition_mask: pass batch_size (the batch has no rollout_data_mask/actions/video)")
    t = layout.state_t
    m = jnp.broadcast_to((jnp.arange(t) < layout.num_conditional_frames).astype(jnp.float32), (batch_size, t))
    _, wm, vf, present = _sample_masks(batch, batch_size)
    if present:
        m = m.at[:, layout.index("action")].set(wm.astype(jnp.float32))
        is_vf = vf == 1
        m = jnp.where(is_vf[:, None], 1.0, m)
        zero_for_vf = list(layout.frames(("value",)))
        if mask_current_state_action_for_value_prediction:
            zero_for_vf += [*layout.frames(CURRENT_STATE_SLOTS), layout.index("action")]
        if mask_future_state_for_qvalue_prediction:
            zero_for_vf += list(layout.frames(FUTURE_STATE_SLOTS))
        for k in zero_for_vf:
            m = m.at[:, k].set(jnp.where(is_vf, 0.0, m[:, k]))
    m = m.astype(dtype)
    if latent_hw is None:
        return m
    return jnp.broadcast_to(m[:, None, :, None, None], (batch_size, 1, t, *latent_hw))


def frame_condition_mask(batch: Mapping[str, Any], batch_size: int, cfg: PolicyConfig) -> jax.Array:
    """``condition_mask`` (B, T) float32 with the input-masking flags of ``cfg``."""
    return condition_mask(
        batch,
        cfg.layout,
        batch_size=batch_size,
        mask_current_state_action_for_value_prediction=cfg.mask_current_state_action_for_value_prediction,
        mask_future_state_for_qvalue_prediction=cfg.mask_future_state_for_qvalue_prediction,
    )


def loss_frame_mask(batch: Mapping[str, Any], batch_size: int, cfg: PolicyConfig) -> jax.Array:
    """Per-frame loss multiplier (B, T) float32 from the optional masking flags (REFERENCE.md 4.9).

    All ones unless a flag is on (the shipped LIBERO config); then, per sample type:
    * V(s') / Q(s, a) input masking: value-function samples only keep the value frame;
    * ``mask_loss_for_action_future_state_prediction``: demo -> action, world model -> future state,
      value function -> value;
    * ``mask_value_prediction_loss_for_policy_prediction``: demo -> action + future state, world model ->
      future state, value-function samples get no loss (the reference asserts there are none);
    * ``action_loss_multiplier`` scales the action frame.
    """
    layout = cfg.layout
    t = layout.state_t
    rollout, wm, vf, _ = _sample_masks(batch, batch_size)
    demo = (rollout == 0)[:, None]
    is_wm = ((rollout == 1) & (wm == 1))[:, None]
    is_vf = ((rollout == 1) & (vf == 1))[:, None]

    def onehot(frames):
        v = np.zeros((t,), np.float32)
        for k in frames:
            v[k] = 1.0
        return jnp.asarray(v)[None, :]

    action = onehot([layout.index("action")])
    future_state = onehot(layout.frames(FUTURE_STATE_SLOTS))
    value = onehot(layout.frames(("value",)))

    final = jnp.ones((batch_size, t), jnp.float32)
    if cfg.mask_current_state_action_for_value_prediction or cfg.mask_future_state_for_qvalue_prediction:
        final = final * jnp.where(is_vf, value, 1.0)
    if cfg.mask_loss_for_action_future_state_prediction:
        final = final * (demo * action + is_wm * future_state + is_vf * value).clip(0, 1)
    if cfg.mask_value_prediction_loss_for_policy_prediction:
        final = final * (demo * (action + future_state) + is_wm * future_state).clip(0, 1)
    if cfg.action_loss_multiplier != 1:
        a = layout.index("action")
        final = final.at[:, a].multiply(float(int(cfg.action_loss_multiplier)))
    return final


def _required(batch: Mapping[str, Any], key: str, slot: str) -> jax.Array:
    if key not in batch:
        raise KeyError(f"batch has no {key!r} entry, needed for the {slot!r} latent frame")
    return jnp.asarray(batch[key])


def inject_targets(latent: jax.Array, batch: Mapping[str, Any], layout: LatentLayout) -> jax.Array:
    """The training target: ``latent`` with the action chunk, current/future proprio and value injected."""
    x = injection.inject_vector(latent, _required(batch, "actions", "action"), layout.index("action"))
    if layout.has("current_proprio"):
        x = injection.inject_vector(x, _required(batch, "proprio", "current_proprio"), layout.index("current_proprio"))
    if layout.has("future_proprio"):
        fp = _required(batch, "future_proprio", "future_proprio")
        x = injection.inject_vector(x, fp, layout.index("future_proprio"))
    if layout.has("value"):
        x = injection.inject_scalar(x, _required(batch, "value_function_return", "value"), layout.index("value"))
    return x


def build_gt_frames(latent: jax.Array, batch: Mapping[str, Any], layout: LatentLayout, dtype: Any) -> jax.Array:
    """Conditioning frames (``gt_frames``) in ``dtype``: the latent with the same injections as the target.

    As in the reference, the action chunk is only written when the batch carries rollout masks (it is only
    an input for world-model samples) and each other injection only when its batch entry exists.
    """
    gt = latent.astype(dtype)
    if "rollout_data_mask" in batch and "actions" in batch:
        gt = injection.inject_vector(gt, jnp.asarray(batch["actions"]), layout.index("action"))
    if "proprio" in batch and layout.has("current_proprio"):
        gt = injection.inject_vector(gt, jnp.asarray(batch["proprio"]), layout.index("current_proprio"))
    if "future_proprio" in batch and layout.has("future_proprio"):
        gt = injection.inject_vector(gt, jnp.asarray(batch["future_proprio"]), layout.index("future_proprio"))
    if "value_function_return" in batch and layout.has("value"):
        gt = injection.inject_scalar(gt, jnp.asarray(batch["value_function_return"]), layout.index("value"))
    return gt


# ---------------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------------


def denoise(
    net: Callable[..., jax.Array],
    xt: jax.Array,
    sigma: jax.Array,
    gt_frames: jax.Array,
    frame_mask: jax.Array,
    crossattn_emb: jax.Array,
    padding_mask: jax.Array | None,
    cfg: PolicyConfig,
) -> dict[str, jax.Array]:
    """x0 prediction of the conditioned network at noise level ``sigma`` (B, 1) (REFERENCE.md 4.7).

    Returns x0_pred (conditioning frames replaced by ``gt_frames``), eps_pred, the network output and the
    network's inputs (x before the dtype cast, per-frame timesteps), all float32.
    """
    b, _, t, h, w = xt.shape
    dtype = cfg.compute_dtype
    scale = scaling_lib.get_scaling(
        cfg.scaling, sigma_data=cfg.sigma_data, t_scaling_factor=cfg.rectified_flow_t_scaling_factor
    )
    sigma = jnp.asarray(sigma, jnp.float32).reshape(b, -1)
    sigma5 = sigma[:, None, :, None, None]
    c_skip, c_out, c_in, c_noise = scale(sigma5)
    # Conditioning frames: clean GT input and the time input of sigma_conditional.
    m5 = frame_mask.astype(jnp.float32)[:, None, :, None, None]
    net_x = jnp.where(m5 != 0, gt_frames.astype(jnp.float32) / cfg.sigma_data, xt * c_in)
    c_noise_cond = scale(jnp.full_like(sigma5, cfg.sigma_conditional))[3]
    timesteps = (c_noise_cond * m5 + c_noise * (1 - m5)).reshape(b, t)
    cond_mask = jnp.broadcast_to(m5, (b, 1, t, h, w)).astype(dtype)
    net_out = net(
        net_x.astype(dtype),
        timesteps.astype(dtype),
        crossattn_emb.astype(dtype),
        cond_mask,
        None if padding_mask is None else padding_mask.astype(dtype),
        data_type="video",
    )
    net_out = jnp.asarray(net_out).astype(jnp.float32)
    x0_pred = c_skip * xt + c_out * net_out
    if cfg.denoise_replace_gt_frames:
        x0_pred = jnp.where(m5 != 0, gt_frames.astype(jnp.float32), x0_pred)
    eps_pred = (xt - x0_pred) / sigma5
    return dict(x0_pred=x0_pred, eps_pred=eps_pred, net_out=net_out, net_x=net_x, net_timesteps=timesteps)


# ---------------------------------------------------------------------------------------------------
# Loss and metrics
# ---------------------------------------------------------------------------------------------------


def _selected_error(diff: jax.Array, select: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MSE and L1 of ``diff`` (B, ...) over the selected samples x all elements; NaN if none is selected."""
    per_sample = diff.reshape(diff.shape[0], -1)
    n = per_sample.shape[1]
    sel = select.astype(jnp.float32)
    count = sel.sum() * n
    mse = (jnp.square(per_sample).sum(axis=1) * sel).sum() / count
    l1 = (jnp.abs(per_sample).sum(axis=1) * sel).sum() / count
    return mse, l1


def policy_metrics(
    x0: jax.Array, x0_pred: jax.Array, batch: Mapping[str, Any], cfg: PolicyConfig
) -> dict[str, jax.Array]:
    """Per-modality MSE/L1 of REFERENCE.md 4.10 (unweighted, whole latent frames) and sample counts.

    Empty selections (and unused slots) give NaN; ``<group>_count`` holds the number of selected samples.
    """
    b = x0.shape[0]
    rollout, wm, vf, _ = _sample_masks(batch, b)
    selections = {"demo_sample": rollout == 0, "world_model_sample": wm == 1, "value_function_sample": vf == 1}
    out: dict[str, jax.Array] = {}
    nan = jnp.float32(jnp.nan)
    for group, slots in METRIC_GROUPS.items():
        sel = selections[group]
        out[f"{group}_count"] = sel.astype(jnp.int32).sum()
        for slot in slots:
            if cfg.layout.has(slot):
                k = cfg.layout.index(slot)
                mse, l1 = _selected_error(x0[:, :, k] - x0_pred[:, :, k], sel)
            else:
                mse, l1 = nan, nan
            out[f"{group}_{slot}_mse_loss"] = mse
            out[f"{group}_{slot}_l1_loss"] = l1
    return out


def policy_loss(
    net: Callable[..., jax.Array],
    latent_x0: jax.Array,
    batch: Mapping[str, Any],
    cfg: PolicyConfig,
    key: jax.Array | None = None,
    *,
    sigma: jax.Array | None = None,
    epsilon: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """The Cosmos Policy training loss for one batch.

    Args:
      net: the DiT (or any callable with its signature ``net(x, timesteps, crossattn_emb, cond_mask,
        padding_mask, data_type=...)``) returning (B, C, T, H, W).
      latent_x0: VAE latent of the batch video (B, C, T, H, W) (``encode_batch_video``), before injection.
      batch: the data batch (``actions``, ``proprio``, ``future_proprio``, ``value_function_return``,
        ``t5_text_embeddings``, ``padding_mask``, the rollout/world-model/value-function masks). Its
        ``<slot>_latent_idx`` entries are checked against ``cfg.layout`` when concrete.
      cfg: static settings (``PolicyConfig.from_config``).
      key: PRNG key for sigma, epsilon and text dropout; not needed when ``sigma`` and ``epsilon`` are given.
      sigma: optional (B, 1) or (B,) noise levels (already times sqrt(state_t)), replacing the random draw.
      epsilon: optional (B, C, T, H, W) noise, replacing the random draw.

    Returns:
      (loss, metrics, aux): the scalar loss (x ``loss_scale``; gradients are of this value), scalar metrics
      named as in the reference (plus ``loss`` and per-group ``*_count``; ``edm_loss_per_frame`` is the
      (T,) batch mean) and the intermediate tensors (x0, xt, condition mask, network input/output, ...).
    """
    layout = cfg.layout
    latent_x0 = jnp.asarray(latent_x0)
    if latent_x0.ndim != 5:
        raise ValueError(f"latent_x0 must be (B, C, T, H, W), got shape {latent_x0.shape}")
    b, c, t, h, w = latent_x0.shape
    if t != layout.state_t or c != cfg.state_ch:
        raise ValueError(
            f"latent_x0 has {c} channels x {t} frames; the config expects {cfg.state_ch} x state_t={layout.state_t}"
        )
    layout.check_batch(batch)
    dtype = cfg.compute_dtype
    batch = cast_batch_floats(batch, dtype)

    # The reference's bf16 VAE emits bf16-valued latents; keep that so conditioning frames of x0 and
    # gt_frames agree exactly (zero loss there).
    x0_clean = latent_x0.astype(jnp.float32)
    if dtype != jnp.float32:
        x0_clean = x0_clean.astype(dtype).astype(jnp.float32)

    if key is None and (sigma is None or epsilon is None):
        raise ValueError("policy_loss needs a PRNG key unless both sigma and epsilon are given")
    k_noise, k_text = jax.random.split(key) if key is not None else (None, None)
    if sigma is None or epsilon is None:
        drawn_sigma, drawn_eps = draw_training_sigma_and_epsilon(
            k_noise,
            x0_clean.shape,
            cfg.sde,
            state_t=layout.state_t,
            adjust_video_noise=cfg.adjust_video_noise,
            high_sigma_strategy=cfg.high_sigma_strategy,
            high_sigma_ratio=cfg.high_sigma_ratio,
        )
        sigma = drawn_sigma if sigma is None else sigma
        epsilon = drawn_eps if epsilon is None else epsilon
    sigma = jnp.asarray(sigma, jnp.float32).reshape(b, -1)
    epsilon = jnp.asarray(epsilon, jnp.float32)

    frame_mask = frame_condition_mask(batch, b, cfg).astype(dtype)
    gt_frames = build_gt_frames(x0_clean, batch, layout, dtype)
    x0 = inject_targets(x0_clean, batch, layout)
    xt = x0 + sigma[:, None, :, None, None] * epsilon

    text = jnp.asarray(batch["t5_text_embeddings"])
    if cfg.text_dropout_rate > 0 and k_text is not None:
        keep = jax.random.bernoulli(k_text, 1.0 - cfg.text_dropout_rate, (b,))
        text = text * keep[:, None, None].astype(text.dtype)
    padding = batch.get("padding_mask")
    pred = denoise(net, xt, sigma, gt_frames, frame_mask, text, None if padding is None else jnp.asarray(padding), cfg)
    x0_pred = pred["x0_pred"]

    weight_fn = scaling_lib.get_loss_weight(
        cfg.scaling, sigma_data=cfg.sigma_data, rectified_flow_uniform=cfg.rectified_flow_loss_weight_uniform
    )
    weights = weight_fn(sigma)
    pred_mse = jnp.square(x0 - x0_pred)
    edm = pred_mse * weights[:, None, :, None, None]
    loss_mask = loss_frame_mask(batch, b, cfg)
    weighted = edm * loss_mask[:, None, :, None, None] if cfg.any_loss_mask else edm
    if cfg.loss_reduce == "mean":
        loss = weighted.mean() * cfg.loss_scale
    else:
        loss = weighted.sum(axis=1).mean() * cfg.loss_scale

    edm_per_frame = edm.mean(axis=(1, 3, 4))
    metrics = dict(
        loss=loss,
        mse_loss=pred_mse.mean(),
        edm_loss=edm.mean(),
        edm_loss_per_frame=edm_per_frame.mean(axis=0),
        **policy_metrics(x0, x0_pred, batch, cfg),
    )
    metrics = jax.lax.stop_gradient(metrics)
    metrics["loss"] = loss
    full_mask = jnp.broadcast_to(frame_mask.astype(jnp.float32)[:, None, :, None, None], (b, 1, t, h, w))
    aux = dict(
        x0=x0,
        orig_x0=x0_clean,
        xt=xt,
        sigma=sigma,
        epsilon=epsilon,
        condition_video_input_mask=full_mask,
        gt_frames=gt_frames.astype(jnp.float32),
        net_x=pred["net_x"],
        net_timesteps=pred["net_timesteps"],
        net_out=pred["net_out"],
        x0_pred=x0_pred,
        eps_pred=pred["eps_pred"],
        weights_per_sigma=weights,
        edm_loss_per_frame=edm_per_frame,
        loss_mask=loss_mask,
    )
    return loss, metrics, aux


def sigma_multiplier(cfg: PolicyConfig) -> float:
    """The factor applied to the base sigma draw (sqrt(state_t) for video batches)."""
    return math.sqrt(cfg.state_t) if cfg.adjust_video_noise else 1.0
