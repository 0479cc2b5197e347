"""One way to build the model of a config on a mesh: ``build(config, mesh) -> ModelSetup``.

A ``ModelSetup`` owns the static parts (the NNX graph definitions and abstract states, the optimizer and
its schedule, the train state's shardings) and makes the rest on request: the abstract skeleton (lower
and compile without materialising anything), a fresh or given-weights train state, the configured
initial DiT weights (``checkpoint.load_path``, or random), the frozen VAE parameters, the DiT's
non-parameter state and the jitted train step. The trainer, the benchmarks and the policy loader all
start from it, so that they build the same model the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from cosmos_policy_jax.config_lib import ConfigError
from cosmos_policy_jax.training import weights
from cosmos_policy_jax.training.optimizer import make_optimizer
from cosmos_policy_jax.training.state import (
    ModelDefs,
    TrainState,
    abstract_train_state,
    announce,
    create_dit_rest,
    create_train_state,
    model_defs,
    random_vae_params,
    shardings_of,
    train_state_shardings,
)
from cosmos_policy_jax.training.step import jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True)
class AbstractModel:
    """ShapeDtypeStructs carrying their shardings: the train state, the frozen VAE parameters and the
    DiT's non-parameter state (the restore target; what ``lower``/``compile`` take)."""

    state: TrainState
    vae: Any
    rest: Any


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSetup:
    """The model of ``config`` on ``mesh``; build it with ``build``."""

    config: Any
    mesh: Mesh
    defs: ModelDefs
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState

    def abstract(self) -> AbstractModel:
        state = abstract_train_state(self.config, self.defs, self.tx, self.mesh)
        return AbstractModel(state, self.defs.vae_abstract_params, self.defs.dit_abstract_rest)

    def init_state(self, params: Any = None) -> TrainState:
        """A step-0 train state around ``params`` (random when None), created directly sharded."""
        return create_train_state(self.config, self.defs, self.tx, self.mesh, params=params)

    def initial_params(self) -> Any:
        """The DiT weights of ``checkpoint.load_path`` (EMA ones per ``checkpoint.load_ema_to_reg``), or None
        for a random start when it is empty. Either is announced on process 0's console."""
        path = self.config.checkpoint.load_path
        if not path:
            announce("DiT: random initialisation (checkpoint.load_path is empty)")
            return None
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint.load_path does not exist: {path}")
        loaded = self.load_params(path, use_ema=weights.ema_rule(self.config))
        announce(f"loaded DiT weights from {loaded.source}")
        return loaded.params

    def load_params(self, path: str, *, use_ema: bool | None = None) -> weights.Loaded:
        """DiT weights from any checkpoint kind (``training.weights.load_dit``), on this model's shardings."""
        return weights.load_dit(path, self.defs.dit_abstract_params, use_ema=use_ema)

    def vae_params(self) -> Any:
        """Frozen VAE parameters: from ``model.tokenizer.load_path``, or a deterministic random init when
        ``model.tokenizer.random_init`` asks for one. Either is announced on process 0's console."""
        tok = self.config.model.tokenizer
        if tok.load_path:
            loaded = weights.load_vae(tok.load_path, self.defs.vae_abstract_params, self.defs.vae_cfg)
            announce(f"loaded VAE weights from {loaded.source}")
            return loaded.params
        # A config saved before ``random_init`` existed meant a random VAE by an empty load_path.
        if not tok.get("random_init", True):
            raise ConfigError(["model.tokenizer.load_path: empty and model.tokenizer.random_init is not set"])
        announce("VAE: random initialisation (model.tokenizer.random_init=True; no weight file)")
        return random_vae_params(self.config, self.defs, self.mesh)

    def dit_rest(self) -> Any:
        """The DiT's non-parameter state (buffers), materialised with its shardings."""
        return create_dit_rest(self.defs, self.mesh, self.config)

    def train_step(self) -> Callable:
        """The pure micro-step ``(state, batch, vae_params, dit_rest) -> (state, metrics)``."""
        return make_train_step(self.config, self.defs, self.tx, self.schedule)

    def jit_step(self, example_batch: dict) -> Callable:
        """The train step jitted with explicit shardings for batches shaped like ``example_batch`` (arrays or
        ShapeDtypeStructs); the state is donated."""
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in example_batch.items()}
        return jit_train_step(
            self.train_step(),
            self.state_shardings,
            batch,
            shardings_of(self.defs.vae_abstract_params),
            shardings_of(self.defs.dit_abstract_rest),
            self.mesh,
        )


def build(config: Any, mesh: Mesh) -> ModelSetup:
    """The model definitions, optimizer and state shardings of ``config`` on ``mesh`` (nothing materialised)."""
    defs = model_defs(config, mesh)
    tx, schedule = make_optimizer(config)
    return ModelSetup(config, mesh, defs, tx, schedule, train_state_shardings(config, defs, tx, mesh))
