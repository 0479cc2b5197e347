"""The demo world behind the evaluation's ``VecEnv`` protocol (``demo/env.py``): the scripted expert
reaches every target through the real rollout loop; evaluation episode seeds."""

import numpy as np

from cosmos_policy_jax.demo import env as demo_env
from cosmos_policy_jax.demo import sim as demo_sim
from cosmos_policy_jax.eval import policies, preprocess, rollout

NO_PREP = preprocess.ImagePreprocessing(image_size=8, jpeg_quality=None, center_crop=False)


class ExpertPolicy:
    """Reads the demo worlds directly: the scripted expert's velocity, padded like the generator's actions."""

    def __init__(self, env: demo_env.DemoVecEnv, dim: int):
        self.env, self.dim = env, dim

    def __call__(self, batch, *, seed):
        acts = np.stack([e.expert_action()[:2] if e._state is not None else np.zeros(2) for e in self.env.vec.envs])
        return policies.PolicyOutput(actions=demo_env.cyclic_pad(acts, self.dim)[:, None])


def test_expert_reaches_every_demo_target_closed_loop():
    env = demo_env.DemoVecEnv(3, demo_sim.DemoReachConfig(image_size=16), proprio_dim=9)
    episodes = demo_env.demo_episodes(5, seed=0)
    results, _ = rollout.run_episodes(
        env, ExpertPolicy(env, 7), episodes, num_open_loop_steps=1, embed=lambda t: np.zeros((1, 1)), image_spec=NO_PREP
    )
    assert all(r.success for r in results)
    assert all(1 <= r.length < env.vec.envs[0].config.max_steps for r in results)
    assert [r.instruction for r in results[:4]] == [demo_sim.instruction_for(c) for c in demo_sim.task_names()]


def test_demo_episode_seeds_are_deterministic_and_not_the_generators():
    a, b = demo_env.demo_episodes(6, seed=1), demo_env.demo_episodes(6, seed=1)
    assert a == b
    assert len({e.seed for e in a}) == 6
    assert {e.seed for e in demo_env.demo_episodes(6, seed=2)}.isdisjoint({e.seed for e in a})
