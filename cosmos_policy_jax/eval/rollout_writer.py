"""Evaluation episodes as rollout files in the reference's ``all_episodes`` HDF5 layout.

One file per episode, ``episode_data--suite=<suite>--<date>--task=<k>--ep=<n>--success=<bool>--<tag>.hdf5``,
holding ``primary_images`` / ``wrist_images`` (T, H, W, 3) uint8 (the observation before each action,
upright as in the training data), ``proprio`` (T, P) and ``actions`` (T, A) in raw units, and the
attributes ``success`` and ``task_description``: what the dataset readers (``data/libero.py``) parse as
rollouts, so a planning model can be fine-tuned on a policy's own episodes.
"""

from __future__ import annotations

import os
import time

import h5py
import numpy as np

from cosmos_policy_jax.common.files import atomic_path
from cosmos_policy_jax.eval.rollout import EpisodeResult

# Latent-layout camera slot -> dataset name in a rollout file (the LIBERO / demo rollout readers).
CAMERA_KEYS = {"current_image": "primary_images", "current_wrist_image": "wrist_images"}


def rollout_file_name(res: EpisodeResult, suite: str, tag: str, date: str) -> str:
    return (
        f"episode_data--suite={suite}--{date}--task={res.spec.task_id}--ep={res.spec.index}"
        f"--success={bool(res.success)}--{tag}.hdf5"
    )


def write_rollout(directory: str, res: EpisodeResult, *, suite: str, tag: str = "eval", date: str | None = None) -> str:
    """Write one episode (``res.steps`` must have been kept); returns the file path."""
    if not res.steps or not res.steps["actions"]:
        raise ValueError(f"episode {res.spec.index} has no kept steps to write (run_episodes keep_steps)")
    unknown = sorted(set(res.steps["images"]) - set(CAMERA_KEYS))
    if unknown:
        raise ValueError(f"no rollout-file dataset name for camera slot(s) {unknown}")
    os.makedirs(directory, exist_ok=True)
    date = date or time.strftime("%Y_%m_%d-%H_%M_%S")
    path = os.path.join(directory, rollout_file_name(res, suite, tag, date))
    # A crash never leaves a half-written episode under a readable name.
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for slot, frames in res.steps["images"].items():
            f.create_dataset(CAMERA_KEYS[slot], data=np.stack(frames).astype(np.uint8), compression="gzip")
        f.create_dataset("proprio", data=np.stack(res.steps["proprio"]).astype(np.float32))
        f.create_dataset("actions", data=np.stack(res.steps["actions"]).astype(np.float32))
        f.attrs["success"] = bool(res.success)
        f.attrs["task_description"] = res.instruction
    return path
