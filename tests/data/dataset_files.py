"""Writers of small datasets in the reference's on-disk layouts, and checks of the videos read from them.

Shared by the reader tests (``test_episodes``, ``test_libero``, ``test_aloha``, ``test_registry``) and
``test_data_errors``. Every camera frame is a flat colour that encodes (camera, step), so that the
video layout can be checked.
"""

from __future__ import annotations

import io
import os
import shutil

import h5py
import numpy as np
from PIL import Image

from cosmos_policy_jax.data.t5 import save_t5_embeddings
from tests.fixture_utils import fixture_path, load_fixture

CAMERA_IDS = {"primary": 0, "wrist": 1, "primary2": 2, "wrist2": 3}


def colour(camera: str, step: int) -> tuple[int, int, int]:
    return (20 + 50 * CAMERA_IDS[camera], 10 + 7 * step, 128)


def flat_frames(camera: str, num_steps: int, size: int) -> np.ndarray:
    out = np.empty((num_steps, size, size, 3), dtype=np.uint8)
    for t in range(num_steps):
        out[t] = colour(camera, t)
    return out


def write_images(group: h5py.Group, key: str, frames: np.ndarray, jpeg: bool) -> None:
    if not jpeg:
        group.create_dataset(key, data=frames, compression="gzip")
        return
    ds = group.create_dataset(key + "_jpeg", (len(frames),), dtype=h5py.vlen_dtype(np.uint8))
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        ds[i] = np.frombuffer(buf.getvalue(), dtype=np.uint8)


def low_dim(rng: np.random.Generator, num_steps: int, dim: int, dtype=np.float32) -> np.ndarray:
    return rng.uniform(-1, 1, (num_steps, dim)).astype(dtype)


def write_robocasa_demos(path: str, lengths: list[int], size: int, rng, *, jpeg=False, command="close the door"):
    with h5py.File(path, "w") as f:
        for i, n in enumerate(lengths):
            g = f.create_group(f"data/demo_{i}")
            g.attrs["task_description"] = command
            for cam, key in (
                ("primary", "robot0_agentview_left_rgb"),
                ("primary2", "robot0_agentview_right_rgb"),
                ("wrist", "robot0_eye_in_hand_rgb"),
            ):
                write_images(g, f"obs/{key}", flat_frames(cam, n, size), jpeg)
            g["actions"] = low_dim(rng, n, 12)
            g["robot_states"] = low_dim(rng, n, 9)


def write_robocasa_rollout(path: str, n: int, size: int, rng, *, success: bool, jpeg=False, command="close the door"):
    with h5py.File(path, "w") as f:
        for cam, key in (("primary", "primary_images"), ("primary2", "secondary_images"), ("wrist", "wrist_images")):
            write_images(f, key, flat_frames(cam, n, size), jpeg)
        f["actions"] = low_dim(rng, n, 12, np.float64)
        f["proprio"] = low_dim(rng, n, 9, np.float64)
        f.attrs["success"] = success
        f.attrs["task_description"] = command


def write_aloha_episode(path: str, n: int, size: int, rng, *, attrs: dict | None = None, actions_len=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for cam, key in (("primary", "cam_high"), ("wrist", "cam_left_wrist"), ("wrist2", "cam_right_wrist")):
            write_images(f, f"observations/images/{key}", flat_frames(cam, n, size), False)
        f["action"] = low_dim(rng, actions_len or n, 14)
        f["observations/qpos"] = low_dim(rng, n, 14)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def write_aloha_jpeg_rollout(path: str, n: int, size: int, rng, *, success: bool, score=None, command="fold shirt"):
    with h5py.File(path, "w") as f:
        for cam, key in (
            ("primary", "primary_images"),
            ("wrist", "wrist_left_images"),
            ("wrist2", "wrist_right_images"),
        ):
            write_images(f, key, flat_frames(cam, n, size), True)
        f["action"] = low_dim(rng, n, 14)
        f["observations/qpos"] = low_dim(rng, n, 14)
        f.attrs["success"] = success
        f.attrs["task_description"] = command
        if score is not None:
            f.attrs["success_score"] = score


def write_t5(path: str, instructions, dim: int = 8, length: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    save_t5_embeddings({c: rng.standard_normal((1, length, dim)).astype(np.float32) for c in instructions}, path)


def copy_rollouts(tmp_path) -> tuple[str, str, str, dict]:
    """Copy libero_rollouts to tmp; returns (demo dir, rollout dir, T5 path, reader kwargs of the fixture)."""
    info = load_fixture("libero_rollout_samples.safetensors")[1]
    root = tmp_path / "libero_rollouts"
    shutil.copytree(fixture_path("libero_rollouts"), root)
    demo_dir = str(root / info["demo_episodes"][0]["file"].split("/")[0])
    rollout_dir = str(root / info["rollout_episodes"][0]["file"].split("/")[0])
    kwargs = {k: v for k, v in info["dataset_kwargs"].items() if k != "normalize_images"}
    return demo_dir, rollout_dir, os.path.join(demo_dir, "t5_embeddings.pkl"), kwargs


def center(video: np.ndarray, frame: int) -> np.ndarray:
    s = video.shape[-1] // 2
    return video[:, frame, s, s].astype(int)


def slot_frames(src, slot: str) -> range:
    n = src.options.num_duplicates_per_image
    k = src.layout[slot]
    return range(1 + n * (k - 1), 1 + n * k)


def check_camera_frames(src, sample, t: int, future: int) -> None:
    """Each image slot shows its camera's flat colour at the right step (bicubic/JPEG: within 2)."""
    for slot in src.layout:
        if src.layout[slot] < 0 or not slot.endswith(("image", "image2")):
            continue
        when, _, name = slot.partition("_")
        camera = {"image": "primary", "image2": "primary2", "wrist_image": "wrist", "wrist_image2": "wrist2"}[name]
        step = t if when == "current" else future
        for frame in slot_frames(src, slot):
            assert np.abs(center(sample["video"], frame) - colour(camera, step)).max() <= 2, (slot, frame)
