"""Generate the ``demo`` dataset: the demo reach task (``demo_sim``) written in the LIBERO on-disk format.

Layout under ``root`` (REFERENCE.md 6.1, so the ``demo`` config exercises the real LIBERO reader)::

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

Everything is a deterministic function of the parameters. The dataset is generated in a temporary
sibling directory and renamed into place, so concurrent or interrupted first uses never expose a
partial dataset; ``ensure_demo_dataset`` is what the pipeline calls.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import numpy as np
from PIL import Image

from cosmos_policy_jax.data import demo_sim, text_stub
from cosmos_policy_jax.data.errors import DataError

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

    Not atomic by itself: use ``ensure_demo_dataset`` (or generate into a temporary directory).
    """
    if num_episodes < len(demo_sim.COLORS):
        raise ValueError(f"num_episodes must be >= {len(demo_sim.COLORS)} (one per task), got {num_episodes}")
    if num_rollouts < 0:
        raise ValueError(f"num_rollouts must be >= 0, got {num_rollouts}")
    if action_dim < 2 or proprio_dim < 2:
        raise ValueError(f"action_dim and proprio_dim must be >= 2, got {action_dim}, {proprio_dim}")
    cfg = dataclasses.replace(sim_config or demo_sim.DemoReachConfig(), image_size=image_size)
    env = demo_sim.DemoReachEnv(cfg)
    colors = demo_sim.task_names()
    demo_dir = os.path.join(root, "success_only", SUITE)
    rollout_dir = os.path.join(root, "all_episodes")
    os.makedirs(demo_dir, exist_ok=True)
    os.makedirs(rollout_dir, exist_ok=True)

    # Demonstrations: episode i is task colors[i % K], one HDF5 file per task.
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

    # Rollouts: one episode per file, as the reference evaluation script writes them.
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

    embeddings = text_stub.stub_embeddings(
        [demo_sim.instruction_for(c) for c in colors], text_len=text_len, text_dim=text_dim
    )
    _save_embeddings(embeddings, os.path.join(root, "success_only", "t5_embeddings.pkl"))

    manifest = {
        "generator_version": GENERATOR_VERSION,
        "params": _params(
            num_episodes, num_rollouts, seed, image_size, action_dim, proprio_dim, text_len, text_dim, jpeg, cfg
        ),
        "demo_steps": demo_steps,
        "rollouts_success": int(sum(outcomes)),
        "rollouts_failure": len(outcomes) - int(sum(outcomes)),
        "instructions": [demo_sim.instruction_for(c) for c in colors],
    }
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


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


def _expand(path: str) -> str:
    from cosmos_policy_jax.config_lib import expand_path

    expanded, missing = expand_path(path)
    if missing:
        raise DataError(f"environment variable(s) {', '.join(missing)} not set in {path!r}")
    return os.path.abspath(expanded)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def demo_root(dataset_cfg: Any) -> str:
    """The dataset root implied by ``dataset.data_dir`` (``<root>/success_only``); checks the other paths."""
    raw = _get(dataset_cfg, "data_dir", "")
    if not raw:
        raise DataError("dataset.data_dir: required for the demo dataset (<root>/success_only)")
    data_dir = _expand(raw)
    if os.path.basename(data_dir.rstrip("/")) != "success_only":
        raise DataError(f"dataset.data_dir: a demo dataset lives in <root>/success_only, got {raw!r}")
    root = os.path.dirname(data_dir.rstrip("/"))
    expected = {
        "rollout_data_dir": os.path.join(root, "all_episodes"),
        "t5_text_embeddings_path": os.path.join(root, "success_only", "t5_embeddings.pkl"),
    }
    for key, want in expected.items():
        value = _get(dataset_cfg, key, "")
        if value and _expand(value) != want:
            raise DataError(f"dataset.{key}: the demo generator writes {want}, but the config says {value!r}")
    return root


