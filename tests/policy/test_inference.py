"""Policy inference with a toy VAE and an oracle network (no DiT/VAE weights needed).

The oracle network outputs the velocity that makes every x0 prediction equal a known target latent
(x0 = c_skip x_t + c_out F with F = (x_in - target) / t), so the sampler must return the target and the
decoded actions / value / future proprio must equal the values written into it. The network also records
its inputs, which checks the conditioning (video layout, injected proprio, mask, timesteps).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cosmos_policy import get_config
from cosmos_policy_jax.policy import inference, injection
from cosmos_policy_jax.policy.config import PolicyConfig

HW = 16  # pixels; latent 2x2


class ToyVAE(nnx.Module):
    """Deterministic stand-in: mean over 4-frame groups (frame 0 alone) and 8x8 pixels, then a 16x3 map."""

    def __init__(self):
        self.proj = nnx.Variable(jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)))
        self.decoded_from = nnx.Variable(jnp.zeros(()))

    def encode(self, video):
        b, c, t, h, w = video.shape
        first = video[:, :, :1]
        rest = video[:, :, 1:].reshape(b, c, (t - 1) // 4, 4, h, w).mean(axis=3)
        v = jnp.concatenate([first, rest], axis=2).astype(jnp.float32)
        v = v.reshape(b, c, v.shape[2], h // 8, 8, w // 8, 8).mean(axis=(4, 6))
        return jnp.einsum("zc,bcthw->bzthw", self.proj[...], v)

    def decode(self, latent):
        rgb = jnp.tanh(latent[:, :3])
        frames = jnp.concatenate([rgb[:, :, :1], jnp.repeat(rgb[:, :, 1:], 4, axis=2)], axis=2)
        return jnp.repeat(jnp.repeat(frames, 8, axis=3), 8, axis=4)


class OracleNet(nnx.Module):
    def __init__(self, target):
        self.target = nnx.Variable(jnp.asarray(target))

    def __call__(self, x, timesteps, emb, mask, padding, data_type="video"):
        t = timesteps.astype(jnp.float32)[:, None, :, None, None]
        safe = jnp.where(t > 0, t, 1.0)
        return jnp.where(t > 0, (x.astype(jnp.float32) - self.target[...]) / safe, 0.0)


def setup(name="libero", b=2, seed=0):
    c = get_config(f"{name},fp32")
    c.dataloader_train.dataset.chunk_size = 4
    c.dataloader_train.dataset.action_dim = 3
    c.dataloader_train.dataset.proprio_dim = 5
    cfg = PolicyConfig.from_config(c)
    rng = np.random.default_rng(seed)
    lay = cfg.layout
    obs = {s: rng.integers(0, 256, (b, HW, HW, 3), dtype=np.uint8) for s in lay.current_image_slots}
    stats = dict(
        actions_min=rng.uniform(-2, -1, cfg.action_dim),
        actions_max=rng.uniform(1, 2, cfg.action_dim),
        proprio_min=rng.uniform(-2, -1, cfg.proprio_dim),
        proprio_max=rng.uniform(1, 2, cfg.proprio_dim),
    )
    obs["proprio"] = rng.uniform(stats["proprio_min"], stats["proprio_max"], (b, cfg.proprio_dim)).astype(np.float32)
    actions = rng.uniform(-1, 1, (b, cfg.chunk_size, cfg.action_dim)).astype(np.float32)
    future_proprio = rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32)
    value = rng.uniform(-1, 1, (b,)).astype(np.float32)
    target = rng.normal(size=(b, cfg.state_ch, lay.state_t, HW // 8, HW // 8)).astype(np.float32)
    target = injection.inject_vector(jnp.asarray(target), jnp.asarray(actions), lay.index("action"))
    target = injection.inject_vector(target, jnp.asarray(future_proprio), lay.index("future_proprio"))
    target = injection.inject_scalar(target, jnp.asarray(value), lay.index("value"))
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    return cfg, obs, stats, emb, np.asarray(target), (actions, future_proprio, value)


@pytest.mark.parametrize("name", ["libero", "aloha"])
def test_oracle_network_recovers_injected_values(name):
    cfg, obs, stats, emb, target, (actions, future_proprio, value) = setup(name)
    net = OracleNet(target)
    out = inference.generate_actions(net, ToyVAE(), obs, emb, stats, cfg, seed=3)
    np.testing.assert_allclose(
        np.asarray(out["latent"])[:, :, cfg.layout.num_conditional_frames :],
        target[:, :, cfg.layout.num_conditional_frames :],
        rtol=1e-4,
        atol=1e-4,
    )
    lo, hi = stats["actions_min"], stats["actions_max"]
    np.testing.assert_allclose(np.asarray(out["actions_normalized"]), actions, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["actions"]), 0.5 * (actions + 1) * (hi - lo) + lo, rtol=1e-4, atol=1e-4)
    plo, phi = stats["proprio_min"], stats["proprio_max"]
    np.testing.assert_allclose(
        np.asarray(out["future_proprio"]), 0.5 * (future_proprio + 1) * (phi - plo) + plo, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(out["value"]), np.clip((value + 1) / 2, 0, 1), atol=1e-4)
    assert out["actions"].shape == (2, cfg.chunk_size, cfg.action_dim)


def test_network_sees_the_dataset_video_layout_and_proprio():
    cfg, obs, stats, emb, _, _ = setup("robocasa")
    lay = cfg.layout
    seen = []

    def net(x, timesteps, e, mask, padding, data_type="video"):
        seen.append((np.asarray(x), np.asarray(timesteps), np.asarray(mask), np.asarray(e)))
        return jnp.zeros_like(x, jnp.float32)

    vae = ToyVAE()
    # One step: a single direct call at sigma_max, outside the sampler's scan, so the inputs are concrete.
    inference.generate_actions(net, vae, obs, emb, stats, cfg, seed=0, num_steps=1)
    assert len(seen) == 1
    x, timesteps, mask, e = seen[0]
    # The video: blank frame 0, 4 copies of each current camera in its slot, everything else black.
    video = np.asarray(inference.build_video(obs, lay))
    assert video.shape == (2, 3, lay.num_pixel_frames(), HW, HW)
    for slot in lay.current_image_slots:
        for f in lay.pixel_frames(lay.index(slot)):
            np.testing.assert_array_equal(video[:, :, f], obs[slot].transpose(0, 3, 1, 2))
    image_pixels = {f for s in lay.current_image_slots for f in lay.pixel_frames(lay.index(s))}
    assert not video[:, :, [f for f in range(video.shape[2]) if f not in image_pixels]].any()
    latent = np.asarray(vae.encode(jnp.asarray(video, jnp.float32) / 127.5 - 1))
    cond = list(range(lay.num_conditional_frames))
    p = lay.index("current_proprio")
    np.testing.assert_allclose(
        x[:, :, [k for k in cond if k != p]], latent[:, :, [k for k in cond if k != p]], rtol=1e-6
    )
    norm_proprio = 2 * (obs["proprio"] - stats["proprio_min"]) / (stats["proprio_max"] - stats["proprio_min"]) - 1
    np.testing.assert_allclose(
        injection.extract_vector(jnp.asarray(x), p, cfg.proprio_dim), norm_proprio, rtol=1e-5, atol=1e-6
    )
    assert np.all(mask[:, 0, :, 0, 0] == (np.arange(lay.state_t) < lay.num_conditional_frames))
    assert np.all(timesteps[:, : lay.num_conditional_frames] == 0)
    # First call at sigma_max = 80: t = 80/81 on every generated frame.
    np.testing.assert_allclose(timesteps[:, lay.num_conditional_frames :], 80 / 81, rtol=1e-6)
    np.testing.assert_array_equal(e, np.broadcast_to(emb, (2, *emb.shape)))


def test_jit_batched_and_future_images():
    cfg, obs, stats, emb, target, _ = setup("libero", b=3, seed=1)
    net, vae = OracleNet(target), ToyVAE()
    stats_arrays = {k: np.asarray(v, np.float32) for k, v in stats.items()}
    fn = inference.make_policy_fn(cfg, seed=2, return_future_images=True)
    jitted = fn(net, vae, {k: jnp.asarray(v) for k, v in obs.items()}, jnp.asarray(emb), stats_arrays)
    eager = inference.generate_actions(net, vae, obs, emb, stats_arrays, cfg, seed=2, return_future_images=True)
    np.testing.assert_allclose(np.asarray(jitted["actions"]), np.asarray(eager["actions"]), rtol=1e-5, atol=1e-5)
    imgs = jitted["future_images"]
    assert set(imgs) == {"future_image", "future_wrist_image"}
    for slot, img in imgs.items():
        assert img.shape == (3, HW, HW, 3) and img.dtype == jnp.uint8
        # Toy decode: tanh of the first 3 latent channels, 8x8 blocks; the sample's image frames are the target's.
        k = cfg.layout.index(slot)
        expected = np.clip((np.tanh(target[:, :3, k]) + 1) * 127.5, 0, 255)
        expected = np.repeat(np.repeat(expected, 8, axis=2), 8, axis=3).transpose(0, 2, 3, 1)
        assert np.abs(np.asarray(img, np.float64) - expected).max() <= 1.0


class ScannedOracle(nnx.Module):
    """Oracle whose call runs an ``nnx.scan`` over stacked layers, as the DiT's scanned blocks do."""

    def __init__(self, target):
        self.target = nnx.Variable(jnp.asarray(target))

        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(rngs):
            return nnx.Linear(3, 3, rngs=rngs)

        self.layers = make(nnx.Rngs(0))

    def __call__(self, x, timesteps, emb, mask, padding, data_type="video"):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(h, layer):
            return layer(h)

        zero = 0.0 * body(jnp.ones((1, 3)), self.layers).sum()
        return OracleNet.__call__(self, x, timesteps, emb, mask, padding) + zero


