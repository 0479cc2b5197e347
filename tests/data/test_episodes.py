"""Behaviour of the dataset sources beyond the fixture samples: flags, sizes, randomness, other layouts.

Fixture data is copied to ``tmp_path`` (the fixture directory may be read-only). RoboCasa and ALOHA
have no reference fixtures; small files in their on-disk layouts are written here, with every camera
frame a flat colour that encodes (camera, step) so that the video layout can be checked.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from cosmos_policy_jax.data.epoch import calculate_epoch_structure
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.sources import (
    SLOTS,
    AlohaSource,
    LiberoSource,
    RobocasaSource,
    libero_instruction,
    list_instructions,
    make_source,
)
from cosmos_policy_jax.data.t5 import save_t5_embeddings
from tests.fixture_utils import fixture_path, load_fixture

# ----------------------------------------------------------------------------------------------
# Writers of small datasets in the reference layouts (also used by test_data_errors.py)
# ----------------------------------------------------------------------------------------------

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


@pytest.fixture
def libero(tmp_path):
    demo_dir, rollout_dir, t5, kwargs = copy_rollouts(tmp_path)
    return dict(data_dir=demo_dir, rollout_data_dir=rollout_dir, t5_text_embeddings_path=t5), kwargs


def _center(video: np.ndarray, frame: int) -> np.ndarray:
    s = video.shape[-1] // 2
    return video[:, frame, s, s].astype(int)


def _slot_frames(src, slot: str) -> range:
    n = src.num_duplicates_per_image
    k = src.layout[slot]
    return range(1 + n * (k - 1), 1 + n * k)


# ----------------------------------------------------------------------------------------------
# LIBERO format (fixture data)
# ----------------------------------------------------------------------------------------------


def test_layout_matches_video(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    sample = src[0]
    assert set(src.layout) == set(SLOTS)
    assert sample["video"].shape[1] == src.num_frames == 1 + src.num_duplicates_per_image * (src.state_t - 1)
    for slot in src.SAMPLE_SLOTS:
        assert sample[f"{slot}_latent_idx"] == src.layout[slot]
    used = sorted(v for v in src.layout.values() if v >= 0)
    assert used == list(range(1, src.state_t))
    # Blank slots are black; image slots are not.
    for slot in ("current_proprio", "action", "future_proprio", "value"):
        assert not sample["video"][:, list(_slot_frames(src, slot))].any(), slot
    for slot in ("current_image", "current_wrist_image", "future_image", "future_wrist_image"):
        assert sample["video"][:, list(_slot_frames(src, slot))].any(), slot


def test_get_is_deterministic_in_seed_epoch_index(libero):
    paths, kwargs = libero
    kwargs = {**kwargs, "use_image_aug": True, "use_stronger_image_aug": True}
    src = LiberoSource(**paths, **kwargs, seed=3)
    a, b = src.get(100, epoch=2), src.get(100, epoch=2)
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert src.draw(100, 2) == src.draw(100, 2)
    assert src.draw(100, 2) != src.draw(100, 3)
    assert src.draw(100, 2) != LiberoSource(**paths, **kwargs, seed=4).draw(100, 2)
    videos = {src.get(5, epoch=e)["video"].tobytes() for e in range(4)}
    assert len(videos) == 4  # a new epoch draws new augmentation parameters
    assert np.array_equal(src[7]["video"], src.get(7, 0)["video"])


def test_world_model_choice_is_a_fair_coin(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    e = src.epoch_structure
    rollout_indices = range(e.adjusted_demo_count, len(src))
    wm = [src.draw(i, ep)[0] < 0.5 for ep in range(20) for i in rollout_indices]
    assert 0.4 < np.mean(wm) < 0.6
    for i in list(rollout_indices)[:10]:
        s = src.get(i, epoch=1)
        assert s["world_model_sample_mask"] + s["value_function_sample_mask"] == 1
        assert s["world_model_sample_mask"] == int(src.draw(i, 1)[0] < 0.5)
    d = src.get(0, epoch=1)
    assert d["world_model_sample_mask"] == d["value_function_sample_mask"] == 0


def test_forced_sample_type_is_validated(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    with pytest.raises(ValueError, match="does not fit"):
        src.get(0, sample_type="world_model")
    with pytest.raises(ValueError, match="does not fit"):
        src.get(len(src) - 1, sample_type="demo")
    with pytest.raises(ValueError, match="sample_type"):
        src.get(0, sample_type="bogus")
    with pytest.raises(IndexError):
        src.get(len(src))


def test_pickles_without_file_handles(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    before = src.get(len(src) - 1, epoch=1)  # opens rollout files
    assert src._handles
    clone = pickle.loads(pickle.dumps(src))
    assert not clone._handles
    after = clone.get(len(src) - 1, epoch=1)
    for key in before:
        assert np.array_equal(np.asarray(before[key]), np.asarray(after[key])), key
    src.close()
    assert not src._handles


def test_other_chunk_and_image_size(libero):
    paths, kwargs = libero
    kwargs = {**kwargs, "chunk_size": 5, "final_image_size": 24, "num_duplicates_per_image": 2}
    kwargs.update(demonstration_sampling_prob=0.3, success_rollout_sampling_prob=0.7)
    src = LiberoSource(**paths, **kwargs)
    e = src.epoch_structure
    want = calculate_epoch_structure(
        e.num_demo_steps, e.num_success_rollout_steps, e.num_failure_rollout_steps, 0.3, 0.7
    )
    assert e == want and len(src) == want.epoch_length
    for index in (0, e.adjusted_demo_count, len(src) - 1):
        s = src.get(index, sample_type="world_model" if index else None)
        where = src.describe(index)
        ep = src.demos[where["episode"]] if where["category"] == "demo" else src.rollouts[where["episode"]]
        assert s["video"].shape == (3, 1 + 2 * 8, 24, 24)
        assert s["actions"].shape == (5, ep.actions.shape[1]) and s["actions"].dtype == np.float64
        assert where["future_t"] == min(where["t"] + 5, ep.num_steps - 1)
        assert s["value_function_return"] == ep.returns[where["future_t"]]
        assert s["padding_mask"].shape == (1, 24, 24) and (s["image_size"] == 24).all()
        np.testing.assert_array_equal(s["proprio"], ep.proprio[where["t"]])


def test_action_chunk_padding_repeats_last_action(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    last = src.demos[0].num_steps - 1  # the last step of the first demo
    s = src.get(last)
    assert (s["actions"] == src.demos[0].actions[-1]).all()
    assert (s["next_action_chunk"] == src.demos[0].actions[-1]).all()
    assert s["value_function_return"] == s["next_value_function_return"] == 1.0


def test_flags_change_layout(libero):
    paths, kwargs = libero
    no_value = LiberoSource(**paths, **{**kwargs, "return_value_function_returns": False})
    assert no_value.layout["value"] == -1 and no_value.num_frames == 29
    for i in (len(no_value) - 1, no_value.epoch_structure.adjusted_demo_count):
        s = no_value.get(i, epoch=3)
        assert s["video"].shape[1] == 29 and s["value_function_return"] == np.float32(-100.0)
        assert s["world_model_sample_mask"] == 1 and s["value_latent_idx"] == -1
    no_proprio = LiberoSource(**paths, **{**kwargs, "use_proprio": False})
    s = no_proprio[3]
    assert s["current_proprio_latent_idx"] == s["future_proprio_latent_idx"] == -1
    assert s["current_wrist_image_latent_idx"] == 1 and s["action_latent_idx"] == 3
    assert s["video"].shape[1] == 1 + 4 * 6 and not s["proprio"].any()
    no_wrist = LiberoSource(**paths, **{**kwargs, "use_wrist_images": False})
    assert no_wrist.layout["current_wrist_image"] == -1 and no_wrist.layout["current_image"] == 2
    with pytest.raises(DataError, match="use_wrist_images"):
        LiberoSource(**paths, **{**kwargs, "use_wrist_images": False, "use_third_person_images": False})


def test_treat_success_rollouts_as_demos(libero):
    paths, kwargs = libero
    plain = LiberoSource(**paths, **kwargs)
    mixed = LiberoSource(**paths, **{**kwargs, "treat_success_rollouts_as_demos": True})
    e0, e1 = plain.epoch_structure, mixed.epoch_structure
    assert e1.num_demo_steps == e0.num_demo_steps + e0.num_success_rollout_steps
    assert e1.num_success_rollout_steps == e0.num_success_rollout_steps
    # Statistics still come from the demonstrations only.
    for key in plain.statistics:
        assert np.array_equal(plain.statistics[key], mixed.statistics[key])
    copied = mixed.demos[len(plain.demos)]
    assert copied.success and copied.path == plain.rollouts[plain._success_ids[0]].path
    s = mixed.get(e0.num_demo_steps)  # the first step of the first copied success rollout
    assert s["rollout_data_mask"] == 0 and s["global_rollout_idx"] == -1


def test_demo_probability_zero_needs_statistics(libero, tmp_path):
    paths, kwargs = libero
    src = LiberoSource(**paths, **{**kwargs, "demonstration_sampling_prob": 0.0})
    assert not src.demos and src.epoch_structure.adjusted_demo_count == 0
    assert src.get(0, sample_type="world_model")["rollout_data_mask"] == 1
    os.remove(os.path.join(paths["data_dir"], "dataset_statistics.json"))
    with pytest.raises(DataError, match="no demonstrations to compute it from"):
        LiberoSource(**paths, **{**kwargs, "demonstration_sampling_prob": 0.0})


def test_from_config_and_make_source(libero):
    from configs.cosmos_policy import get_config

    paths, kwargs = libero
    cfg = get_config("libero").dataloader_train.dataset
    with cfg.unlocked():
        cfg.update(paths)
        cfg.update({k: v for k, v in kwargs.items() if k in cfg})
        cfg.text_dim = 1024
    with pytest.raises(DataError, match="text_dim"):
        make_source(cfg)
    with cfg.unlocked():
        cfg.text_dim = load_fixture("libero_rollout_samples.safetensors")[0]["sample30.t5_text_embeddings"].shape[-1]
    src = make_source(cfg, seed=5)
    assert isinstance(src, LiberoSource) and src.seed == 5 and src.chunk_size == kwargs["chunk_size"]
    direct = LiberoSource(**paths, **kwargs)
    assert len(src) == len(direct)
    assert np.array_equal(src[1]["actions"], direct[1]["actions"])
    with cfg.unlocked():
        cfg.kind = "nope"
    with pytest.raises(DataError, match=r"dataset\.kind"):
        make_source(cfg)


def test_list_instructions(libero):
    paths, _ = libero
    info = load_fixture("libero_rollout_samples.safetensors")[1]
    got = list_instructions("libero", paths["data_dir"], paths["rollout_data_dir"])
    assert got == sorted(info["commands"])
    assert libero_instruction("/x/KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5") == "turn on the stove"
    assert libero_instruction("/x/pick_up_the_book_demo.hdf5") == "pick up the book"


# ----------------------------------------------------------------------------------------------
# RoboCasa and ALOHA layouts (synthetic files)
# ----------------------------------------------------------------------------------------------


def _check_camera_frames(src, sample, t: int, future: int) -> None:
    """Each image slot shows its camera's flat colour at the right step (bicubic/JPEG: within 2)."""
    for slot in src.layout:
        if src.layout[slot] < 0 or not slot.endswith(("image", "image2")):
            continue
        when, _, name = slot.partition("_")
        camera = {"image": "primary", "image2": "primary2", "wrist_image": "wrist", "wrist_image2": "wrist2"}[name]
        step = t if when == "current" else future
        for frame in _slot_frames(src, slot):
            assert np.abs(_center(sample["video"], frame) - colour(camera, step)).max() <= 2, (slot, frame)


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
    src = RobocasaSource(
        str(tmp_path / "demos"), str(roll_dir), t5, chunk_size=3, final_image_size=16, use_image_aug=False
    )
    assert src.state_t == 11 and src.num_frames == 41
    assert src.layout["current_image2"] == 4 and src.layout["action"] == 5 and src.layout["future_image2"] == 9
    assert src.demos[0].actions.shape == (7, 7)  # 12-dim actions cut to 7
    for index in range(len(src)):
        where = src.describe(index)
        kind = None if where["category"] == "demo" else "value_function"
        s = src.get(index, sample_type=kind)
        assert s["video"].shape == (3, 41, 16, 16)
        assert s["current_image2_latent_idx"] == 4 and s["future_image2_latent_idx"] == 9
        _check_camera_frames(src, s, where["t"], where["future_t"])


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
        str(root), str(roll), t5, treat_demos_as_success_rollouts=True, demonstration_sampling_prob=0.1,
        use_jpeg_for_rollouts=True, **common,
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
        _check_camera_frames(src, s, where["t"], where["future_t"])
    val = AlohaSource(str(root), "", t5, split="val", **common)
    assert [e.num_steps for e in val.demos] == [5]
    cfg = dict(kind="aloha", data_dir=str(root), t5_text_embeddings_path=t5, split="val", **common)
    assert [e.num_steps for e in make_source(cfg).demos] == [5]
    cfg["split"] = ""  # every demo file
    assert len(make_source(cfg).demos) == 3


