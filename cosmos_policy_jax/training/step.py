"""The jitted training micro-step and the evaluation step.

One ``train_step(state, batch, vae_params) -> (state, metrics)`` call processes one micro-batch:
frozen VAE encode (no gradient), policy loss, gradient (unscaled by the dynamic loss scale when
enabled), and the ``MultiSteps`` optimizer update, which applies every ``grad_accum_iter`` calls.
A micro-batch with non-finite gradients is dropped (parameters, optimizer state and accumulator
unchanged), counted, and, with loss scaling, halves the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmos_policy_jax.parallel.rules import BATCH_AXES
from cosmos_policy_jax.policy.conditioning import encode_batch_video
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.objective import policy_loss
from cosmos_policy_jax.training.optimizer import all_finite, power_ema_beta, power_ema_gamma, update_loss_scale
from cosmos_policy_jax.training.state import ModelDefs, TrainState

# Batch keys that replay recorded noise (tests, fixture parity): sigma (B, 1) and epsilon like the latent.
SIGMA_KEY = "_sigma"
EPSILON_KEY = "_epsilon"


def batch_shardings(batch_abstract: dict, mesh: Mesh) -> dict:
    return {
        k: NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (v.ndim - 1)))) for k, v in batch_abstract.items()
    }


def make_train_step(config, defs: ModelDefs, tx: optax.GradientTransformation, schedule: optax.Schedule) -> Callable:
    """The pure step; jit it with ``jit_train_step``."""
    pcfg = PolicyConfig.from_config(config)
    loss_scaling = bool(config.trainer.loss_scaling)
    growth_interval = int(config.trainer.loss_scale_growth_interval)
    ema_enabled = bool(config.model.ema.enabled)
    ema_gamma = power_ema_gamma(float(config.model.ema.rate)) if ema_enabled else 0.0

    def train_step(state: TrainState, batch: dict, vae_params: Any, dit_rest: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        vae = nnx.merge(defs.vae_graphdef, vae_params)
        latent = jax.lax.stop_gradient(encode_batch_video(vae, batch, pcfg))
        sigma = batch.get(SIGMA_KEY)
        epsilon = batch.get(EPSILON_KEY)

        def loss_fn(params):
            net = nnx.merge(defs.dit_graphdef, params, dit_rest)
            loss, metrics, _ = policy_loss(net, latent, batch, pcfg, key, sigma=sigma, epsilon=epsilon)
            return loss * state.loss_scale, (loss, metrics)

        grads, (loss, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        if loss_scaling:
            grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
        finite = all_finite(grads)
        old_opt_steps = state.opt_state.gradient_step
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stepped = opt_state.gradient_step > old_opt_steps
        if loss_scaling:
            loss_scale, good = update_loss_scale(state.loss_scale, state.good_steps, finite, growth_interval)
        else:
            loss_scale, good = state.loss_scale, state.good_steps
        ema = state.ema_params
        if ema_enabled:
            beta = jnp.where(stepped, power_ema_beta(opt_state.gradient_step, ema_gamma), 1.0)
            ema = jax.tree.map(lambda e, p: beta * e + (1.0 - beta) * p, ema, params)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=state.rng,
            loss_scale=loss_scale,
            good_steps=good,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            ema_params=ema,
        )
        out = dict(metrics)
        out.update(
            loss=loss,
            grad_norm=jnp.where(finite, optax.global_norm(grads), jnp.nan),
            lr=schedule(old_opt_steps),
            loss_scale=state.loss_scale,
            finite=finite,
            nonfinite_steps=new_state.nonfinite_steps,
            optimizer_step=opt_state.gradient_step,
        )
        return new_state, out

    return train_step


def jit_train_step(step_fn, state_shardings, batch_abstract: dict, vae_shardings, rest_shardings, mesh: Mesh):
    """jit with explicit in/out shardings; the state is donated (updated in place)."""
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings(batch_abstract, mesh), vae_shardings, rest_shardings),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )


def make_eval_loss(config, defs: ModelDefs) -> Callable:
    """Validation loss with the training objective (no gradient), for the validation loop."""
    pcfg = PolicyConfig.from_config(config)

    def eval_loss(params, batch: dict, vae_params: Any, dit_rest: Any, key: jax.Array) -> dict:
        vae = nnx.merge(defs.vae_graphdef, vae_params)
        latent = encode_batch_video(vae, batch, pcfg)
        net = nnx.merge(defs.dit_graphdef, params, dit_rest)
        loss, metrics, _ = policy_loss(net, latent, batch, pcfg, key)
        out = dict(metrics)
        out["loss"] = loss
        return out

    return eval_loss
