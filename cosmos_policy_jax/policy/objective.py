"""Cosmos Policy training objective.

One pure function, ``policy_loss``, computes the reference's ``training_step`` on a VAE latent: the
conditioning of ``policy.conditioning`` (per-sample masks, injected targets and gt frames), the noisy
latent at a given or drawn sigma, the denoiser of ``policy.denoiser``, the weighted x0 loss times
``loss_scale`` (mean over every element, conditioning frames included in the denominator) and every
logged metric. Batch floats enter in ``cfg.precision``; the loss math is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cosmos_policy_jax.diffusion import scaling as scaling_lib
from cosmos_policy_jax.diffusion.sde import draw_training_sigma_and_epsilon
from cosmos_policy_jax.policy.conditioning import (
    build_gt_frames,
    cast_batch_floats,
    frame_condition_mask,
    inject_targets,
    loss_frame_mask,
    sample_masks,
)
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.denoiser import denoise

# Logged per-modality metrics: sample group -> slots, in the reference's order.
METRIC_GROUPS = {
    "demo_sample": ("action", "future_proprio", "future_wrist_image", "future_image", "value"),
    "world_model_sample": ("future_proprio", "future_wrist_image", "future_image", "value"),
    "value_function_sample": ("value",),
}


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
    """Per-modality MSE/L1 (unweighted, whole latent frames) and sample counts.

    Empty selections (and unused slots) give NaN; ``<group>_count`` holds the number of selected samples.
    """
    b = x0.shape[0]
    rollout, wm, vf, _ = sample_masks(batch, b)
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
    x0_clean = _clean_latent(latent_x0, cfg)
    cfg.layout.check_batch(batch)
    batch = cast_batch_floats(batch, cfg.compute_dtype)
    sigma, epsilon, k_text = _noise(key, x0_clean, cfg, sigma, epsilon)
    frame_mask = frame_condition_mask(batch, x0_clean.shape[0], cfg).astype(cfg.compute_dtype)
    gt_frames = build_gt_frames(x0_clean, batch, cfg.layout, cfg.compute_dtype)
    x0 = inject_targets(x0_clean, batch, cfg.layout)
    xt = x0 + sigma[:, None, :, None, None] * epsilon
    text = _text_embedding(batch, cfg, k_text)
    padding = batch.get("padding_mask")
    pred = denoise(net, xt, sigma, gt_frames, frame_mask, text, None if padding is None else jnp.asarray(padding), cfg)

    loss, terms = _weighted_loss(x0, pred["x0_pred"], sigma, batch, cfg)
    metrics = _loss_metrics(loss, terms, x0, pred["x0_pred"], batch, cfg)
    mask5 = jnp.broadcast_to(frame_mask.astype(jnp.float32)[:, None, :, None, None], (x0.shape[0], 1, *x0.shape[2:]))
    inputs = dict(x0=x0, orig_x0=x0_clean, xt=xt, sigma=sigma, epsilon=epsilon, gt_frames=gt_frames.astype(jnp.float32))
    return loss, metrics, dict(**inputs, condition_video_input_mask=mask5, **_prediction_aux(pred, terms))


def _prediction_aux(pred: Mapping[str, jax.Array], terms: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The network's inputs and outputs and the loss terms, as ``policy_loss`` returns them in ``aux``."""
    return dict(
        net_x=pred["net_x"],
        net_timesteps=pred["net_timesteps"],
        net_out=pred["net_out"],
        x0_pred=pred["x0_pred"],
        eps_pred=pred["eps_pred"],
        weights_per_sigma=terms["weights"],
        edm_loss_per_frame=terms["edm"].mean(axis=(1, 3, 4)),
        loss_mask=terms["loss_mask"],
    )


def _clean_latent(latent_x0: jax.Array, cfg: PolicyConfig) -> jax.Array:
    """``latent_x0`` checked against the config, float32, rounded through the compute dtype.

    The reference's bf16 VAE emits bf16-valued latents; the rounding keeps that, so the conditioning
    frames of x0 and gt_frames agree exactly (zero loss there).
    """
    latent_x0 = jnp.asarray(latent_x0)
    if latent_x0.ndim != 5:
        raise ValueError(f"latent_x0 must be (B, C, T, H, W), got shape {latent_x0.shape}")
    _, c, t, _, _ = latent_x0.shape
    if t != cfg.layout.state_t or c != cfg.state_ch:
        raise ValueError(
            f"latent_x0 has {c} channels x {t} frames; the config expects {cfg.state_ch} x state_t={cfg.layout.state_t}"
        )
    x0_clean = latent_x0.astype(jnp.float32)
    if cfg.compute_dtype != jnp.float32:
        x0_clean = x0_clean.astype(cfg.compute_dtype).astype(jnp.float32)
    return x0_clean


