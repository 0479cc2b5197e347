"""Conditioning of the policy: the batch video's latent, the per-sample condition and loss masks, and the
injection of the action chunk, proprio and value into their latent frames.

A frame is "conditioning" (mask 1) when the network sees it clean (``gt_frames``) instead of noised. Which
frames are depends on the sample type (demo / world-model / value-function, from the batch's rollout
masks) at training and on the query at inference (``inference_condition``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_policy_jax.policy import injection
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.layout import CURRENT_STATE_SLOTS, FUTURE_STATE_SLOTS, LatentLayout


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


def encode_video(vae: Any, video: jax.Array, cfg: PolicyConfig) -> jax.Array:
    """The frozen VAE latent of a (B, 3, T, H, W) uint8 video, times sigma_data, float32, no gradient."""
    latent = vae.encode(normalize_video(video, cfg.compute_dtype))
    return jax.lax.stop_gradient(jnp.asarray(latent).astype(jnp.float32) * cfg.sigma_data)


def encode_batch_video(vae: Any, batch: Mapping[str, Any], cfg: PolicyConfig) -> jax.Array:
    """The frozen VAE latent of ``batch['video']`` (B, 3, T, H, W) uint8, times sigma_data, float32, no gradient."""
    video = jnp.asarray(batch["video"])
    expected = cfg.layout.num_pixel_frames(cfg.temporal_compression)
    if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] != expected:
        raise ValueError(f"batch['video'] must be (B, 3, {expected}, H, W) uint8 for this layout, got {video.shape}")
    return encode_video(vae, video, cfg)


def sample_masks(batch: Mapping[str, Any], batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array, bool]:
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
    """Conditioning mask, 1 = clean input frame: (B, T), or (B, 1, T, H, W) with ``latent_hw``.

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
    _, wm, vf, present = sample_masks(batch, batch_size)
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
    """Per-frame loss multiplier (B, T) float32 from the optional masking flags.

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
    rollout, wm, vf, _ = sample_masks(batch, batch_size)
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


def inference_condition(
    latent: jax.Array, proprio: jax.Array | None, cfg: PolicyConfig, num_conditional_frames: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """(gt_frames, per-frame mask (B, T)) at inference: the first ``num_conditional_frames`` frames (default:
    the layout's), plus the current-proprio frame holding the injected normalised proprio."""
    layout = cfg.layout
    b, t = latent.shape[0], latent.shape[2]
    n_cond = layout.num_conditional_frames if num_conditional_frames is None else int(num_conditional_frames)
    mask = jnp.broadcast_to((jnp.arange(t) < n_cond).astype(jnp.float32), (b, t))
    gt = latent.astype(jnp.float32)
    if proprio is not None and layout.has("current_proprio"):
        k = layout.index("current_proprio")
        mask = mask.at[:, k].set(1.0)
        gt = injection.inject_vector(gt, proprio.astype(cfg.compute_dtype).astype(jnp.float32), k)
    return gt, mask
