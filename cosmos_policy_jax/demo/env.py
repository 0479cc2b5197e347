"""The demo reach task (``demo/sim.py``) behind the evaluation's ``VecEnv`` protocol.

Observations are mapped the way ``demo/generate.py`` wrote the training data: the top view is the
primary (``current_image``) camera, the agent-centred view the wrist (``current_wrist_image``)
camera, and the 2-D agent position is repeated cyclically up to the dataset's proprio size
(``[x, y, x, y, ...]``). The simulator reads the first two entries of a (7-D) action as the
velocity, which is where the generator put them. Episodes end on success or after the world's
``max_steps``; evaluation worlds come from a seed stream disjoint from the generator's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_policy_jax.demo import sim as demo_sim
from cosmos_policy_jax.eval.rollout import EpisodeSpec, Observation

# generate.py draws demo worlds from stream 1 and rollout worlds from stream 2; evaluation uses 3.
EVAL_SEED_STREAM = 3


def demo_episodes(num_episodes: int, seed: int) -> list[EpisodeSpec]:
    """``num_episodes`` evaluation worlds, cycling through the target colours (tasks) in order."""
    colors = demo_sim.task_names()
    out = []
    for i in range(num_episodes):
        env_seed = int(np.random.SeedSequence([int(seed), EVAL_SEED_STREAM, i]).generate_state(1)[0])
        k = i % len(colors)
        out.append(EpisodeSpec(index=i, task=colors[k], task_id=k, trial=i // len(colors), seed=env_seed))
    return out


def sim_config_from_manifest(root: str, image_size: int) -> demo_sim.DemoReachConfig:
    """The world the dataset was generated in (``demo_manifest.json``), else the defaults at ``image_size``."""
    path = os.path.join(root, "demo_manifest.json")
    base = demo_sim.DemoReachConfig(image_size=image_size)
    if not os.path.exists(path):
        return base
    with open(path) as f:
        sim = json.load(f).get("params", {}).get("sim", {})
    known = {f.name for f in dataclasses.fields(demo_sim.DemoReachConfig)}
    return dataclasses.replace(base, **{k: v for k, v in sim.items() if k in known})


def cyclic_pad(x: np.ndarray, dim: int) -> np.ndarray:
    """Repeat the columns of ``x`` cyclically up to ``dim`` columns (generate.py's action/proprio layout)."""
    return x[..., np.arange(dim) % x.shape[-1]]


class DemoVecEnv:
    """``num_envs`` demo worlds stepping together (wraps ``demo_sim.DemoReachVecEnv``)."""

    def __init__(self, num_envs: int, sim_config: demo_sim.DemoReachConfig, proprio_dim: int):
        self.num_envs = int(num_envs)
        self.vec = demo_sim.DemoReachVecEnv(self.num_envs, sim_config)
        self.proprio_dim = int(proprio_dim)
        self._texts = [""] * self.num_envs

    def _observation(self, raw: dict[str, Any]) -> Observation:
        return Observation(
            images={"current_image": raw["primary_image"], "current_wrist_image": raw["wrist_image"]},
            proprio=cyclic_pad(np.asarray(raw["proprio"], np.float64), self.proprio_dim),
        )

    def reset(self, episodes: Sequence[EpisodeSpec | None]) -> Observation:
        if len(episodes) != self.num_envs:
            raise ValueError(f"need {self.num_envs} episode slots, got {len(episodes)}")
        # Idle slots still get a world (seed 0) so that their observations are well formed.
        seeds = [e.seed if e is not None else 0 for e in episodes]
        colors = [e.task if e is not None else None for e in episodes]
        raw = self.vec.reset(seeds, colors)
        for i, e in enumerate(episodes):
            if e is None:
                self.vec.done[i] = True
        self._texts = [raw["instruction"][i] if e is not None else "" for i, e in enumerate(episodes)]
        return self._observation(raw)

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, np.ndarray]:
        raw, _, done, _ = self.vec.step(np.asarray(actions, np.float64))
        return self._observation(raw), done, self.vec.success.copy()

    def instructions(self) -> list[str]:
        return list(self._texts)

    def close(self) -> None:
        pass
