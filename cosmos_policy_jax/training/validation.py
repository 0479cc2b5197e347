"""Validation: the training loss on held-out batches and the L1 of *sampled* action chunks.

The reference has no validation (its users asked for one). Every run evaluates the same batches
(the validation pipeline is not shuffled and restarts each time) with a fixed noise key, so
numbers are comparable across iterations. The sampled-action L1 runs the inference sampler
(``model.sampler``: sigma 80 -> 4, 5 steps, "2ab") conditioned on the current frames and proprio
of each demo sample, and compares the decoded chunk with the ground truth, in normalised units.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cosmos_policy_jax.policy.conditioning import cast_batch_floats, encode_batch_video, inference_condition
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.denoiser import sample_latent, sampler_noise
from cosmos_policy_jax.policy.inference import decode_action_latent
from cosmos_policy_jax.training.data import DataFeed
from cosmos_policy_jax.training.step import make_eval_loss


def make_sampled_action_l1(config, defs) -> Any:
    pcfg = PolicyConfig.from_config(config)
    layout = pcfg.layout

    def fn(params, batch: dict, vae_params: Any, dit_rest: Any) -> dict:
        vae = nnx.merge(defs.vae_graphdef, vae_params)
        b = cast_batch_floats(batch, pcfg.compute_dtype) if pcfg.compute_dtype != jnp.float32 else batch
        latent = encode_batch_video(vae, batch, pcfg)
        proprio = b["proprio"] if layout.has("current_proprio") else None
        gt, mask = inference_condition(latent, proprio, pcfg)
        emb = b["t5_text_embeddings"]
        padding = b.get("padding_mask")
        if padding is None:
            h, w = batch["video"].shape[-2:]
            padding = jnp.zeros((latent.shape[0], 1, h, w), jnp.float32)

        net = nnx.merge(defs.dit_graphdef, params, dit_rest)
        x_init = sampler_noise(tuple(latent.shape), pcfg)
        sample = sample_latent(net, gt, mask, emb, padding, x_init, pcfg)
        pred = decode_action_latent(sample, layout, pcfg.chunk_size, pcfg.action_dim)
        err = jnp.abs(pred - batch["actions"].astype(jnp.float32)).mean(axis=(1, 2))
        demo = (batch.get("rollout_data_mask", jnp.zeros_like(err)) == 0).astype(jnp.float32)
        return {"sampled_action_l1_sum": (err * demo).sum(), "sampled_action_count": demo.sum()}

    return fn


class Validator:
    def __init__(self, config, mesh: Mesh, defs):
        self.config = config
        self.mesh = mesh
        self.max_iter = int(config.trainer.max_val_iter)
        self.eval_loss = jax.jit(make_eval_loss(config, defs))
        self.sample_l1 = jax.jit(make_sampled_action_l1(config, defs))
        self.key = jax.random.key(int(config.trainer.seed) + 7919)

    def run(self, params, vae_params, dit_rest, iteration: int) -> dict[str, float]:
        feed = DataFeed(self.config, "dataloader_val", self.mesh, num_epochs=1)
        sums: dict[str, list[float]] = {}
        l1_sum = count = 0.0
        try:
            for i in range(self.max_iter):
                try:
                    batch, _ = feed.next()
                except StopIteration:
                    break
                m = jax.device_get(self.eval_loss(params, batch, vae_params, dit_rest, jax.random.fold_in(self.key, i)))
                for k, v in m.items():
                    sums.setdefault(k, []).append(float(np.mean(v)))
                s = jax.device_get(self.sample_l1(params, batch, vae_params, dit_rest))
                l1_sum += float(s["sampled_action_l1_sum"])
                count += float(s["sampled_action_count"])
        finally:
            feed.close()
        out = {}
        for k, vals in sums.items():
            finite = [v for v in vals if np.isfinite(v)]
            out[k] = float(np.mean(finite)) if finite else float("nan")
        out["sampled_action_l1"] = l1_sum / count if count else float("nan")
        return out

    def close(self) -> None:
        pass
