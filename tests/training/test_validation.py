"""Validation's sampled-action L1 samples as the deployed policy does.

A batch whose video is the policy's own input video (``build_video`` of the camera images) and whose
proprio is already normalised must give, per demo sample, the L1 of ``generate_actions``' normalised
action chunk against the ground truth: same conditioning, same noise (``model.sampler.seed``), same
sampler. Non-demo samples are left out of the sum and the count.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.inference import build_video, jit_policy_fn
from cosmos_policy_jax.training import setup
from cosmos_policy_jax.training.validation import make_sampled_action_l1
from tests.training.helpers import mesh_for, tiny_config


@pytest.mark.slow  # compiles the tiny DiT sampler twice (validation and policy)
def test_sampled_action_l1_is_the_policy_action_error():
    c = tiny_config()
    mesh = mesh_for(c, (1, 1, 1))
    model = setup.build(c, mesh)
    defs = model.defs
    params = model.init_state().params
    vae_params = model.vae_params()
    rest = model.dit_rest()
    pcfg = PolicyConfig.from_config(c)
    ds = c.dataloader_val.dataset
    rng = np.random.default_rng(0)
    b, size = 3, int(ds.final_image_size)
    images = {s: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for s in pcfg.layout.current_image_slots}
    proprio = rng.uniform(-1, 1, (b, pcfg.proprio_dim)).astype(np.float32)
    emb = rng.normal(size=(b, int(ds.text_len), int(ds.text_dim))).astype(np.float32)
    actions = rng.uniform(-1, 1, (b, pcfg.chunk_size, pcfg.action_dim)).astype(np.float32)
    batch = dict(
        video=np.asarray(build_video(images, pcfg.layout, pcfg.temporal_compression)),
        proprio=proprio,
        actions=actions,
        t5_text_embeddings=emb,
        rollout_data_mask=np.array([0, 1, 0]),
    )

    with jax.set_mesh(mesh):
        got = jax.device_get(jax.jit(make_sampled_action_l1(c, defs))(params, batch, vae_params, rest))
        net_def, net_state = nnx.split(nnx.merge(defs.dit_graphdef, params, rest))
        policy = jit_policy_fn(pcfg, net_def, defs.vae_graphdef)
        # Unit statistics make the policy's normalisation of the proprio the identity.
        unit = {
            f"{k}_{e}": np.full(n, v, np.float32)
            for k, n in (("actions", pcfg.action_dim), ("proprio", pcfg.proprio_dim))
            for e, v in (("min", -1.0), ("max", 1.0))
        }
        out = jax.device_get(policy(net_state, vae_params, {**images, "proprio": proprio}, emb, unit))

    err = np.abs(np.asarray(out["actions_normalized"]) - actions).mean(axis=(1, 2))
    assert float(got["sampled_action_count"]) == 2.0
    np.testing.assert_allclose(float(got["sampled_action_l1_sum"]), err[0] + err[2], rtol=1e-5)
    assert err[0] + err[2] > 0.1  # random weights: the sampled chunk is far from the target