def ensure_demo_dataset(dataset_cfg: Any, *, jpeg: bool = False) -> str:
    """Generate the demo dataset for ``dataset_cfg`` unless it already exists; returns its root.

    Safe under concurrency and interruption: generation happens in a temporary sibling directory
    that is renamed into place (atomic on POSIX); a process that loses the race discards its copy.
    An existing dataset generated with other parameters is an error (never silently reused).
    """
    root = demo_root(dataset_cfg)
    keys = {
        "num_episodes": "demo_num_episodes",
        "num_rollouts": "demo_num_rollouts",
        "seed": "demo_seed",
        "image_size": "final_image_size",
        "action_dim": "action_dim",
        "proprio_dim": "proprio_dim",
        "text_len": "text_len",
        "text_dim": "text_dim",
    }
    params: dict[str, Any] = {}
    for name, key in keys.items():
        value = _get(dataset_cfg, key)
        if value is None:
            raise DataError(f"dataset.{key}: required to generate the demo dataset")
        params[name] = int(value)
    params["jpeg"] = bool(jpeg)
    layout = str(_get(dataset_cfg, "demo_object_layout", None) or "random")
    sim_config = demo_sim.DemoReachConfig(image_size=params["image_size"], object_layout=layout)
    if not os.path.exists(root):
        parent = os.path.dirname(root)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:  # a path component that is a file, no permission
            raise DataError(
                f"dataset.data_dir: cannot create the demo dataset under {parent} ({e.strerror or e})"
            ) from e
        _remove_abandoned_temporaries(parent, os.path.basename(root))
        # The owner's host and pid in the name: a later start can tell an abandoned copy from a live one.
        tmp = tempfile.mkdtemp(
            prefix=f".{os.path.basename(root)}.tmp-{socket.gethostname()}-{os.getpid()}-", dir=parent
        )
        try:
            generate_demo_dataset(tmp, **params, sim_config=sim_config)
            _prepare_statistics(tmp, dataset_cfg)
            try:
                os.rename(tmp, root)
            except OSError:
                if not os.path.isdir(root):
                    raise
                # Another process finished first: use its copy (checked below).
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    _check_manifest(root, {**params, "object_layout": layout})
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_abandoned_temporaries(parent: str, name: str) -> None:
    """Delete the hidden temporary copies of ``name`` that a killed generation left in ``parent``.

    Only copies made on this host by a process that no longer exists are removed; a generation still
    running (here or on another host sharing the file system) keeps its directory.
    """
    pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
    host = socket.gethostname()
    for entry in os.listdir(parent):
        found = pattern.match(entry)
        if found and found["host"] == host and not _pid_alive(int(found["pid"])):
            logging.warning("removing %s, left by an interrupted demo-data generation", os.path.join(parent, entry))
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _prepare_statistics(root: str, dataset_cfg: Any) -> None:
    """Open the fresh dataset with the LIBERO reader once, inside the temporary directory.

    This validates it and writes the normalisation statistics files before the dataset becomes
    visible, so concurrent readers never race to create them.
    """
    from cosmos_policy_jax.data.sources import LiberoSource

    source = LiberoSource.from_config(demo_dataset_config(dataset_cfg, root))
    source.close()


def _as_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):  # ml_collections ConfigDict / FrozenConfigDict
        return dict(cfg.to_dict())
    return dict(cfg)


def demo_dataset_config(dataset_cfg: Any, root: str) -> dict[str, Any]:
    """A copy of ``dataset_cfg`` (plain dict) whose paths point at the demo dataset under ``root``."""
    out = _as_dict(dataset_cfg)
    out.update(
        data_dir=os.path.join(root, "success_only"),
        rollout_data_dir=os.path.join(root, "all_episodes"),
        t5_text_embeddings_path=os.path.join(root, "success_only", "t5_embeddings.pkl"),
    )
    return out


def _check_manifest(root: str, params: Mapping[str, Any]) -> None:
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise DataError(f"{root} exists but is not a finished demo dataset (no {MANIFEST}); delete it to regenerate")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable demo manifest ({e}); delete {root} to regenerate") from e
    have = dict(manifest.get("params", {}))
    have["object_layout"] = have.get("sim", {}).get("object_layout", "random")
    for key, want in params.items():
        if have.get(key) != want:
            raise DataError(
                f"{path}: demo dataset was generated with {key}={have.get(key)!r} but the config asks for {want!r}; "
                f"delete {root} or point dataset.data_dir elsewhere"
            )


# ---------------------------------------------------------------------------------------------
# The same dataset in LeRobot format (written by the real `lerobot` package)
# ---------------------------------------------------------------------------------------------

LEROBOT_DIR = "lerobot"  # <root>/lerobot/{demos,rollouts}: two LeRobot datasets
LEROBOT_FPS = 16
LEROBOT_CAMERAS = {"primary": "observation.images.agentview", "wrist": "observation.images.wrist"}
LEROBOT_KEYS = {"state_key": "observation.state", "action_key": "action", "success_key": "next.success"}
LEROBOT_PYTHON_ENV = "COSMOS_POLICY_LEROBOT_PYTHON"


