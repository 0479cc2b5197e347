"""Evaluation weight loading: our orbax checkpoints (params / EMA only), exports, NNX parameter files, bad paths."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cosmos_policy import get_config
from cosmos_policy_jax.convert import dit as dit_convert
from cosmos_policy_jax.eval import loading
from cosmos_policy_jax.parallel.mesh import make_mesh
from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training.state import TrainState, model_defs


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    mesh = make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    defs = model_defs(config, mesh)
    # Distinct, recognisable values: leaf k is filled with k / 100 (plus a ramp so transposes would show).
    leaves, treedef = jax.tree.flatten(defs.dit_abstract_params)
    values = [
        np.full(a.shape, k / 100, np.float32) + np.arange(np.prod(a.shape), dtype=np.float32).reshape(a.shape) * 1e-4
        for k, a in enumerate(leaves)
    ]
    params = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in values])
    return config, defs, params


def _flat(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    la, lb = _flat(a), _flat(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def _save_train_state(directory, params, ema):
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
        rng=jnp.zeros((2,), jnp.uint32),
        loss_scale=jnp.ones(()),
        good_steps=jnp.zeros((), jnp.int32),
        nonfinite_steps=jnp.zeros((), jnp.int32),
        ema_params=ema,
    )
    ck = ckpt_lib.Checkpointer(os.path.join(directory, "checkpoints"), async_save=False)
    ck.save(7, state, b"{}", {"note": "test"})
    ck.close()


def test_orbax_job_dir_restores_params_only(tiny, tmp_path):
    _, defs, params = tiny
    _save_train_state(str(tmp_path), params, None)
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "7"):
        got = loading.load_dit_params(str(path), defs.dit_abstract_params)
        _assert_same(got.params, params)
        assert "(params)" in got.source
    with pytest.raises(loading.EvalInputError, match="no EMA"):
        loading.load_dit_params(str(tmp_path), defs.dit_abstract_params, use_ema=True)


def test_orbax_prefers_ema_when_present(tiny, tmp_path):
    _, defs, params = tiny
    ema = jax.tree.map(lambda x: x * 2 + 1, params)
    _save_train_state(str(tmp_path), params, ema)
    _assert_same(loading.load_dit_params(str(tmp_path), defs.dit_abstract_params).params, ema)
    _assert_same(loading.load_dit_params(str(tmp_path), defs.dit_abstract_params, use_ema=False).params, params)


def test_reference_export_and_nnx_params_files(tiny, tmp_path):
    _, defs, params = tiny
    export = tmp_path / "job" / "export" / "net.safetensors"
    export.parent.mkdir(parents=True)
    dit_convert.export_dit(params, defs.dit_cfg, str(export))
    _assert_same(loading.load_dit_params(str(export), defs.dit_abstract_params).params, params)
    # A job directory without checkpoints falls back to its export.
    _assert_same(loading.load_dit_params(str(tmp_path / "job"), defs.dit_abstract_params).params, params)
    own = tmp_path / "params.safetensors"
    dit_convert.save_nnx_params(params, str(own))
    got = loading.load_dit_params(str(own), defs.dit_abstract_params)
    _assert_same(got.params, params)
    assert isinstance(got.params, nnx.State)


def test_bad_checkpoints_give_one_line_errors(tiny, tmp_path):
    _, defs, _ = tiny
    with pytest.raises(loading.EvalInputError, match="checkpoint not found"):
        loading.load_dit_params(str(tmp_path / "nope"), defs.dit_abstract_params)
    with pytest.raises(loading.EvalInputError, match="neither an orbax checkpoint"):
        loading.load_dit_params(str(tmp_path), defs.dit_abstract_params)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(loading.EvalInputError, match=r"junk\.safetensors"):
        loading.load_dit_params(str(junk), defs.dit_abstract_params)
    # A DiT of another size: the converter names the mismatched keys.
    other = get_config("tiny")
    other.model.net.model_channels = 64
    other_defs = model_defs(
        other, make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    )
    small = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), other_defs.dit_abstract_params)
    path = tmp_path / "small.safetensors"
    dit_convert.export_dit(small, other_defs.dit_cfg, str(path))
    with pytest.raises(loading.EvalInputError, match=r"small\.safetensors"):
        loading.load_dit_params(str(path), defs.dit_abstract_params)
