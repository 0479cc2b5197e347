"""LIBERO and RoboCasa readers: demo files holding ``data/demo_<n>`` groups.

* :class:`LiberoSource`: ``LIBERO-Cosmos-Policy`` demos (``data/demo_<n>`` groups, raw or JPEG images,
  instruction from the file name) and evaluation rollouts (one episode per file).
* :class:`RobocasaSource`: adds a second third-person camera (``current_image2`` / ``future_image2``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar

import h5py
import numpy as np

from cosmos_policy_jax.data.episodes import EpisodeOptions, EpisodeSource
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.hdf5 import attr_str, camera_dataset, open_h5, read_numbers
from cosmos_policy_jax.data.schema import Episode


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobocasaOptions(EpisodeOptions):
    """RoboCasa's actions are cut to ``action_dim`` (7 unless the config says otherwise)."""

    action_dim: int | None = 7


_DEMO_KEY = re.compile(r"^demo_(\d+)$")


def libero_instruction(path: str) -> str:
    """Instruction of a LIBERO demo file: basename minus ``_demo.hdf5``, words after the last ``SCENE`` token."""
    words = os.path.basename(path)[:-10].split("_")
    kept: list[str] = []
    for w in words:
        if "SCENE" in w:
            kept = []
            continue
        kept.append(w)
    return " ".join(kept)


class _DemoGroupReader(EpisodeSource):
    """Demo files holding ``data/demo_<n>`` groups (LIBERO, RoboCasa)."""

    # role -> (raw dataset, JPEG dataset) inside ``data/demo_<n>``; the first role gives the step count.
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {}
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {}

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        raise NotImplementedError

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        raise NotImplementedError

    def _slice_actions(self, actions: np.ndarray) -> np.ndarray:
        return actions

    def _read_demo_file(self, path: str) -> list[Episode]:
        episodes = []
        with open_h5(path) as f:
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise DataError(f"{path}: no 'data' group (expected data/demo_<n> episodes)")
            names = [k for k in f["data"] if _DEMO_KEY.match(k)]
            for name in sorted(names, key=lambda k: int(_DEMO_KEY.match(k).group(1))):
                label = f"data/{name}"
                group = f[label]
                count_role = next(iter(self.DEMO_CAMERAS))
                roles = dict.fromkeys([count_role, *self.cameras])
                cameras = {}
                for role in roles:
                    raw, jpeg = self.DEMO_CAMERAS[role]
                    key, is_jpeg = camera_dataset(f, path, label, role, f"{label}/{raw}", f"{label}/{jpeg}", None)
                    cameras[role] = (key, is_jpeg)
                num_steps = int(f[cameras[count_role][0]].shape[0])
                cameras = {r: cameras[r] for r in self.cameras}
                actions = self._slice_actions(read_numbers(f, f"{label}/actions", path))
                proprio = read_numbers(f, f"{label}/robot_states", path)
                if self.CAST_DEMOS_TO_FLOAT32:
                    actions, proprio = actions.astype(np.float32), proprio.astype(np.float32)
                command = self._demo_command(path, group, label)
                episodes.append(self._finish_episode(path, label, f, cameras, num_steps, actions, proprio, command))
        if not episodes:
            raise DataError(f"{path}: no data/demo_<n> episodes")
        return episodes

    def _read_rollout_file(self, path: str) -> Episode | None:
        with open_h5(path) as f:
            count_role = next(iter(self.ROLLOUT_CAMERAS))
            raw, jpeg = self.ROLLOUT_CAMERAS[count_role]
            # JPEG or raw is decided by the primary camera alone.
            if raw in f:
                prefer_jpeg = False
            elif jpeg in f:
                prefer_jpeg = True
            else:
                raise DataError(f"{path}: rollout file has neither {raw!r} nor {jpeg!r}")
            cameras = {}
            for role in dict.fromkeys([count_role, *self.cameras]):
                r_key, j_key = self.ROLLOUT_CAMERAS[role]
                key = j_key if prefer_jpeg else r_key
                if key not in f:
                    raise DataError(f"{path}: missing required dataset {key!r}")
                cameras[role] = camera_dataset(f, path, "rollout", role, r_key, j_key, prefer_jpeg)
            num_steps = int(f[cameras[count_role][0]].shape[0])
            cameras = {r: cameras[r] for r in self.cameras}
            actions = self._slice_actions(read_numbers(f, "actions", path)).astype(np.float32)
            proprio = read_numbers(f, "proprio", path).astype(np.float32)
            command = self._rollout_command(path, f)
            success = bool(f.attrs.get("success", False))
            return self._finish_episode(
                path, "rollout", f, cameras, num_steps, actions, proprio, command,
                success=success, terminal_reward=1.0 if success else 0.0,
            )  # fmt: skip


class LiberoSource(_DemoGroupReader):
    """LIBERO: wrist + primary camera, 9 latent frames with all flags on."""

    KIND = "libero"
    CAMERAS = ("wrist", "primary")
    SAMPLE_SLOTS = (
        "action",
        "value",
        "current_proprio",
        "current_wrist_image",
        "current_image",
        "future_proprio",
        "future_wrist_image",
        "future_image",
    )
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("obs/agentview_rgb", "obs/agentview_rgb_jpeg"),
        "wrist": ("obs/eye_in_hand_rgb", "obs/eye_in_hand_rgb_jpeg"),
    }
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("primary_images", "primary_images_jpeg"),
        "wrist": ("wrist_images", "wrist_images_jpeg"),
    }

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        return libero_instruction(path)

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        return attr_str(f.attrs.get("task_description", ""))


class RobocasaSource(_DemoGroupReader):
    """RoboCasa: a second third-person camera; actions cut to ``action_dim`` (7)."""

    KIND = "robocasa"
    CAMERAS = ("wrist", "primary", "primary2")
    SAMPLE_SLOTS = (*LiberoSource.SAMPLE_SLOTS, "current_image2", "future_image2")
    DEMO_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("obs/robot0_agentview_left_rgb", "obs/robot0_agentview_left_rgb_jpeg"),
        "primary2": ("obs/robot0_agentview_right_rgb", "obs/robot0_agentview_right_rgb_jpeg"),
        "wrist": ("obs/robot0_eye_in_hand_rgb", "obs/robot0_eye_in_hand_rgb_jpeg"),
    }
    ROLLOUT_CAMERAS: ClassVar[dict[str, tuple[str, str]]] = {
        "primary": ("primary_images", "primary_images_jpeg"),
        "primary2": ("secondary_images", "secondary_images_jpeg"),
        "wrist": ("wrist_images", "wrist_images_jpeg"),
    }

    OPTIONS = RobocasaOptions

    def _slice_actions(self, actions: np.ndarray) -> np.ndarray:
        # The full RoboCasa action has 12 dims; the last ones drive the mobile base and are unused.
        return actions[:, : int(self.options.action_dim)] if actions.ndim == 2 else actions

    def _demo_command(self, path: str, group: h5py.Group, label: str) -> str:
        if "task_description" not in group.attrs:
            raise DataError(f"{path}: {label} has no 'task_description' attribute")
        return attr_str(group.attrs["task_description"])

    def _rollout_command(self, path: str, f: h5py.File) -> str:
        if "task_description" not in f.attrs:
            raise DataError(f"{path}: rollout file has no 'task_description' attribute")
        return attr_str(f.attrs["task_description"])