def test_samples_do_not_alias_the_dataset(libero):
    paths, kwargs = libero
    src = LiberoSource(**paths, **kwargs)
    a = src[3]
    for key in ("proprio", "future_proprio", "actions", "next_action_chunk", "t5_text_embeddings", "video"):
        a[key][...] = 123
    b = src[3]
    for key in ("proprio", "future_proprio", "actions", "next_action_chunk", "t5_text_embeddings", "video"):
        assert not np.all(b[key] == 123), key


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
    src = LiberoSource(root, "", os.path.join(root, "t5.pkl"), chunk_size=16, final_image_size=224)
    src.get(0)
    n, start, cpu = 30, time.perf_counter(), time.process_time()
    for i in range(n):
        s = src.get((i * 7) % len(src), epoch=1)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert s["video"].shape == (3, 33, 224, 224)
    print(f"\nLIBERO 224px + aug, 1 process: {n / wall:.1f} samples/s wall, {n / cpu:.1f} samples/s per CPU second")
    assert n / wall > 1.0


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
    with pytest.raises(DataError, match="use_jpeg_for_rollouts"):
        AlohaSource(str(root), str(roll), t5, demonstration_sampling_prob=0.1, **common)
    src = AlohaSource(str(root), str(roll), t5, demonstration_sampling_prob=0.1, use_jpeg_for_rollouts=True, **common)
    assert [e.command for e in src.demos] == ["fold shirt"] and len(src.rollouts) == 1
