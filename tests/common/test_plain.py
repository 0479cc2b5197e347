from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import yaml
from ml_collections import config_dict

from cosmos_policy_jax.common.plain import to_plain


def test_config_dict_with_references_tuples_and_placeholders():
    cfg = config_dict.ConfigDict()
    cfg.size = 4
    cfg.alias = cfg.get_ref("size")
    cfg.shape = (1, 2)
    cfg.maybe = config_dict.placeholder(int)
    cfg.sub = config_dict.ConfigDict({"names": ("a", "b")})
    out = to_plain(config_dict.FrozenConfigDict(cfg))
    assert out == {"size": 4, "alias": 4, "shape": [1, 2], "maybe": None, "sub": {"names": ["a", "b"]}}
    assert type(out) is dict and type(out["sub"]) is dict
    assert yaml.safe_load(yaml.safe_dump(out)) == out  # YAML-safe: no python/tuple tags


def test_numpy_and_jax_values_become_python():
    value = {
        1: np.float32(0.5),
        "flag": np.bool_(True),
        "arr": np.arange(3, dtype=np.int64),
        "jax": jnp.ones((2,), jnp.float32),
        "nested": [(np.int16(7),)],
    }
    out = to_plain(value)
    assert out == {"1": 0.5, "flag": True, "arr": [0, 1, 2], "jax": [1.0, 1.0], "nested": [[7]]}
    assert type(out["flag"]) is bool and type(out["nested"][0][0]) is int and type(out["jax"][0]) is float
    json.dumps(out)  # serialises without a default hook


def test_other_objects_pass_through():
    marker = object()
    assert to_plain({"x": marker})["x"] is marker
