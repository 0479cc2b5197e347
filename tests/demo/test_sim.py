"""The demo reach task (``demo/sim.py``): the expert succeeds, random actions rarely do, batched stepping."""

import numpy as np
import pytest

from cosmos_policy_jax.demo import sim as demo_sim


def _rollout(env, policy, seed):
    env.reset(seed)
    done, info = False, {}
    while not done:
        _, _, done, info = env.step(policy(env))
    return info


def test_expert_succeeds_and_random_rarely_does():
    env = demo_sim.DemoReachEnv()
    rng = np.random.default_rng(0)
    seeds = range(100, 140)
    expert = [_rollout(env, demo_sim.DemoReachEnv.expert_action, s) for s in seeds]
    speed = env.config.max_speed
    random = [_rollout(env, lambda e: rng.uniform(-speed, speed, 2), s) for s in seeds]
    still = [_rollout(env, lambda e: np.zeros(7), s) for s in seeds]  # a "mean action" policy
    assert sum(i["success"] for i in expert) >= 38
    assert sum(i["success"] for i in random) <= 4
    assert sum(i["success"] for i in still) == 0
    assert all(i["steps"] == env.config.max_steps for i in still)


def test_reset_is_deterministic_and_observation_is_informative():
    cfg = demo_sim.DemoReachConfig(image_size=32)
    env = demo_sim.DemoReachEnv(cfg)
    a, b = env.reset(7), demo_sim.DemoReachEnv(cfg).reset(7)
    np.testing.assert_array_equal(a["primary_image"], b["primary_image"])
    assert a["instruction"] == b["instruction"] == f"reach the {env.state.target_color} target"
    assert a["primary_image"].shape == a["wrist_image"].shape == (32, 32, 3) and a["primary_image"].dtype == np.uint8
    np.testing.assert_allclose(a["proprio"], env.state.agent, atol=1e-6)
    # The target's colour is at its position in the top view; the wrist view is centred on the (white) agent.
    x, y = env.state.target_position
    half = cfg.primary_half_width
    col, row = int((x / half + 1) / 2 * 32), int((1 - y / half) / 2 * 32)
    np.testing.assert_array_equal(a["primary_image"][row, col], demo_sim.COLORS[env.state.target_color])
    np.testing.assert_array_equal(a["wrist_image"][16, 16], demo_sim.AGENT_COLOR)
    other = env.reset(8)
    assert not np.array_equal(other["primary_image"], a["primary_image"])


def test_vec_env_matches_single_envs():
    vec = demo_sim.DemoReachVecEnv(3)
    singles = [demo_sim.DemoReachEnv() for _ in range(3)]
    obs = vec.reset([1, 2, 3], colors=["red", None, "blue"])
    for env, s, c in zip(singles, [1, 2, 3], ["red", None, "blue"]):
        env.reset(s, color=c)
    assert obs["instruction"][0] == "reach the red target" and obs["primary_image"].shape == (3, 32, 32, 3)
    for _ in range(60):
        was_done = vec.done.copy()
        actions = np.stack([e.expert_action() if not d else np.zeros(2) for e, d in zip(singles, was_done)])
        obs, _, done, _ = vec.step(actions)
        for i, env in enumerate(singles):
            if not was_done[i]:
                _, _, single_done, _ = env.step(actions[i])
                assert single_done == done[i]
            np.testing.assert_array_equal(obs["proprio"][i], env.state.agent.astype(np.float32))
        if done.all():
            break
    assert vec.success.all()
    with pytest.raises(RuntimeError, match="episode is over"):
        singles[0].step(np.zeros(2))
