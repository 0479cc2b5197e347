"""Condition masks of the policy conditioning."""

import jax.numpy as jnp
import numpy as np

from configs.cosmos_policy import get_config
from cosmos_policy_jax.policy import conditioning
from cosmos_policy_jax.policy.layout import LatentLayout


def test_condition_mask_rows_for_libero():
    # demo [1,1,1,1,0,0,0,0,0], world model [..,1 on action,..], value function all but value.
    lay = LatentLayout.from_config(get_config("libero"))
    batch = dict(
        rollout_data_mask=np.array([0, 1, 1]),
        world_model_sample_mask=np.array([0, 1, 0]),
        value_function_sample_mask=np.array([0, 0, 1]),
    )
    m = np.asarray(conditioning.condition_mask(batch, lay))
    np.testing.assert_array_equal(
        m, [[1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]]
    )
    full = conditioning.condition_mask(batch, lay, latent_hw=(3, 2), dtype=jnp.bfloat16)
    assert full.shape == (3, 1, 9, 3, 2) and full.dtype == jnp.bfloat16
    # Without rollout masks (inference-style batches) only the conditional frames are inputs.
    np.testing.assert_array_equal(
        np.asarray(conditioning.condition_mask({}, lay, batch_size=1)), [[1, 1, 1, 1, 0, 0, 0, 0, 0]]
    )