def test_jit_with_a_module_using_nnx_transforms():
    # Regression: calling such a module inside the sampler's lax.scan under nnx.jit needs a re-merge per trace.
    cfg, obs, stats, emb, target, (actions, _, _) = setup("libero", b=1, seed=4)
    obs = {k: v[:1] for k, v in obs.items()}
    out = inference.make_policy_fn(cfg, seed=0)(ScannedOracle(target[:1]), ToyVAE(), obs, emb, stats)
    np.testing.assert_allclose(np.asarray(out["actions_normalized"]), actions[:1], atol=1e-4)


def test_decode_action_latent_round_trip():
    cfg, *_ = setup("aloha")
    rng = np.random.default_rng(5)
    lat = jnp.asarray(rng.normal(size=(2, 16, cfg.state_t, 3, 3)).astype(np.float32))
    acts = rng.uniform(-1, 1, (2, cfg.chunk_size, cfg.action_dim)).astype(np.float32)
    lat = injection.inject_vector(lat, jnp.asarray(acts), cfg.layout.index("action"))
    np.testing.assert_allclose(
        np.asarray(inference.decode_action_latent(lat, cfg.layout, cfg.chunk_size, cfg.action_dim)), acts, rtol=1e-6
    )


def test_missing_inputs():
    cfg, obs, stats, emb, target, _ = setup("libero")
    with pytest.raises(KeyError, match="current_wrist_image"):
        inference.generate_actions(
            OracleNet(target), ToyVAE(), {k: v for k, v in obs.items() if k != "current_wrist_image"}, emb, stats, cfg
        )
    with pytest.raises(KeyError, match="proprio_max"):
        inference.generate_actions(
            OracleNet(target), ToyVAE(), obs, emb, {k: v for k, v in stats.items() if k != "proprio_max"}, cfg
        )
