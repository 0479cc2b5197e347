"""Train state as a plain pytree, created directly sharded from the abstract model.

Nothing is materialised unsharded: shapes and shardings come from ``nnx.eval_shape`` under the
logical axis rules, then the real state is produced by ``jax.jit(init, out_shardings=...)``.
The frozen VAE lives outside the train state (replicated, never in the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig
from cosmos_policy_jax.parallel.rules import normalize_rules


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as arrays.

    ``step`` counts micro-steps (one per train_step call; the RNG folds it in); the number of
    optimizer steps is ``opt_state.gradient_step``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints stay plain arrays
    loss_scale: jax.Array
    good_steps: jax.Array
    nonfinite_steps: jax.Array
    ema_params: Any = None


@dataclass(frozen=True)
class ModelDefs:
    """Static halves of the NNX split (hashable graph definitions) and the abstract states."""

    dit_cfg: DiTConfig
    vae_cfg: WanVAEConfig
    dit_graphdef: Any
    dit_abstract_params: Any  # nnx.State of ShapeDtypeStruct with NamedShardings
    dit_abstract_rest: Any  # non-parameter state of the DiT (usually empty)
    vae_graphdef: Any
    vae_abstract_params: Any


def logical_rules(config) -> tuple:
    return normalize_rules(config.parallel.logical_axis_rules)


def _abstract(make, mesh: Mesh, rules) -> tuple[Any, Any, Any]:
    """(graphdef, abstract params, abstract other state), leaves carrying their NamedShardings."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        graphdef, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
        p_sh = nnx.get_named_sharding(params, mesh)
        r_sh = nnx.get_named_sharding(rest, mesh)

    def attach(a, s):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return graphdef, jax.tree.map(attach, params, p_sh), jax.tree.map(attach, rest, r_sh)


def model_defs(config, mesh: Mesh) -> ModelDefs:
    rules = logical_rules(config)
    dit_cfg = DiTConfig.from_config(config.model.net)
    vae_cfg = WanVAEConfig.from_config(config.model.tokenizer)
    seed = int(config.trainer.seed)
    dit_g, dit_p, dit_r = _abstract(lambda: MinimalV1LVGDiT(dit_cfg, rngs=nnx.Rngs(seed)), mesh, rules)
    vae_g, vae_p, _ = _abstract(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(seed + 1)), mesh, rules)
    return ModelDefs(dit_cfg, vae_cfg, dit_g, dit_p, dit_r, vae_g, vae_p)


def shardings_of(abstract_tree) -> Any:
    return jax.tree.map(lambda a: a.sharding, abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, mesh: Mesh) -> Any:
    """Optimizer-state leaves that mirror a parameter take its sharding; counters are replicated."""
    abs_opt = jax.eval_shape(tx.init, abstract_params)
    param_sh = shardings_of(abstract_params)
    return optax.tree_map_params(
        tx,
        lambda _, s: s,
        abs_opt,
        param_sh,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )


def train_state_shardings(config, defs: ModelDefs, tx, mesh: Mesh) -> TrainState:
    rep = replicated(mesh)
    param_sh = shardings_of(defs.dit_abstract_params)
    return TrainState(
        step=rep,
        params=param_sh,
        opt_state=opt_state_shardings(tx, defs.dit_abstract_params, mesh),
        rng=rep,
        loss_scale=rep,
        good_steps=rep,
        nonfinite_steps=rep,
        ema_params=param_sh if config.model.ema.enabled else None,
    )


def abstract_train_state(config, defs: ModelDefs, tx, mesh: Mesh) -> TrainState:
    """ShapeDtypeStructs with concrete shardings: the restore target (also onto a new mesh)."""
    shardings = train_state_shardings(config, defs, tx, mesh)
    shapes = jax.eval_shape(lambda: _init_state(config, defs, tx, None))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def _init_state(config, defs: ModelDefs, tx, params) -> TrainState:
    if params is None:
        model = MinimalV1LVGDiT(defs.dit_cfg, rngs=nnx.Rngs(int(config.trainer.seed)))
        params = nnx.state(model, nnx.Param)
    scale = float(config.trainer.init_loss_scale) if config.trainer.loss_scaling else 1.0
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(int(config.trainer.seed))),
        loss_scale=jnp.asarray(scale, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
        nonfinite_steps=jnp.zeros((), jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if config.model.ema.enabled else None,
    )


def create_train_state(config, defs: ModelDefs, tx, mesh: Mesh, params=None) -> TrainState:
    """Initialise (or wrap given ``params``) directly into the target shardings."""
    shardings = train_state_shardings(config, defs, tx, mesh)
    rules = logical_rules(config)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        if params is None:
            return jax.jit(lambda: _init_state(config, defs, tx, None), out_shardings=shardings)()
        return jax.jit(lambda p: _init_state(config, defs, tx, p), out_shardings=shardings)(params)


def create_dit_rest(defs: ModelDefs, mesh: Mesh, config) -> Any:
    """Non-parameter DiT state (buffers), materialised with its shardings."""
    rules = logical_rules(config)

    def make():
        model = MinimalV1LVGDiT(defs.dit_cfg, rngs=nnx.Rngs(int(config.trainer.seed)))
        return nnx.split(model, nnx.Param, ...)[2]

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        return jax.jit(make, out_shardings=shardings_of(defs.dit_abstract_rest))()


def random_vae_params(config, defs: ModelDefs, mesh: Mesh) -> Any:
    """A deterministic random VAE (seed ``trainer.seed + 1``), materialised with its shardings (configs with
    ``model.tokenizer.random_init``; weight files are read by ``training.weights.load_vae``)."""
    rules = logical_rules(config)

    def make():
        return nnx.state(WanVAE(defs.vae_cfg, rngs=nnx.Rngs(int(config.trainer.seed) + 1)), nnx.Param)

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        return jax.jit(make, out_shardings=shardings_of(defs.vae_abstract_params))()


def announce(msg: str) -> None:
    """One start-up line on process 0's console (the full log keeps it at INFO)."""
    logging.info("%s", msg)
    if jax.process_index() == 0:
        print(f"[cosmos_policy_jax] {msg}", flush=True)
