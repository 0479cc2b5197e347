"""The shared episode source (``data/episodes.py``) through the LIBERO reader on the fixture data:
options, layout, randomness, sample types, flags and category lists.

Fixture data is copied to ``tmp_path`` (the fixture directory may be read-only).
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest

from cosmos_policy_jax.data.episodes import EpisodeOptions
from cosmos_policy_jax.data.epoch import calculate_epoch_structure
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.layouts import SLOTS
from tests.data.dataset_files import slot_frames


def test_options_from_config_defaults_overrides_and_checks(libero):
    paths, _ = libero
    cfg = {**paths, "chunk_size": "8", "use_proprio": 0, "action_dim": None, "gamma": 0.9}
    opts = EpisodeOptions.from_config(cfg, seed=4, gamma=0.5)
    assert (opts.chunk_size, opts.use_proprio, opts.action_dim, opts.gamma, opts.seed) == (8, False, None, 0.5, 4)
    assert opts.final_image_size == 224 and opts.data_dir == paths["data_dir"]
    with pytest.raises(TypeError, match="no_such_field"):
        EpisodeOptions.from_config(cfg, no_such_field=1)
    with pytest.raises(DataError, match=r"dataset\.chunk_size must be positive"):
        EpisodeOptions.from_config(cfg, chunk_size=0)
    with pytest.raises(DataError, match="seed must be non-negative"):
        EpisodeOptions.from_config(cfg, seed=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.chunk_size = 3  # type: ignore[misc]


def test_layout_matches_video(libero):
    paths, kwargs = libero
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
    sample = src[0]
    assert set(src.layout) == set(SLOTS)
    assert sample["video"].shape[1] == src.num_frames == 1 + src.options.num_duplicates_per_image * (src.state_t - 1)
    for slot in src.SAMPLE_SLOTS:
        assert sample[f"{slot}_latent_idx"] == src.layout[slot]
    used = sorted(v for v in src.layout.values() if v >= 0)
    assert used == list(range(1, src.state_t))
    # Blank slots are black; image slots are not.
    for slot in ("current_proprio", "action", "future_proprio", "value"):
        assert not sample["video"][:, list(slot_frames(src, slot))].any(), slot
    for slot in ("current_image", "current_wrist_image", "future_image", "future_wrist_image"):
        assert sample["video"][:, list(slot_frames(src, slot))].any(), slot


def test_get_is_deterministic_in_seed_epoch_index(libero):
    paths, kwargs = libero
    kwargs = {**kwargs, "use_image_aug": True, "use_stronger_image_aug": True}
    src = LiberoSource(EpisodeOptions(**paths, **kwargs, seed=3))
    a, b = src.get(100, epoch=2), src.get(100, epoch=2)
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert src.draw(100, 2) == src.draw(100, 2)
    assert src.draw(100, 2) != src.draw(100, 3)
    assert src.draw(100, 2) != LiberoSource(EpisodeOptions(**paths, **kwargs, seed=4)).draw(100, 2)
    videos = {src.get(5, epoch=e)["video"].tobytes() for e in range(4)}
    assert len(videos) == 4  # a new epoch draws new augmentation parameters
    assert np.array_equal(src[7]["video"], src.get(7, 0)["video"])


def test_world_model_choice_is_a_fair_coin(libero):
    paths, kwargs = libero
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
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
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
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
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
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
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
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
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
    last = src.demos[0].num_steps - 1  # the last step of the first demo
    s = src.get(last)
    assert (s["actions"] == src.demos[0].actions[-1]).all()
    assert (s["next_action_chunk"] == src.demos[0].actions[-1]).all()
    assert s["value_function_return"] == s["next_value_function_return"] == 1.0


def test_flags_change_layout(libero):
    paths, kwargs = libero
    no_value = LiberoSource(EpisodeOptions(**paths, **{**kwargs, "return_value_function_returns": False}))
    assert no_value.layout["value"] == -1 and no_value.num_frames == 29
    for i in (len(no_value) - 1, no_value.epoch_structure.adjusted_demo_count):
        s = no_value.get(i, epoch=3)
        assert s["video"].shape[1] == 29 and s["value_function_return"] == np.float32(-100.0)
        assert s["world_model_sample_mask"] == 1 and s["value_latent_idx"] == -1
    no_proprio = LiberoSource(EpisodeOptions(**paths, **{**kwargs, "use_proprio": False}))
    s = no_proprio[3]
    assert s["current_proprio_latent_idx"] == s["future_proprio_latent_idx"] == -1
    assert s["current_wrist_image_latent_idx"] == 1 and s["action_latent_idx"] == 3
    assert s["video"].shape[1] == 1 + 4 * 6 and not s["proprio"].any()
    no_wrist = LiberoSource(EpisodeOptions(**paths, **{**kwargs, "use_wrist_images": False}))
    assert no_wrist.layout["current_wrist_image"] == -1 and no_wrist.layout["current_image"] == 2
    with pytest.raises(DataError, match="use_wrist_images"):
        LiberoSource(EpisodeOptions(**paths, **{**kwargs, "use_wrist_images": False, "use_third_person_images": False}))


def test_treat_success_rollouts_as_demos(libero):
    paths, kwargs = libero
    plain = LiberoSource(EpisodeOptions(**paths, **kwargs))
    mixed = LiberoSource(EpisodeOptions(**paths, **{**kwargs, "treat_success_rollouts_as_demos": True}))
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
    src = LiberoSource(EpisodeOptions(**paths, **{**kwargs, "demonstration_sampling_prob": 0.0}))
    assert not src.demos and src.epoch_structure.adjusted_demo_count == 0
    assert src.get(0, sample_type="world_model")["rollout_data_mask"] == 1
    os.remove(os.path.join(paths["data_dir"], "dataset_statistics.json"))
    with pytest.raises(DataError, match="no demonstrations to compute it from"):
        LiberoSource(EpisodeOptions(**paths, **{**kwargs, "demonstration_sampling_prob": 0.0}))


def test_samples_do_not_alias_the_dataset(libero):
    paths, kwargs = libero
    src = LiberoSource(EpisodeOptions(**paths, **kwargs))
    a = src[3]
    for key in ("proprio", "future_proprio", "actions", "next_action_chunk", "t5_text_embeddings", "video"):
        a[key][...] = 123
    b = src[3]
    for key in ("proprio", "future_proprio", "actions", "next_action_chunk", "t5_text_embeddings", "video"):
        assert not np.all(b[key] == 123), key
