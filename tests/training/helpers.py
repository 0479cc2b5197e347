"""Shared set-up for trainer tests: tiny configs, meshes, synthetic global batches, one-step runs."""

from __future__ import annotations

import jax
import numpy as np
from ml_collections import config_dict

from configs.cosmos_policy import get_config
from cosmos_policy_jax import config_lib
from cosmos_policy_jax.parallel.mesh import make_mesh
from cosmos_policy_jax.training import setup
from cosmos_policy_jax.training.data import DataFeed


def tiny_config(tmp_path=None, **overrides) -> config_dict.ConfigDict:
    c = get_config("tiny")
    if tmp_path is not None:
        c.job.path_local = str(tmp_path)
    c.trainer.callbacks = ("metrics_logger",)
    for dotted, value in overrides.items():
        config_lib.set_field(c, dotted.replace("__", "."), value)
    config_lib.resolve(c)
    return c


def mesh_for(config, shape, devices=None):
    config.parallel.data, config.parallel.fsdp, config.parallel.tensor = shape
    devs = jax.devices()[: int(np.prod(shape))] if devices is None else devices
    return make_mesh(config.parallel, devs)


def host_batches(config, mesh, n: int) -> list[dict]:
    """The first ``n`` global batches of the config's training pipeline on ``mesh``."""
    feed = DataFeed(config, "dataloader_train", mesh)
    try:
        return [feed.next()[0] for _ in range(n)]
    finally:
        feed.close()


class StepRunner:
    """Train state + jitted micro-step for a config on a mesh."""

    def __init__(self, config, mesh, batch_example: dict):
        self.config, self.mesh = config, mesh
        self.model = setup.build(config, mesh)
        self.defs, self.tx, self.state_sh = self.model.defs, self.model.tx, self.model.state_shardings
        self.state = self.model.init_state()
        self.vae = self.model.vae_params()
        self.rest = self.model.dit_rest()
        self.step = self.model.jit_step(batch_example)

    def put(self, batch: dict) -> dict:
        """Re-place a batch (possibly from another mesh) onto this mesh's batch sharding."""
        from cosmos_policy_jax.parallel.rules import batch_sharding

        return {k: jax.device_put(np.asarray(v), batch_sharding(self.mesh, np.ndim(v))) for k, v in batch.items()}

    def run(self, batch: dict) -> dict:
        with jax.set_mesh(self.mesh):
            self.state, metrics = self.step(self.state, self.put(batch), self.vae, self.rest)
        return jax.device_get(metrics)


def flat_params(state) -> dict:
    from cosmos_policy_jax.convert.core import flatten_abstract

    return {k: np.asarray(v) for k, v in flatten_abstract(jax.device_get(state.params).to_pure_dict()).items()}
