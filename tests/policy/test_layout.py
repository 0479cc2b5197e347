"""Latent layouts from config and from batches; validation messages."""

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.policy import layout as layout_lib
from cosmos_policy_jax.policy.layout import LatentLayout


@pytest.mark.parametrize("name,state_t,ncond", [("libero", 9, 4), ("robocasa", 11, 5), ("aloha", 11, 5)])
def test_from_config(name, state_t, ncond):
    cfg = get_config(name)
    lay = LatentLayout.from_config(cfg)
    assert (lay.state_t, lay.num_conditional_frames) == (state_t, ncond)
    for slot in layout_lib.SLOTS:
        assert lay.index(slot) == cfg.model.latent_layout[slot]
    # Every used frame is distinct and the last frame is the value.
    used = [lay.index(s) for s in layout_lib.SLOTS if lay.has(s)]
    assert len(set(used)) == len(used) and lay.index("value") == state_t - 1
    assert hash(lay) == hash(LatentLayout.from_config(cfg))
    assert lay.num_pixel_frames() == 1 + 4 * (state_t - 1)


def test_from_batch_round_trip_and_mismatch():
    lay = LatentLayout.from_config(get_config("aloha"))
    batch = lay.batch_entries(3)
    assert LatentLayout.from_batch(batch, lay.state_t, lay.num_conditional_frames) == lay
    lay.check_batch(batch)
    bad = dict(batch, action_latent_idx=np.array([5, 5, 6]))
    with pytest.raises(ValueError, match="action_latent_idx"):
        LatentLayout.from_batch(bad, lay.state_t, lay.num_conditional_frames)
    with pytest.raises(ValueError, match="action_latent_idx"):
        lay.check_batch(bad)
    libero = LatentLayout.from_config(get_config("libero"))
    with pytest.raises(ValueError, match="does not match"):
        libero.check_batch(batch)


def test_validation_messages():
    with pytest.raises(ValueError, match="share latent frame"):
        LatentLayout.from_mapping(dict(action=4, value=4), 9, 4)
    with pytest.raises(ValueError, match=r"latent_layout\.value=9"):
        LatentLayout.from_mapping(dict(action=4, value=9), 9, 4)
    with pytest.raises(ValueError, match="action"):
        LatentLayout.from_mapping(dict(value=8), 9, 4)
    with pytest.raises(ValueError, match="unknown latent_layout slot"):
        LatentLayout.from_mapping(dict(action=4, actions=5), 9, 4)
    with pytest.raises(ValueError, match="num_conditional_frames"):
        LatentLayout.from_mapping(dict(action=4), 9, 0)


def test_pixel_frames():
    lay = LatentLayout.from_config(get_config("libero"))
    assert list(lay.pixel_frames(0)) == [0]
    assert list(lay.pixel_frames(3)) == [9, 10, 11, 12]
    assert list(lay.pixel_frames(8)) == [29, 30, 31, 32]
