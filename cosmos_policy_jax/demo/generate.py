"""Generate the ``demo`` dataset: the demo reach task (``sim.py``) written in the LIBERO on-disk format.

Layout under ``root``::

    root/success_only/<suite>/reach_the_<colour>_target_demo.hdf5   data/demo_<n>/{obs/agentview_rgb,
                                                                      obs/eye_in_hand_rgb, actions,
                                                                      robot_states, rewards, dones}
    root/success_only/t5_embeddings.pkl                             stand-in embeddings (text_stub)
    root/all_episodes/episode_data--suite=<suite>--2025_01_01-00_00_00--task=<k>--ep=<n>--success=<b>--<policy>.hdf5
    root/demo_manifest.json                                         generator parameters (written last)

Demonstrations come from the scripted expert (every one succeeds). Rollouts mix a noisy expert, a
hesitant expert (random actions half of the time), an expert heading for a distractor and a random
policy, so both successes and failures exist (for the world-model and value-function samples).
Actions and proprio have ``action_dim``/``proprio_dim`` entries: the first two are the real ones
(velocity, position) and any further entries repeat them cyclically, so every dimension varies
(the LIBERO min/max normalisation divides by max - min) and the LIBERO shapes (7, 9) can be kept.

Everything is a deterministic function of the parameters. ``dataset.ensure_demo_dataset`` (what the
source registry calls) generates into a temporary sibling directory and renames it into place.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import numpy as np
from PIL import Image

from cosmos_policy_jax.demo import sim as demo_sim
from cosmos_policy_jax.demo import text_stub

GENERATOR_VERSION = 1
MANIFEST = "demo_manifest.json"
SUITE = "demo_reach"
ROLLOUT_DATE = "2025_01_01-00_00_00"  # fixed, so file names are deterministic
ROLLOUT_POLICIES = ("noisy_expert", "distractor_expert", "hesitant_expert", "random")
_DEMO_STREAM, _ROLLOUT_STREAM = 1, 2


def pad_dims(x: np.ndarray, dim: int) -> np.ndarray:
    """Repeat the 2 meaningful columns cyclically up to ``dim`` columns (how proprio/actions are stored).

    A policy evaluated in ``demo_sim`` builds its proprio input the same way from ``obs["proprio"]``
    and sends the first two entries of its (un-normalised) action to the environment.
    """
    return x[..., np.arange(dim) % 2]


def _jpeg(frame: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return np.frombuffer(buf.getvalue(), np.uint8)


def _write_images(group: h5py.Group, name: str, frames: np.ndarray, jpeg: bool) -> None:
    if jpeg:
        ds = group.create_dataset(f"{name}_jpeg", (len(frames),), dtype=h5py.vlen_dtype(np.uint8))
        for i, f in enumerate(frames):
            ds[i] = _jpeg(f)
    else:
        group.create_dataset(name, data=frames, compression="gzip", compression_opts=4)


@dataclasses.dataclass
class Episode:
    primary: np.ndarray  # (T, S, S, 3) uint8, observation before each action
    wrist: np.ndarray
    proprio: np.ndarray  # (T, 2) float64
    actions: np.ndarray  # (T, 2) float64 (as executed, after clipping)
    success: bool
    instruction: str


def run_episode(
    env: demo_sim.DemoReachEnv, policy: Callable[[demo_sim.DemoReachEnv], np.ndarray], *, seed: int, color: str
) -> Episode:
    """Roll ``policy`` out from ``reset(seed, color=color)`` until done."""
    obs = env.reset(seed, color=color)
    prim, wrist, prop, acts = [], [], [], []
    done, info = False, {"success": False}
    while not done:
        a = np.clip(np.asarray(policy(env), np.float64)[:2], -env.config.max_speed, env.config.max_speed)
        prim.append(obs["primary_image"])
        wrist.append(obs["wrist_image"])
        prop.append(env.state.agent.copy())
        acts.append(a)
        obs, _, done, info = env.step(a)
    return Episode(
        np.stack(prim), np.stack(wrist), np.stack(prop), np.stack(acts), bool(info["success"]), env.instruction
    )


def _rollout_policy(kind: str, rng: np.random.Generator) -> Callable[[demo_sim.DemoReachEnv], np.ndarray]:
    def noisy(env):
        return env.expert_action()[:2] + rng.normal(0.0, 0.5 * env.config.max_speed, 2)

    def hesitant(env):
        if rng.random() < 0.5:
            return rng.uniform(-1, 1, 2) * env.config.max_speed
        return env.expert_action()[:2]

    def distractor(env):
        s = env.state
        pos = s.object_positions.copy()
        pos[0] = pos[1]  # head for the first distractor instead of the target
        wrong = dataclasses.replace(s, object_positions=pos)
        return demo_sim.expert_action(wrong, env.config)[:2] + rng.normal(0.0, 0.1 * env.config.max_speed, 2)

    def random(env):
        return rng.uniform(-1, 1, 2) * env.config.max_speed

    return {"noisy_expert": noisy, "hesitant_expert": hesitant, "distractor_expert": distractor, "random": random}[kind]


def demo_file_name(color: str) -> str:
    """``reach_the_red_target_demo.hdf5``: the LIBERO reader parses the instruction from it."""
    return demo_sim.instruction_for(color).replace(" ", "_") + "_demo.hdf5"


def generate_demo_dataset(
    root: str,
    *,
    num_episodes: int = 400,
    num_rollouts: int = 200,
    seed: int = 0,
    image_size: int = 32,
    action_dim: int = 2,
    proprio_dim: int = 2,
    text_len: int = 512,
    text_dim: int = 1024,
    jpeg: bool = False,
    sim_config: demo_sim.DemoReachConfig | None = None,
) -> dict[str, Any]:
    """Write the dataset into ``root`` (which must not exist yet, or be empty); returns the manifest.

    Not atomic by itself: use ``dataset.ensure_demo_dataset`` (or generate into a temporary directory).
    """
    if num_episodes < len(demo_sim.COLORS):
        raise ValueError(f"num_episodes must be >= {len(demo_sim.COLORS)} (one per task), got {num_episodes}")
    if num_rollouts < 0:
        raise ValueError(f"num_rollouts must be >= 0, got {num_rollouts}")
    if action_dim < 2 or proprio_dim < 2:
        raise ValueError(f"action_dim and proprio_dim must be >= 2, got {action_dim}, {proprio_dim}")
    cfg = dataclasses.replace(sim_config or demo_sim.DemoReachConfig(), image_size=image_size)
    env = demo_sim.DemoReachEnv(cfg)
    dims = {"action_dim": action_dim, "proprio_dim": proprio_dim, "jpeg": jpeg}
    demo_steps = _write_demos(os.path.join(root, "success_only", SUITE), env, num_episodes, seed, **dims)
    outcomes = _write_rollouts(os.path.join(root, "all_episodes"), env, num_rollouts, seed, **dims)

    instructions = [demo_sim.instruction_for(c) for c in demo_sim.task_names()]
    embeddings = text_stub.stub_embeddings(instructions, text_len=text_len, text_dim=text_dim)
    _save_embeddings(embeddings, os.path.join(root, "success_only", "t5_embeddings.pkl"))
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "params": _params(
            num_episodes, num_rollouts, seed, image_size, action_dim, proprio_dim, text_len, text_dim, jpeg, cfg
        ),
        "demo_steps": demo_steps,
        "rollouts_success": int(sum(outcomes)),
        "rollouts_failure": len(outcomes) - int(sum(outcomes)),
        "instructions": instructions,
    }
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def _write_demos(
    demo_dir: str, env: demo_sim.DemoReachEnv, num_episodes: int, seed: int, *, action_dim: int, proprio_dim: int,
    jpeg: bool,
) -> int:  # fmt: skip
    """Expert demonstrations: episode i is task ``colors[i % K]``, one HDF5 file per task; returns the step count."""
    colors = demo_sim.task_names()
    os.makedirs(demo_dir, exist_ok=True)
    files = {c: h5py.File(os.path.join(demo_dir, demo_file_name(c)), "w") for c in colors}
    demo_steps = 0
    try:
        groups = {c: f.create_group("data") for c, f in files.items()}
        counts = dict.fromkeys(colors, 0)
        for i in range(num_episodes):
            color = colors[i % len(colors)]
            ep_seed = int(np.random.SeedSequence([seed, _DEMO_STREAM, i]).generate_state(1)[0])
            ep = run_episode(env, demo_sim.DemoReachEnv.expert_action, seed=ep_seed, color=color)
            if not ep.success:  # the expert reaches every target within max_steps by construction
                raise RuntimeError(f"demo expert failed on episode {i} (seed {ep_seed}); check DemoReachConfig")
            g = groups[color].create_group(f"demo_{counts[color]}")
            counts[color] += 1
            obs = g.create_group("obs")
            _write_images(obs, "agentview_rgb", ep.primary, jpeg)
            _write_images(obs, "eye_in_hand_rgb", ep.wrist, jpeg)
            g.create_dataset("actions", data=pad_dims(ep.actions, action_dim).astype(np.float32))
            g.create_dataset("robot_states", data=pad_dims(ep.proprio, proprio_dim).astype(np.float32))
            rewards = np.zeros(len(ep.actions), np.float32)
            rewards[-1] = 1.0
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=(rewards > 0).astype(np.uint8))
            demo_steps += len(ep.actions)
    finally:
        for f in files.values():
            f.close()
    return demo_steps


def _write_rollouts(
    rollout_dir: str, env: demo_sim.DemoReachEnv, num_rollouts: int, seed: int, *, action_dim: int, proprio_dim: int,
    jpeg: bool,
) -> list[bool]:  # fmt: skip
    """Rollouts of the mixed policies, one episode per file as the reference evaluation script writes them."""
    colors = demo_sim.task_names()
    os.makedirs(rollout_dir, exist_ok=True)
    outcomes = []
    for r in range(num_rollouts):
        kind = ROLLOUT_POLICIES[r % len(ROLLOUT_POLICIES)]
        ss = np.random.SeedSequence([seed, _ROLLOUT_STREAM, r])
        env_seed, policy_seed = (int(x) for x in ss.generate_state(2))
        task = (r // len(ROLLOUT_POLICIES)) % len(colors)
        ep = run_episode(
            env, _rollout_policy(kind, np.random.default_rng(policy_seed)), seed=env_seed, color=colors[task]
        )
        name = f"episode_data--suite={SUITE}--{ROLLOUT_DATE}--task={task}--ep={r}--success={ep.success}--{kind}.hdf5"
        with h5py.File(os.path.join(rollout_dir, name), "w") as f:
            _write_images(f, "primary_images", ep.primary, jpeg)
            _write_images(f, "wrist_images", ep.wrist, jpeg)
            f.create_dataset("proprio", data=pad_dims(ep.proprio, proprio_dim))
            f.create_dataset("actions", data=pad_dims(ep.actions, action_dim))
            f.attrs["success"] = ep.success
            f.attrs["task_description"] = ep.instruction
        outcomes.append(ep.success)
    return outcomes


def _save_embeddings(embeddings: Mapping[str, np.ndarray], path: str) -> None:
    # The reference pickle holds (1, L, D) tensors; the LIBERO reader squeezes the leading axis.
    from cosmos_policy_jax.data import t5

    t5.save_t5_embeddings({k: v[None] for k, v in embeddings.items()}, path)


def _params(num_episodes, num_rollouts, seed, image_size, action_dim, proprio_dim, text_len, text_dim, jpeg, cfg):
    return {
        "num_episodes": int(num_episodes),
        "num_rollouts": int(num_rollouts),
        "seed": int(seed),
        "image_size": int(image_size),
        "action_dim": int(action_dim),
        "proprio_dim": int(proprio_dim),
        "text_len": int(text_len),
        "text_dim": int(text_dim),
        "jpeg": bool(jpeg),
        "sim": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("action_dim", "proprio_dim")},
    }