def _noise(
    key: jax.Array | None,
    x0_clean: jax.Array,
    cfg: PolicyConfig,
    sigma: jax.Array | None,
    epsilon: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(sigma (B, 1), epsilon, text-dropout key): the given sigma/epsilon, the missing ones drawn from ``key``."""
    if key is None and (sigma is None or epsilon is None):
        raise ValueError("policy_loss needs a PRNG key unless both sigma and epsilon are given")
    k_noise, k_text = jax.random.split(key) if key is not None else (None, None)
    if sigma is None or epsilon is None:
        drawn_sigma, drawn_eps = draw_training_sigma_and_epsilon(
            k_noise,
            x0_clean.shape,
            cfg.sde,
            state_t=cfg.layout.state_t,
            adjust_video_noise=cfg.adjust_video_noise,
            high_sigma_strategy=cfg.high_sigma_strategy,
            high_sigma_ratio=cfg.high_sigma_ratio,
        )
        sigma = drawn_sigma if sigma is None else sigma
        epsilon = drawn_eps if epsilon is None else epsilon
    sigma = jnp.asarray(sigma, jnp.float32).reshape(x0_clean.shape[0], -1)
    return sigma, jnp.asarray(epsilon, jnp.float32), k_text


def _text_embedding(batch: Mapping[str, Any], cfg: PolicyConfig, k_text: jax.Array | None) -> jax.Array:
    """The batch's T5 embedding, each sample zeroed with probability ``text_dropout_rate``."""
    text = jnp.asarray(batch["t5_text_embeddings"])
    if cfg.text_dropout_rate > 0 and k_text is not None:
        keep = jax.random.bernoulli(k_text, 1.0 - cfg.text_dropout_rate, (text.shape[0],))
        text = text * keep[:, None, None].astype(text.dtype)
    return text


def _weighted_loss(
    x0: jax.Array, x0_pred: jax.Array, sigma: jax.Array, batch: Mapping[str, Any], cfg: PolicyConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, terms): the sigma-weighted, frame-masked x0 error reduced by ``loss_reduce`` times ``loss_scale``;
    terms holds the unweighted squared error, the weighted ``edm`` error, the weights and the loss mask."""
    weight_fn = scaling_lib.get_loss_weight(
        cfg.scaling, sigma_data=cfg.sigma_data, rectified_flow_uniform=cfg.rectified_flow_loss_weight_uniform
    )
    weights = weight_fn(sigma)
    pred_mse = jnp.square(x0 - x0_pred)
    edm = pred_mse * weights[:, None, :, None, None]
    loss_mask = loss_frame_mask(batch, x0.shape[0], cfg)
    weighted = edm * loss_mask[:, None, :, None, None] if cfg.any_loss_mask else edm
    if cfg.loss_reduce == "mean":
        loss = weighted.mean() * cfg.loss_scale
    else:
        loss = weighted.sum(axis=1).mean() * cfg.loss_scale
    return loss, dict(pred_mse=pred_mse, edm=edm, weights=weights, loss_mask=loss_mask)


def _loss_metrics(
    loss: jax.Array,
    terms: Mapping[str, jax.Array],
    x0: jax.Array,
    x0_pred: jax.Array,
    batch: Mapping[str, Any],
    cfg: PolicyConfig,
) -> dict[str, jax.Array]:
    """The logged scalars: loss (with its gradient), overall MSE / EDM loss, per-frame EDM, per-modality errors."""
    metrics = dict(
        loss=loss,
        mse_loss=terms["pred_mse"].mean(),
        edm_loss=terms["edm"].mean(),
        edm_loss_per_frame=terms["edm"].mean(axis=(1, 3, 4)).mean(axis=0),
        **policy_metrics(x0, x0_pred, batch, cfg),
    )
    metrics = jax.lax.stop_gradient(metrics)
    metrics["loss"] = loss
    return metrics
