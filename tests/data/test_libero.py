"""The LIBERO / RoboCasa reader (``data/libero.py``) beyond the fixture samples: RoboCasa's layout
(small files written here) and LIBERO at production image size."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from PIL import Image

from cosmos_policy_jax.data.episodes import EpisodeOptions
from cosmos_policy_jax.data.libero import LiberoSource, RobocasaSource
from tests.data.dataset_files import (
    check_camera_frames,
    low_dim,
    write_images,
    write_robocasa_demos,
    write_robocasa_rollout,
    write_t5,
)


def test_robocasa_options_default_to_seven_action_dims():
    from cosmos_policy_jax.data.libero import RobocasaOptions

    assert RobocasaOptions.from_config({"chunk_size": 2}).action_dim == 7
    assert RobocasaOptions.from_config({"chunk_size": 2, "action_dim": 12}).action_dim == 12


def _write_libero_224(root: str, rng) -> str:
    """Two LIBERO demo files (raw and JPEG) with 256x256 frames, as the production download stores them."""
    os.makedirs(os.path.join(root, "suite"))
    for name, jpeg in (("pick_up_the_bowl_demo.hdf5", False), ("open_the_drawer_demo.hdf5", True)):
        with h5py.File(os.path.join(root, "suite", name), "w") as f:
            for d in range(2):
                g = f.create_group(f"data/demo_{d}")
                for key in ("agentview_rgb", "eye_in_hand_rgb"):
                    small = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
                    frames = np.stack([np.asarray(Image.fromarray(x).resize((256, 256))) for x in small])
                    write_images(g, f"obs/{key}", frames, jpeg)
                g["actions"] = low_dim(rng, 30, 7)
                g["robot_states"] = low_dim(rng, 30, 9)
    write_t5(os.path.join(root, "t5.pkl"), ["pick up the bowl", "open the drawer"], dim=1024, length=512)
    return root


@pytest.mark.slow
def test_throughput_224_with_augmentation(tmp_path):
    """samples/s of one process at 224 px, LIBERO format, stronger augmentation (printed; loose bound)."""
    import time

    root = _write_libero_224(str(tmp_path / "ds"), np.random.default_rng(0))
    src = LiberoSource(
        EpisodeOptions(data_dir=root, t5_text_embeddings_path=os.path.join(root, "t5.pkl"), chunk_size=16)
    )
    src.get(0)
    n, start, cpu = 30, time.perf_counter(), time.process_time()
    for i in range(n):
        s = src.get((i * 7) % len(src), epoch=1)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert s["video"].shape == (3, 33, 224, 224)
    print(f"\nLIBERO 224px + aug, 1 process: {n / wall:.1f} samples/s wall, {n / cpu:.1f} samples/s per CPU second")
    assert n / wall > 1.0


@pytest.mark.parametrize("jpeg", [False, True])
def test_robocasa_layout(tmp_path, jpeg):
    rng = np.random.default_rng(0)
    demo_dir, roll_dir = tmp_path / "demos" / "task", tmp_path / "rollouts"
    os.makedirs(demo_dir)
    os.makedirs(roll_dir)
    write_robocasa_demos(str(demo_dir / "a.hdf5"), [7, 5], 20, rng, jpeg=jpeg)
    write_robocasa_rollout(str(roll_dir / "r0.hdf5"), 6, 20, rng, success=True, jpeg=jpeg)
    write_robocasa_rollout(str(roll_dir / "r1.hdf5"), 4, 20, rng, success=False, command="open the oven")
    t5 = str(tmp_path / "t5.pkl")
    write_t5(t5, ["close the door", "open the oven"])
    src = RobocasaSource.from_config(
        dict(data_dir=str(tmp_path / "demos"), rollout_data_dir=str(roll_dir), t5_text_embeddings_path=t5),
        chunk_size=3, final_image_size=16, use_image_aug=False,
    )  # fmt: skip
    assert src.state_t == 11 and src.num_frames == 41
    assert src.layout["current_image2"] == 4 and src.layout["action"] == 5 and src.layout["future_image2"] == 9
    assert src.demos[0].actions.shape == (7, 7)  # 12-dim actions cut to 7
    for index in range(len(src)):
        where = src.describe(index)
        kind = None if where["category"] == "demo" else "value_function"
        s = src.get(index, sample_type=kind)
        assert s["video"].shape == (3, 41, 16, 16)
        assert s["current_image2_latent_idx"] == 4 and s["future_image2_latent_idx"] == 9
        check_camera_frames(src, s, where["t"], where["future_t"])
