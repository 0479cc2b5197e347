"""The trained Cosmos Policy as an evaluation policy: weights in, one jitted batched call per query.

The network runs on one device (a 1 x 1 x 1 mesh): evaluation batches are small and the 2B model
fits one accelerator. The DiT weights come from ``--checkpoint`` (``loading.load_dit_params``), the
VAE from ``model.tokenizer.load_path`` (random init when empty, as in the demo config; the same
deterministic init the trainer uses), exactly as training built them.
"""

from __future__ import annotations

import time
import types
from typing import Any

import jax
import numpy as np
from flax import nnx

from cosmos_policy_jax.eval.loading import load_dit_params
from cosmos_policy_jax.eval.policies import PolicyInput, PolicyOutput


class ModelPolicy:
    """``generate_actions`` compiled once per (batch shape, seed); returns un-normalised chunks and values."""

    def __init__(self, net: Any, vae: Any, cfg: Any, stats: dict[str, np.ndarray], *, num_steps: int | None = None):
        from cosmos_policy_jax.policy.inference import STAT_KEYS

        self.net, self.vae, self.cfg = net, vae, cfg
        self.num_steps = num_steps
        self.stats = {k: np.asarray(stats[k], np.float32) for k in STAT_KEYS}
        self._fns: dict[int, Any] = {}

    def _fn(self, seed: int):
        from cosmos_policy_jax.policy.inference import make_policy_fn

        if seed not in self._fns:
            self._fns[seed] = make_policy_fn(self.cfg, seed=seed, num_steps=self.num_steps)
        return self._fns[seed]

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        observation = {**batch.images, "proprio": np.asarray(batch.proprio, np.float32)}
        out = self._fn(int(seed))(self.net, self.vae, observation, np.asarray(batch.embedding, np.float32), self.stats)
        out = jax.device_get(out)
        value = out.get("value")
        return PolicyOutput(
            actions=np.asarray(out["actions"], np.float64),
            value=None if value is None else np.asarray(value, np.float64),
            extras={k: out[k] for k in ("future_proprio",) if k in out},
        )


def build_model_policy(
    config: Any,
    checkpoint: str,
    stats: dict[str, np.ndarray],
    *,
    use_ema: bool | None = None,
    num_steps: int | None = None,
) -> tuple[ModelPolicy, dict[str, Any]]:
    """(policy, metadata for the report) for ``config``'s model with the weights at ``checkpoint``."""
    from cosmos_policy_jax.parallel.mesh import make_mesh
    from cosmos_policy_jax.policy.objective import PolicyConfig
    from cosmos_policy_jax.training.state import create_dit_rest, create_vae_params, model_defs

    t0 = time.perf_counter()
    mesh = make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    defs = model_defs(config, mesh)
    loaded = load_dit_params(checkpoint, defs.dit_abstract_params, use_ema=use_ema)
    vae_params = create_vae_params(config, defs, mesh)
    rest = create_dit_rest(defs, mesh, config)
    net = nnx.merge(defs.dit_graphdef, loaded.params, rest)
    vae = nnx.merge(defs.vae_graphdef, vae_params)
    cfg = PolicyConfig.from_config(config)
    meta = {
        "policy": "model",
        "weights": loaded.source,
        "vae": config.model.tokenizer.load_path or "random init (model.tokenizer.load_path is empty)",
        "num_denoising_steps": int(num_steps or config.model.sampler.num_steps),
        "device": str(jax.devices()[0]),
        "load_s": round(time.perf_counter() - t0, 2),
    }
    return ModelPolicy(net, vae, cfg, stats, num_steps=num_steps), meta
