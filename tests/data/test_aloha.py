"""The ALOHA reader (``data/aloha.py``) on small files in its on-disk layout: cameras, splits, instructions,
JPEG rollouts and demos reused as rollouts."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cosmos_policy_jax.data.aloha import AlohaOptions, AlohaSource
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.registry import make_source
from tests.data.dataset_files import check_camera_frames, write_aloha_episode, write_aloha_jpeg_rollout, write_t5


def test_aloha_options_always_use_every_camera_and_read_an_empty_split_as_all():
    opts = AlohaOptions.from_config({"chunk_size": 2, "split": "", "use_wrist_images": False})
    assert opts.use_wrist_images and opts.use_third_person_images and opts.split is None
    assert AlohaOptions(chunk_size=2).split == "train"


def test_aloha_layout_split_and_demos_as_rollouts(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "aloha"
    write_aloha_episode(str(root / "fold_shirt_day1" / "train" / "episode_0.hdf5"), 8, 12, rng)
    write_aloha_episode(str(root / "candy_in_bag_x" / "train" / "episode_0.hdf5"), 6, 12, rng)
    write_aloha_episode(str(root / "candy_in_bag_x" / "val" / "episode_1.hdf5"), 5, 12, rng)
    roll = tmp_path / "rollouts"
    os.makedirs(roll)
    write_aloha_jpeg_rollout(str(roll / "r0.hdf5"), 9, 12, rng, success=False, score=0.25)
    write_aloha_episode(str(roll / "r1.hdf5"), 7, 12, rng, attrs={"success": True, "task_description": "fold shirt"})
    write_aloha_episode(
        str(roll / "r2.hdf5"), 7, 12, rng, attrs={"success": False, "task_description": "fold shirt"}, actions_len=6
    )
    t5 = str(tmp_path / "t5.pkl")
    write_t5(t5, ["fold shirt", "put candy in bag"])
    common = dict(chunk_size=4, final_image_size=12, use_image_aug=False, gamma=0.998, action_dim=14, proprio_dim=14)
    src = AlohaSource(
        AlohaOptions(
            data_dir=str(root), rollout_data_dir=str(roll), t5_text_embeddings_path=t5,
            treat_demos_as_success_rollouts=True, demonstration_sampling_prob=0.1, use_jpeg_for_rollouts=True, **common,
        )
    )  # fmt: skip
    assert [os.path.basename(os.path.dirname(os.path.dirname(e.path))) for e in src.demos] == [
        "candy_in_bag_x",
        "fold_shirt_day1",
    ]  # train split only, sorted paths
    assert [e.command for e in src.demos] == ["put candy in bag", "fold shirt"]
    assert len(src.rollouts) == 4  # 2 demos as successes + 2 readable rollouts (r2 skipped: 6 actions, 7 frames)
    assert [e.success for e in src.rollouts] == [True, True, False, True]
    score = src.rollouts[2]
    np.testing.assert_allclose(score.returns[-1], 1.0)  # 2*G/terminal - 1 with G = terminal at the end
    assert src.state_t == 11 and src.layout["current_wrist_image2"] == 3 and src.layout["current_image"] == 4
    for index in (0, src.epoch_structure.adjusted_demo_count, len(src) - 1):
        where = src.describe(index)
        kind = None if where["category"] == "demo" else "world_model"
        s = src.get(index, sample_type=kind)
        assert s["actions"].shape == (4, 14) and s["current_wrist_image2_latent_idx"] == 3
        check_camera_frames(src, s, where["t"], where["future_t"])
    val = AlohaSource(AlohaOptions(data_dir=str(root), t5_text_embeddings_path=t5, split="val", **common))
    assert [e.num_steps for e in val.demos] == [5]
    cfg = dict(kind="aloha", data_dir=str(root), t5_text_embeddings_path=t5, split="val", **common)
    assert [e.num_steps for e in make_source(cfg).demos] == [5]
    cfg["split"] = ""  # every demo file
    assert len(make_source(cfg).demos) == 3


def test_aloha_instruction_from_folder_and_jpeg_rollouts_only_when_asked(tmp_path):
    # The reference derives demo instructions from the task folder (a stale attribute is ignored) and
    # reads JPEG rollouts only with use_jpeg_for_rollouts.
    rng = np.random.default_rng(2)
    root = tmp_path / "aloha"
    write_aloha_episode(
        str(root / "fold_shirt_day1" / "train" / "episode_0.hdf5"), 8, 12, rng, attrs={"task_description": "other"}
    )
    roll = tmp_path / "rollouts"
    os.makedirs(roll)
    write_aloha_jpeg_rollout(str(roll / "r0.hdf5"), 9, 12, rng, success=False, score=0.25)
    t5 = str(tmp_path / "t5.pkl")
    write_t5(t5, ["fold shirt"])
    common = dict(chunk_size=4, final_image_size=12, use_image_aug=False, gamma=0.998, action_dim=14, proprio_dim=14)
    paths = dict(data_dir=str(root), rollout_data_dir=str(roll), t5_text_embeddings_path=t5)
    with pytest.raises(DataError, match="use_jpeg_for_rollouts"):
        AlohaSource(AlohaOptions(**paths, demonstration_sampling_prob=0.1, **common))
    src = AlohaSource(AlohaOptions(**paths, demonstration_sampling_prob=0.1, use_jpeg_for_rollouts=True, **common))
    assert [e.command for e in src.demos] == ["fold shirt"] and len(src.rollouts) == 1
