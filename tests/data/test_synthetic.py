"""Synthetic source: the model's input spec for any layout, determinism per (seed, epoch, index), sample mix."""

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data import pipeline
from cosmos_policy_jax.data.registry import make_source
from cosmos_policy_jax.data.synthetic import SyntheticSource
from cosmos_policy_jax.layouts import LAYOUTS


@pytest.mark.parametrize("name,state_t", [("libero", 9), ("robocasa", 11), ("aloha", 11)])
def test_sample_spec_follows_the_layout(name, state_t):
    src = SyntheticSource(
        layout=LAYOUTS[name], state_t=state_t, image_size=16, chunk_size=5, action_dim=3, proprio_dim=4, text_len=6
    )
    s = src.get(7, 2)
    frames = 1 + 4 * (state_t - 1)
    assert s["video"].shape == (3, frames, 16, 16) and s["video"].dtype == np.uint8
    assert s["actions"].shape == (5, 3) and s["actions"].dtype == np.float64
    assert s["proprio"].shape == (4,) and s["future_proprio"].shape == (4,)
    assert np.abs(s["actions"]).max() <= 1.0
    assert s["t5_text_embeddings"].shape == (6, 1024) and s["t5_text_embeddings"].dtype == np.float32
    assert s["padding_mask"].shape == (1, 16, 16)
    assert {k[: -len("_latent_idx")] for k in s if k.endswith("_latent_idx")} == set(LAYOUTS[name])
    for slot, idx in LAYOUTS[name].items():
        assert s[f"{slot}_latent_idx"] == idx
        block = s["video"][:, 1 + 4 * (idx - 1) : 1 + 4 * idx]
        if "image" in slot:
            assert block.any(), slot  # an image, repeated over the slot's 4 frames
            assert all(np.array_equal(block[:, 0], block[:, i]) for i in range(4))
        else:
            assert not block.any(), slot  # black frames for injected slots
    assert not s["video"][:, 0].any()


def test_deterministic_per_seed_epoch_index():
    a, b = SyntheticSource(image_size=16, seed=3), SyntheticSource(image_size=16, seed=3)
    s1, s2 = a.get(11, 4), b.get(11, 4)
    for key in ("video", "actions", "proprio"):
        np.testing.assert_array_equal(s1[key], s2[key])
    assert not np.array_equal(a.get(11, 5)["actions"], s1["actions"])
    assert not np.array_equal(SyntheticSource(image_size=16, seed=4).get(11, 4)["actions"], s1["actions"])


def test_sample_type_mix():
    src = SyntheticSource(image_size=16, length=400)
    samples = [src.get(i, 0) for i in range(400)]
    demo = [s for s in samples if not s["rollout_data_mask"]]
    rollouts = [s for s in samples if s["rollout_data_mask"]]
    assert len(demo) == 200
    assert all(s["world_model_sample_mask"] == s["value_function_sample_mask"] == 0 for s in demo)
    wm = sum(s["world_model_sample_mask"] for s in rollouts)
    assert all(s["world_model_sample_mask"] + s["value_function_sample_mask"] == 1 for s in rollouts)
    assert 60 < wm < 140  # about half of the 200 rollout samples
    assert sum(s["rollout_data_success_mask"] for s in rollouts) == 100
    assert all(s["value_function_return"] == -1 for s in rollouts if not s["rollout_data_success_mask"])


def test_tiny_config_builds_a_synthetic_pipeline():
    c = get_config("tiny")
    dl = c.dataloader_train
    src = make_source(dl.dataset, seed=0, layout=c.model.latent_layout, state_t=c.model.state_t)
    it = pipeline.build_pipeline(src, batch_size_per_process=dl.batch_size, dp_rank=0, dp_size=1, shuffle=True)
    batch = next(it)
    s = dl.dataset.final_image_size
    assert batch["video"].shape == (dl.batch_size, 3, 33, s, s)
    assert batch["t5_text_embeddings"].shape == (dl.batch_size, dl.dataset.text_len, dl.dataset.text_dim)
    assert batch["actions"].shape == (dl.batch_size, dl.dataset.chunk_size, dl.dataset.action_dim)
