"""The demo dataset in LeRobot format: the same episodes, written by the real ``lerobot`` package.

``<root>/lerobot/{demos,rollouts}`` are two LeRobot datasets made on first use (atomically) from the
HDF5 dataset; the ``lerobot`` modifier of the demo config reads them with ``LeRobotSource``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import h5py
import numpy as np

from cosmos_policy_jax.common.files import atomic_dir
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.hdf5 import find_hdf5_files
from cosmos_policy_jax.data.libero import libero_instruction
from cosmos_policy_jax.demo.dataset import demo_dataset_config

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
        with atomic_dir(out) as tmp:
            demos, rollouts = _hdf5_episodes(root)
            for name, eps in (("demos", demos), ("rollouts", rollouts)):
                if eps:
                    _export_episodes(os.path.join(tmp, f"{name}_npz"), eps)
                    _run_lerobot_writer(os.path.join(tmp, f"{name}_npz"), os.path.join(tmp, name))
                    shutil.rmtree(os.path.join(tmp, f"{name}_npz"))
    rollouts_dir = os.path.join(out, "rollouts")
    return os.path.join(out, "demos"), rollouts_dir if os.path.isdir(rollouts_dir) else ""


def demo_lerobot_config(dataset_cfg: Any, root: str) -> dict[str, Any]:
    """A copy of ``dataset_cfg`` reading the demo's LeRobot copy (same embeddings file) with ``LeRobotSource``."""
    demos, rollouts = ensure_lerobot_copy(root)
    out = demo_dataset_config(dataset_cfg, root)
    out.update(data_dir=demos, rollout_data_dir=rollouts, kind="lerobot")
    out["lerobot"] = {"cameras": dict(LEROBOT_CAMERAS), **LEROBOT_KEYS}
    return out