def _export_episodes(out_dir: str, episodes: list[tuple[dict[str, np.ndarray], str, bool]]) -> None:
    """Episodes as ``lerobot_write`` input: one npz each plus ``spec.json``."""
    from cosmos_policy_jax.data import lerobot_write

    os.makedirs(out_dir)
    spec = {"fps": LEROBOT_FPS, "robot_type": "demo_reach_point", "cameras": list(LEROBOT_CAMERAS.values())}
    spec.update(LEROBOT_KEYS, repo_id="local/demo_reach")
    with open(os.path.join(out_dir, lerobot_write.SPEC), "w") as f:
        json.dump(spec, f)
    for i, (arrays, task, success) in enumerate(episodes):
        flags = np.zeros(len(arrays["action"]), bool)
        flags[-1] = success
        np.savez(os.path.join(out_dir, f"episode_{i:06d}.npz"), **arrays, success=flags, task=np.array(task))


def _hdf5_episodes(root: str) -> tuple[list, list]:
    """Demos and rollouts of the HDF5 demo dataset in the order the LIBERO reader loads them."""
    from cosmos_policy_jax.data.sources import find_hdf5_files, libero_instruction

    cams = LEROBOT_CAMERAS
    demos, rollouts = [], []
    for path in find_hdf5_files(os.path.join(root, "success_only")):
        with h5py.File(path, "r") as f:
            for name in sorted(f["data"], key=lambda k: int(k.split("_")[1])):
                g = f["data"][name]
                arrays = {
                    f"frames/{cams['primary']}": g["obs/agentview_rgb"][()],
                    f"frames/{cams['wrist']}": g["obs/eye_in_hand_rgb"][()],
                    "state": g["robot_states"][()].astype(np.float32),
                    "action": g["actions"][()].astype(np.float32),
                }
                demos.append((arrays, libero_instruction(path), True))
    for path in find_hdf5_files(os.path.join(root, "all_episodes")):
        with h5py.File(path, "r") as f:
            arrays = {
                f"frames/{cams['primary']}": f["primary_images"][()],
                f"frames/{cams['wrist']}": f["wrist_images"][()],
                "state": f["proprio"][()].astype(np.float32),
                "action": f["actions"][()].astype(np.float32),
            }
            rollouts.append((arrays, str(f.attrs["task_description"]), bool(f.attrs["success"])))
    return demos, rollouts


def _run_lerobot_writer(episodes_dir: str, out: str) -> None:
    """``lerobot_write`` in this process when ``lerobot`` imports, else under ``$COSMOS_POLICY_LEROBOT_PYTHON``."""
    import importlib.util
    import subprocess

    python = os.environ.get(LEROBOT_PYTHON_ENV, "")
    if not python and importlib.util.find_spec("lerobot") is not None:
        from cosmos_policy_jax.data import lerobot_write

        lerobot_write.write_episodes_dir(episodes_dir, out)
        return
    if not python:
        raise DataError(
            "the demo's LeRobot copy is written by the real lerobot package, which is not installed here: "
            f"install it (it needs PyTorch) or set {LEROBOT_PYTHON_ENV} to a Python that has it"
        )
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": package_parent}
    cmd = [python, "-m", "cosmos_policy_jax.data.lerobot_write", episodes_dir, out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"{LEROBOT_PYTHON_ENV}={python}: the lerobot writer failed ({tail[0]})")


def ensure_lerobot_copy(root: str) -> tuple[str, str]:
    """``(demos, rollouts)``: the demo dataset at ``root`` as two LeRobot datasets (made on first use, atomically)."""
    out = os.path.join(root, LEROBOT_DIR)
    if not os.path.isdir(out):
        tmp = tempfile.mkdtemp(prefix=f".{LEROBOT_DIR}.tmp-", dir=root)
        try:
            demos, rollouts = _hdf5_episodes(root)
            for name, eps in (("demos", demos), ("rollouts", rollouts)):
                if eps:
                    _export_episodes(os.path.join(tmp, f"{name}_npz"), eps)
                    _run_lerobot_writer(os.path.join(tmp, f"{name}_npz"), os.path.join(tmp, name))
                    shutil.rmtree(os.path.join(tmp, f"{name}_npz"))
            try:
                os.rename(tmp, out)
            except OSError:
                if not os.path.isdir(out):
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    rollouts_dir = os.path.join(out, "rollouts")
    return os.path.join(out, "demos"), rollouts_dir if os.path.isdir(rollouts_dir) else ""


def demo_lerobot_config(dataset_cfg: Any, root: str) -> dict[str, Any]:
    """A copy of ``dataset_cfg`` reading the demo's LeRobot copy (same embeddings file) with ``LeRobotSource``."""
    demos, rollouts = ensure_lerobot_copy(root)
    out = demo_dataset_config(dataset_cfg, root)
    out.update(data_dir=demos, rollout_data_dir=rollouts, kind="lerobot")
    out["lerobot"] = {"cameras": dict(LEROBOT_CAMERAS), **LEROBOT_KEYS}
    return out
