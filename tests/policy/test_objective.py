"""Training objective on tiny synthetic batches with a fake network (no DiT needed).

The central check: with the network output as the free variable, the gradient of the
loss is non-zero exactly on the frames each sample type must learn, for the 9-frame LIBERO layout and the
11-frame RoboCasa/ALOHA layouts, with and without the optional loss-masking flags.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.policy import objective
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.layout import FUTURE_STATE_SLOTS, LatentLayout
from cosmos_policy_jax.policy.objective import policy_loss

SAMPLE_TYPES = ("demo", "world_model", "value_function")


def make_cfg(name: str, **overrides) -> PolicyConfig:
    c = get_config(f"{name},fp32")
    c.dataloader_train.dataset.chunk_size = 4
    c.dataloader_train.dataset.action_dim = 3
    c.dataloader_train.dataset.proprio_dim = 5
    return PolicyConfig.from_config(c, **overrides)


def make_batch(cfg: PolicyConfig, types, seed=0, hw=(2, 2)):
    rng = np.random.default_rng(seed)
    b = len(types)
    rollout = np.array([t != "demo" for t in types], np.int64)
    batch = dict(
        actions=rng.uniform(-1, 1, (b, cfg.chunk_size, cfg.action_dim)).astype(np.float32),
        proprio=rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32),
        future_proprio=rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32),
        value_function_return=rng.uniform(-1, 1, (b,)),
        t5_text_embeddings=rng.normal(size=(b, 6, 8)).astype(np.float32),
        padding_mask=np.zeros((b, 1, 8 * hw[0], 8 * hw[1]), np.float32),
        rollout_data_mask=rollout,
        world_model_sample_mask=np.array([t == "world_model" for t in types], np.int64),
        value_function_sample_mask=np.array([t == "value_function" for t in types], np.int64),
        **cfg.layout.batch_entries(b),
    )
    latent = rng.normal(size=(b, cfg.state_ch, cfg.state_t, *hw)).astype(np.float32)
    return batch, latent


def out_grad(cfg, batch, latent, seed=1):
    """Gradient of the loss w.r.t. the network output (B, C, T, H, W), plus aux."""
    rng = np.random.default_rng(seed)
    b = latent.shape[0]
    sigma = rng.uniform(0.5, 50.0, (b, 1)).astype(np.float32)
    eps = rng.normal(size=latent.shape).astype(np.float32)
    net_out = jnp.asarray(rng.normal(size=latent.shape).astype(np.float32))

    def f(out):
        loss, _, aux = policy_loss(lambda *a, **k: out, latent, batch, cfg, sigma=sigma, epsilon=eps)
        return loss, aux

    grad, aux = jax.grad(f, has_aux=True)(net_out)
    return np.asarray(grad), aux, (sigma, eps, np.asarray(net_out))


def trained_frames(grad):
    """Per sample: the set of frames with a non-zero gradient; asserts all-or-nothing within a frame."""
    out = []
    for g in grad:
        nz = np.abs(g) > 0  # (C, T, H, W)
        per_frame = nz.any(axis=(0, 2, 3))
        assert np.array_equal(per_frame, nz.all(axis=(0, 2, 3))), "a frame is only partly trained"
        out.append(set(np.flatnonzero(per_frame).tolist()))
    return out


def expected_frames(lay: LatentLayout):
    future = set(lay.frames(FUTURE_STATE_SLOTS))
    value = set(lay.frames(("value",)))
    action = {lay.index("action")}
    return dict(demo=action | future | value, world_model=future | value, value_function=value), action, future, value


@pytest.mark.parametrize("name", ["libero", "robocasa", "aloha"])
def test_each_sample_type_trains_exactly_its_frames(name):
    cfg = make_cfg(name)
    batch, latent = make_batch(cfg, SAMPLE_TYPES)
    grad, aux, _ = out_grad(cfg, batch, latent)
    exp, *_ = expected_frames(cfg.layout)
    got = trained_frames(grad)
    assert got == [exp[t] for t in SAMPLE_TYPES]
    # The shipped layouts: demo samples train every frame after the conditional ones.
    assert exp["demo"] == set(range(cfg.layout.num_conditional_frames, cfg.state_t))
    # And the conditioning mask is the complement.
    mask = np.asarray(aux["condition_video_input_mask"])[:, 0, :, 0, 0]
    for i, t in enumerate(SAMPLE_TYPES):
        assert set(np.flatnonzero(mask[i] == 0).tolist()) == exp[t]


@pytest.mark.parametrize("name", ["libero", "aloha"])
def test_mask_loss_for_action_future_state_prediction(name):
    cfg = make_cfg(name, mask_loss_for_action_future_state_prediction=True)
    batch, latent = make_batch(cfg, SAMPLE_TYPES)
    grad, _, _ = out_grad(cfg, batch, latent)
    _, action, future, value = expected_frames(cfg.layout)
    assert trained_frames(grad) == [action, future, value]


def test_mask_value_prediction_loss_for_policy_prediction():
    cfg = make_cfg("robocasa", mask_value_prediction_loss_for_policy_prediction=True)
    batch, latent = make_batch(cfg, ("demo", "world_model", "demo"))
    grad, _, _ = out_grad(cfg, batch, latent)
    _, action, future, _ = expected_frames(cfg.layout)
    assert trained_frames(grad) == [action | future, future, action | future]


@pytest.mark.parametrize(
    "flag", ["mask_current_state_action_for_value_prediction", "mask_future_state_for_qvalue_prediction"]
)
def test_value_input_masking(flag):
    cfg = make_cfg("aloha", **{flag: True})
    batch, latent = make_batch(cfg, SAMPLE_TYPES)
    grad, aux, _ = out_grad(cfg, batch, latent)
    exp, action, future, value = expected_frames(cfg.layout)
    lay = cfg.layout
    masked_inputs = (
        {*lay.frames(("current_proprio", "current_wrist_image", "current_wrist_image2", "current_image")), *action}
        if flag.startswith("mask_current")
        else future
    )
    mask = np.asarray(aux["condition_video_input_mask"])[:, 0, :, 0, 0]
    assert set(np.flatnonzero(mask[2] == 0).tolist()) == masked_inputs | value
    # Demo and world-model samples are unaffected; the value-function sample only learns the value.
    assert trained_frames(grad) == [exp["demo"], exp["world_model"], value]


def test_action_loss_multiplier_scales_only_the_action_frame():
    base = make_cfg("libero")
    batch, latent = make_batch(base, ("demo", "world_model"))
    g1, _, _ = out_grad(base, batch, latent)
    g3, _, _ = out_grad(dataclasses.replace(base, action_loss_multiplier=3), batch, latent)
    a = base.layout.index("action")
    np.testing.assert_allclose(g3[:, :, a], 3 * g1[:, :, a], rtol=1e-6)
    others = [k for k in range(base.state_t) if k != a]
    np.testing.assert_array_equal(g3[:, :, others], g1[:, :, others])


@pytest.mark.parametrize("name", ["libero", "robocasa"])
def test_loss_is_velocity_mse_with_all_frames_denominator(name):
    cfg = make_cfg(name)
    batch, latent = make_batch(cfg, SAMPLE_TYPES, seed=3)
    rng = np.random.default_rng(4)
    sigma = rng.uniform(0.5, 50.0, (3, 1)).astype(np.float32)
    eps = rng.normal(size=latent.shape).astype(np.float32)
    out = rng.normal(size=latent.shape).astype(np.float32)
    loss, metrics, aux = policy_loss(lambda *a, **k: jnp.asarray(out), latent, batch, cfg, sigma=sigma, epsilon=eps)
    x0 = np.asarray(aux["x0"], np.float64)
    noised = 1 - np.asarray(aux["condition_video_input_mask"], np.float64)  # (B, 1, T, H, W)
    velocity_err = (out - (eps - x0)) ** 2 * noised
    expected = 10.0 * velocity_err.sum() / velocity_err.size
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    assert float(metrics["loss"]) == float(loss)
    np.testing.assert_allclose(float(metrics["edm_loss"]) * 10, float(loss), rtol=1e-6)


def test_metrics_counts_and_nan_for_empty_groups():
    cfg = make_cfg("libero")
    batch, latent = make_batch(cfg, ("demo", "demo"))
    _, metrics, aux = policy_loss(lambda x, *a, **k: x * 0.5, latent, batch, cfg, jax.random.key(0))
    assert int(metrics["demo_sample_count"]) == 2 and int(metrics["world_model_sample_count"]) == 0
    assert np.isnan(float(metrics["world_model_sample_future_image_l1_loss"]))
    assert np.isnan(float(metrics["value_function_sample_value_mse_loss"]))
    a = cfg.layout.index("action")
    diff = np.asarray(aux["x0"])[:, :, a] - np.asarray(aux["x0_pred"])[:, :, a]
    np.testing.assert_allclose(float(metrics["demo_sample_action_l1_loss"]), np.abs(diff).mean(), rtol=1e-6)
    assert metrics["edm_loss_per_frame"].shape == (cfg.state_t,)
    names = {f"{g}_{s}_{k}_loss" for g, slots in objective.METRIC_GROUPS.items() for s in slots for k in ("mse", "l1")}
    assert names <= set(metrics)
    # A layout without a future wrist camera reports NaN for it.
    no_wrist = dataclasses.replace(
        cfg,
        layout=LatentLayout.from_mapping(dict(action=2, future_image=3, value=4), state_t=5, num_conditional_frames=2),
    )
    batch, latent = make_batch(no_wrist, ("demo",))
    _, metrics, _ = policy_loss(lambda x, *a, **k: x, latent, batch, no_wrist, jax.random.key(1))
    assert np.isnan(float(metrics["demo_sample_future_wrist_image_mse_loss"]))
    assert np.isfinite(float(metrics["demo_sample_future_image_mse_loss"]))


def test_bfloat16_path():
    cfg = make_cfg("libero", precision="bfloat16")
    assert PolicyConfig.from_config(get_config("libero")).precision == "bfloat16"
    batch, latent = make_batch(cfg, SAMPLE_TYPES, seed=5)
    seen = {}

    def net(x, timesteps, emb, mask, padding, data_type):
        seen.update(x=x.dtype, t=timesteps.dtype, emb=emb.dtype, mask=mask.dtype, timesteps=timesteps)
        return x.astype(jnp.float32) * 0.3

    loss, _, aux = policy_loss(net, latent, batch, cfg, jax.random.key(2))
    assert np.isfinite(float(loss)) and loss.dtype == jnp.float32
    assert seen["x"] == seen["t"] == seen["emb"] == seen["mask"] == jnp.bfloat16
    # Timesteps are bf16-rounded t = sigma / (1 + sigma) on noised frames.
    t_expected = np.asarray(aux["net_timesteps"]).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(seen["timesteps"]), t_expected)
    # Targets are bf16-quantised batch values; conditioning frames carry no error at all.
    a = cfg.layout.index("action")
    got = np.asarray(aux["x0"])[:, :, a].reshape(3, -1)[:, : cfg.chunk_size * cfg.action_dim]
    want = batch["actions"].astype(ml_dtypes.bfloat16).astype(np.float32).reshape(3, -1)
    np.testing.assert_array_equal(got, want)
    v = cfg.layout.index("value")
    np.testing.assert_array_equal(
        np.asarray(aux["x0"])[:, 0, v, 0, 0],
        batch["value_function_return"].astype(ml_dtypes.bfloat16).astype(np.float32),
    )
    cond = np.asarray(aux["condition_video_input_mask"])[:, 0] == 1  # (B, T, H, W)
    err = (np.asarray(aux["x0"]) - np.asarray(aux["x0_pred"])).transpose(1, 0, 2, 3, 4)  # (C, B, T, H, W)
    assert np.all(err[:, cond] == 0)


def test_random_draw_and_jit():
    cfg = make_cfg("robocasa")
    batch, latent = make_batch(cfg, SAMPLE_TYPES, seed=6)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def run(key):
        loss, _, aux = policy_loss(lambda x, *a, **k: jnp.tanh(x), latent, jbatch, cfg, key)
        return loss, aux["sigma"]

    l1, s1 = run(jax.random.key(0))
    l2, _ = run(jax.random.key(1))
    assert s1.shape == (3, 1) and float(l1) != float(l2)
    eager, _, _ = policy_loss(lambda x, *a, **k: jnp.tanh(x), latent, batch, cfg, jax.random.key(0))
    np.testing.assert_allclose(float(l1), float(eager), rtol=1e-5)


def test_errors():
    cfg = make_cfg("libero")
    batch, latent = make_batch(cfg, ("demo",))
    with pytest.raises(ValueError, match="state_t=9"):
        policy_loss(lambda x, *a, **k: x, latent[:, :, :8], batch, cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        policy_loss(lambda x, *a, **k: x, latent, batch, cfg)
    with pytest.raises(KeyError, match="future_proprio"):
        policy_loss(
            lambda x, *a, **k: x,
            latent,
            {k: v for k, v in batch.items() if k != "future_proprio"},
            cfg,
            jax.random.key(0),
        )
