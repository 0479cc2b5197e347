"""ALOHA reader: two wrist cameras and a top camera, 14-dim actions and proprio.

Demos live under ``train/`` or ``val/`` folders; demos can be reused as successful rollouts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import h5py
import numpy as np

from cosmos_policy_jax.data.episodes import EpisodeOptions, EpisodeSource
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.hdf5 import attr_str, camera_dataset, find_hdf5_files, open_h5, read_numbers
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.data.schema import Episode

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlohaOptions(EpisodeOptions):
    """ALOHA's extra fields: the demo ``split`` folder and whether rollouts are read from their JPEG datasets."""

    # "train" / "val"; None (or "" in a config) reads every demo file.
    split: str | None = "train"
    # As the reference: JPEG rollout datasets are read only when asked for (else the raw frames).
    use_jpeg_for_rollouts: bool = False

    def __post_init__(self) -> None:
        # The reference's ALOHA dataset always uses all three cameras.
        object.__setattr__(self, "use_wrist_images", True)
        object.__setattr__(self, "use_third_person_images", True)
        object.__setattr__(self, "split", self.split or None)
        super().__post_init__()


# ALOHA demo folders name their task; the reference maps them to instructions by substring.
_ALOHA_TASKS = (
    ("fold_shirt", "fold shirt"),
    ("candies_in_bowl", "put candies in bowl"),
    ("candy_in_bag", "put candy in bag"),
    ("flatten_shirt", "flatten shirt"),
    ("brown_chicken_wing_on_plate", "put brown chicken wing on plate"),
    ("purple_eggplant_on_plate", "put purple eggplant on plate"),
)


def aloha_instruction(path: str, attrs: Mapping[str, Any] | None = None) -> str:
    """Instruction of an ALOHA episode: its ``task_description`` attribute, else its task folder's name."""
    if attrs is not None and attr_str(attrs.get("task_description", "")):
        return attr_str(attrs["task_description"])
    folder = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    for token, instruction in _ALOHA_TASKS:
        if token in folder:
            return instruction
    raise DataError(f"{path}: no 'task_description' attribute and task folder {folder!r} is not a known ALOHA task")


class AlohaSource(EpisodeSource):
    """ALOHA: left/right wrist + top camera, 14-dim actions and proprio.

    Demo files ``.../<task>/<split>/episode_*.hdf5`` hold ``observations/images/cam_{high,left_wrist,
    right_wrist}``, ``observations/qpos`` and ``action``; only files under a ``split`` folder
    (``train`` by default, ``val`` for validation, None for all) are read. Rollout files hold the
    same raw layout, or top-level JPEG datasets (``primary_images_jpeg``, ``wrist_left_images_jpeg``
    (or ``wrist_images_jpeg``), ``wrist_right_images_jpeg``), attributes ``success`` and optionally
    ``success_score`` (terminal reward) and ``task_description``. Rollouts whose frame count differs
    from their action count are skipped with a warning, as in the reference. MP4-backed episodes are
    not supported.
    """

    KIND = "aloha"
    CAMERAS = ("wrist", "wrist2", "primary")
    SAMPLE_SLOTS = (*LiberoSource.SAMPLE_SLOTS, "current_wrist_image2", "future_wrist_image2")
    CAST_DEMOS_TO_FLOAT32 = False
    RAW_CAMERAS: ClassVar[dict[str, str]] = {
        "primary": "observations/images/cam_high",
        "wrist": "observations/images/cam_left_wrist",
        "wrist2": "observations/images/cam_right_wrist",
    }
    JPEG_CAMERAS: ClassVar[dict[str, tuple[str, ...]]] = {
        "primary": ("primary_images_jpeg",),
        "wrist": ("wrist_left_images_jpeg", "wrist_images_jpeg"),
        "wrist2": ("wrist_right_images_jpeg",),
    }

    OPTIONS = AlohaOptions

    def _demo_files(self) -> list[str]:
        return find_hdf5_files(self.options.data_dir, what="dataset.data_dir", split=self.options.split)

    def _raw_episode(self, f: h5py.File, path: str, label: str) -> tuple[dict, int]:
        if "observations/video_paths" in f and "observations/images" not in f:
            raise DataError(f"{path}: MP4-backed episodes are not supported; store the frames in the HDF5 file")
        cameras = {}
        for role in self.cameras:
            key = self.RAW_CAMERAS[role]
            if key not in f:
                raise DataError(f"{path}: missing required dataset {key!r}")
            cameras[role] = camera_dataset(f, path, label, role, key, key + "_jpeg", False)
        return cameras, int(f[self.RAW_CAMERAS["primary"]].shape[0])

    def _read_demo_file(self, path: str) -> list[Episode]:
        with open_h5(path) as f:
            cameras, num_steps = self._raw_episode(f, path, "demo")
            actions = read_numbers(f, "action", path)
            proprio = read_numbers(f, "observations/qpos", path)
            command = aloha_instruction(path)  # the reference: always the task folder's name
            return [self._finish_episode(path, "demo", f, cameras, num_steps, actions, proprio, command)]

    def _read_rollout_file(self, path: str) -> Episode | None:
        with open_h5(path) as f:
            jpeg = {role: next((k for k in keys if k in f), None) for role, keys in self.JPEG_CAMERAS.items()}
            if (
                jpeg["primary"] is not None
                and not self.options.use_jpeg_for_rollouts
                and self.RAW_CAMERAS["primary"] not in f
            ):
                raise DataError(f"{path}: JPEG-only rollout; set dataset.use_jpeg_for_rollouts=True to read it")
            if jpeg["primary"] is not None and self.options.use_jpeg_for_rollouts:
                missing = [role for role, key in jpeg.items() if key is None]
                if missing:
                    names = " / ".join(self.JPEG_CAMERAS[missing[0]])
                    raise DataError(f"{path}: JPEG rollout is missing the {missing[0]} camera ({names})")
                cameras = {
                    role: camera_dataset(f, path, "rollout", role, "", jpeg[role], True) for role in self.cameras
                }
                num_steps = int(f[jpeg["primary"]].shape[0])
            else:
                cameras, num_steps = self._raw_episode(f, path, "rollout")
            actions = read_numbers(f, "action", path).astype(np.float32)
            proprio = read_numbers(f, "observations/qpos", path).astype(np.float32)
            if actions.shape[0] != num_steps:
                _log.warning("%s: %d frames but %d actions; skipping this rollout", path, num_steps, actions.shape[0])
                return None
            success = bool(f.attrs.get("success", False))
            score = f.attrs.get("success_score")
            try:
                terminal = float(score) if score is not None else (1.0 if success else 0.0)
            except (TypeError, ValueError):
                terminal = 1.0 if success else 0.0
            command = aloha_instruction(path, f.attrs)
            return self._finish_episode(
                path, "rollout", f, cameras, num_steps, actions, proprio, command,
                success=success, terminal_reward=terminal,
            )  # fmt: skip
