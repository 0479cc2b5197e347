"""PolicyConfig from every shipped config, and its refusal of bad settings."""

import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.policy.config import PolicyConfig


@pytest.mark.parametrize("arg", ["libero", "robocasa", "aloha", "demo", "tiny", "bench", "libero,tiny"])
def test_policy_config_from_every_config(arg):
    c = get_config(arg)
    cfg = PolicyConfig.from_config(c)
    assert cfg.state_t == c.model.state_t and cfg.layout.num_conditional_frames == c.model.num_conditional_frames
    assert cfg.chunk_size == c.dataloader_train.dataset.chunk_size
    assert cfg.sampler_num_steps == c.model.sampler.num_steps and cfg.precision == c.model.precision
    assert cfg.sde.lognormal_prob == c.model.sde.lognormal_prob
    hash(cfg)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="precision"):
        PolicyConfig.from_config(get_config("libero"), precision="float16")
    with pytest.raises(ValueError, match="cannot both be on"):
        PolicyConfig.from_config(
            get_config("libero"),
            mask_loss_for_action_future_state_prediction=True,
            mask_value_prediction_loss_for_policy_prediction=True,
        )
