"""Trainer-side data glue: the grain pipeline of a loader section, prefetched as global arrays.

``DataFeed.next()`` returns ``(global batch, data state)`` where the state is the pipeline's JSON
state right after that batch (bytes, for grain's per-process checkpoint files), so a checkpoint
written after consuming a batch resumes with exactly the next one.
"""

from __future__ import annotations

import json

from absl import logging
from jax.sharding import Mesh

from cosmos_policy_jax.config_lib import ConfigError
from cosmos_policy_jax.data.global_batch import DevicePrefetcher, pipeline_for_mesh
from cosmos_policy_jax.data.pipeline import per_device_batch_size
from cosmos_policy_jax.parallel.rules import data_parallel_size


def global_batch_size(loader_cfg, mesh: Mesh) -> int:
    n = data_parallel_size(mesh)
    return per_device_batch_size(loader_cfg, n) * n


def _check_layout(source, config) -> None:
    """The dataset's latent slots must be the model's (the model reads the layout from config)."""
    layout = getattr(source, "layout", None)
    if layout is None:
        return
    want = {k: v for k, v in config.model.latent_layout.items()}
    got = {k: int(layout.get(k, -1)) for k in want}
    bad = [f"{k}: dataset {got[k]} vs model {want[k]}" for k in want if got[k] != want[k]]
    if bad:
        raise ConfigError([f"model.latent_layout does not match the dataset's latent slots ({'; '.join(bad)})"])
    state_t = getattr(source, "state_t", None)
    if state_t is not None and state_t != config.model.state_t:
        raise ConfigError([f"model.state_t={config.model.state_t} but the dataset produces {state_t} latent frames"])


class DataFeed:
    def __init__(self, config, section: str, mesh: Mesh, *, state: bytes | None = None, num_epochs: int | None = None):
        loader_cfg = config[section]
        layout = {k: int(v) for k, v in config.model.latent_layout.items()}
        self.iterator = pipeline_for_mesh(
            loader_cfg, mesh, layout=layout, state_t=int(config.model.state_t), section=section, num_epochs=num_epochs
        )
        _check_layout(self.iterator.source, config)
        if state:
            self._restore(json.loads(state), section)
        self.prefetcher = DevicePrefetcher(
            self.iterator,
            mesh,
            timeout=float(loader_cfg.timeout),
            buffer_size=int(loader_cfg.prefetch_buffer_size),
            name=section,
        )

    def _restore(self, saved: dict, section: str) -> None:
        try:
            self.iterator.set_state(saved)
        except ValueError as e:
            # Another data-parallel size or batch (e.g. restored onto a new mesh): the per-device order of
            # the saved run cannot continue, so start the saved epoch over with the new layout.
            epoch = int(saved.get("epoch", 0))
            restart = {**self.iterator.get_state(), "next_batch": epoch * self.iterator.plan.batches_per_epoch}
            self.iterator.set_state(restart)
            logging.warning("%s: %s; restarting epoch %d with the new layout", section, e, epoch)

    def next(self):
        batch = next(self.prefetcher)
        return batch, json.dumps(self.prefetcher.get_state(), sort_keys=True).encode()

    def close(self) -> None:
        self.prefetcher.close()
        close = getattr(self.iterator.source, "close", None)
        if close is not None:
            close()
