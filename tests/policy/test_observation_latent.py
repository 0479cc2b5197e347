"""The inference encode of only the conditioning prefix equals the whole-video encode it replaced.

Real (random-initialised) ``demo`` DiT and Wan VAE: the VAE is causal in time, so the latent of the
first ``num_conditional_frames`` frames does not depend on the later (placeholder) pixel frames, and the
sampler never reads the later latent frames of the condition. The reference path below is the former
``generate_actions``: the whole video encoded, then the same conditioning, sampler and decode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cosmos_policy import get_config
from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig
from cosmos_policy_jax.policy import inference
from cosmos_policy_jax.policy.conditioning import encode_video, inference_condition
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.denoiser import sample_latent

# float32 model; the two encodes differ only in the convolutions' time extent (summation order).
LATENT_ATOL = 1e-5
ACTION_ATOL = 1e-5


@pytest.fixture(scope="module")
def demo_policy():
    config = get_config("demo")
    cfg = PolicyConfig.from_config(config)
    net = MinimalV1LVGDiT(DiTConfig.from_config(config.model.net), rngs=nnx.Rngs(0))
    vae = WanVAE(WanVAEConfig.from_config(config.model.tokenizer), rngs=nnx.Rngs(1))
    ds = config.dataloader_train.dataset
    return cfg, net, vae, int(ds.final_image_size), (int(ds.text_len), int(ds.text_dim))


def _inputs(cfg, size, text_shape, b, seed):
    rng = np.random.default_rng(seed)
    obs = {s: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for s in cfg.layout.current_image_slots}
    obs["proprio"] = rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32)
    stats = {
        "actions_min": -np.ones(cfg.action_dim, np.float32),
        "actions_max": np.ones(cfg.action_dim, np.float32),
        "proprio_min": -np.ones(cfg.proprio_dim, np.float32),
        "proprio_max": np.ones(cfg.proprio_dim, np.float32),
    }
    emb = rng.normal(size=(b, *text_shape)).astype(np.float32)
    side = size // 8
    noise = inference.batch_noise((b, cfg.state_ch, cfg.layout.state_t, side, side), range(b), cfg.sampler_sigma_max)
    return obs, emb, stats, noise


def _whole_video_actions(net, vae, obs, emb, stats, noise, cfg):
    """The former inference path: every pixel frame encoded."""
    video = inference.build_video(obs, cfg.layout, cfg.temporal_compression)
    latent = encode_video(vae, video, cfg)
    st = {k: jnp.asarray(v) for k, v in stats.items()}
    proprio = inference.normalize_to_unit_range(jnp.asarray(obs["proprio"]), st["proprio_min"], st["proprio_max"])
    gt, mask = inference_condition(latent, proprio, cfg)
    b, h, w = video.shape[0], video.shape[-2], video.shape[-1]
    padding = jnp.zeros((b, 1, h, w), jnp.float32)
    sample = sample_latent(net, gt, mask, emb, padding, jnp.asarray(noise), cfg)
    return latent, inference.decode_action_latent(sample, cfg.layout, cfg.chunk_size, cfg.action_dim)


@pytest.mark.parametrize("b", [1, 3])
def test_prefix_encode_gives_the_whole_video_encode_actions(demo_policy, b):
    cfg, net, vae, size, text_shape = demo_policy
    obs, emb, stats, noise = _inputs(cfg, size, text_shape, b, seed=b)
    lay = cfg.layout
    n = lay.num_conditional_frames
    assert n < lay.state_t  # the layout has frames the prefix encode skips

    video = inference.build_video(obs, lay, cfg.temporal_compression)
    prefix = jax.jit(lambda v: inference.observation_latent(vae, v, cfg))(video)
    full_latent, old_actions = nnx.jit(_whole_video_actions, static_argnums=(6,))(net, vae, obs, emb, stats, noise, cfg)
    np.testing.assert_allclose(np.asarray(prefix[:, :, :n]), np.asarray(full_latent[:, :, :n]), atol=LATENT_ATOL)
    assert not np.asarray(prefix[:, :, n:]).any()  # never read by the sampler
    assert np.abs(np.asarray(full_latent[:, :, n:])).max() > 0.1  # so the skipped frames were real work

    fn = inference.jit_policy_fn(cfg, *[nnx.split(m)[0] for m in (net, vae)])
    out = fn(nnx.split(net)[1], nnx.split(vae)[1], obs, emb, stats, noise)
    np.testing.assert_allclose(np.asarray(out["actions_normalized"]), np.asarray(old_actions), atol=ACTION_ATOL)
    assert np.abs(np.asarray(old_actions)).max() > 1e-3  # a random network's actions are not all zero
