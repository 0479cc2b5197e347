"""Weight loading (training/weights.py): every source kind (job dir, orbax root and step dir, export,
NNX parameter file, reference ``.pt``), the one EMA rule in its three modes, one-line errors naming the path."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cosmos_policy import get_config
from cosmos_policy_jax.convert import dit as dit_convert
from cosmos_policy_jax.convert import vae as vae_convert
from cosmos_policy_jax.parallel.mesh import make_mesh
from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training import weights
from cosmos_policy_jax.training.assets import EXPORT_MANIFEST
from cosmos_policy_jax.training.state import TrainState, model_defs
from cosmos_policy_jax.training.weights import WeightImportError
from tests.common.test_torch_pickle import _ordered_dict, _pickle, _tensor, _write_zip


def _mesh():
    return make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    defs = model_defs(config, _mesh())
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


def _ema_of(params):
    return jax.tree.map(lambda x: x * 2 + 1, params)


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


def _write_pt(path, state_dict: dict) -> None:
    """A PyTorch zip checkpoint (one float32 storage per tensor), built without torch."""
    items, storages = [], {}
    for i, (key, value) in enumerate(state_dict.items()):
        v = np.ascontiguousarray(value, np.float32)
        strides = tuple(s // 4 for s in v.strides)
        items.append((key, _tensor(str(i), v.size, 0, v.shape, strides)))
        storages[str(i)] = v.tobytes()
    _write_zip(path, _pickle(_ordered_dict(items)), storages)


def _one_line_naming(error, path) -> None:
    text = str(error.value)
    assert "\n" not in text and str(path) in text, text


def test_orbax_job_dir_root_and_step_dir_restore_params_only(tiny, tmp_path):
    _, defs, params = tiny
    _save_train_state(str(tmp_path), params, None)
    step = tmp_path / "checkpoints" / "7"
    for path in (tmp_path, tmp_path / "checkpoints", step):
        got = weights.load_dit(str(path), defs.dit_abstract_params)
        _assert_same(got.params, params)
        assert "(params;" in got.source and str(step) in got.source
    _assert_same(weights.load_dit(str(tmp_path), defs.dit_abstract_params, use_ema=False).params, params)
    with pytest.raises(WeightImportError, match="EMA weights were asked for") as e:
        weights.load_dit(str(tmp_path), defs.dit_abstract_params, use_ema=True)
    _one_line_naming(e, step)


def test_orbax_ema_rule(tiny, tmp_path):
    _, defs, params = tiny
    ema = _ema_of(params)
    _save_train_state(str(tmp_path), params, ema)
    _assert_same(weights.load_dit(str(tmp_path), defs.dit_abstract_params).params, ema)
    _assert_same(weights.load_dit(str(tmp_path), defs.dit_abstract_params, use_ema=True).params, ema)
    _assert_same(weights.load_dit(str(tmp_path), defs.dit_abstract_params, use_ema=False).params, params)


def test_reference_pt_ema_rule(tiny, tmp_path):
    _, defs, params = tiny
    raw = dit_convert.dit_state_dict(params, defs.dit_cfg, buffers=False)
    both = tmp_path / "both.pt"
    _write_pt(both, {**raw, **dit_convert.dit_state_dict(_ema_of(params), defs.dit_cfg, "net_ema.", buffers=False)})
    got = weights.load_dit(str(both), defs.dit_abstract_params)
    _assert_same(got.params, _ema_of(params))
    assert "net_ema" in got.source
    _assert_same(weights.load_dit(str(both), defs.dit_abstract_params, use_ema=True).params, _ema_of(params))
    _assert_same(weights.load_dit(str(both), defs.dit_abstract_params, use_ema=False).params, params)
    only_raw = tmp_path / "raw.pt"
    _write_pt(only_raw, raw)
    _assert_same(weights.load_dit(str(only_raw), defs.dit_abstract_params).params, params)
    _assert_same(weights.load_dit(str(only_raw), defs.dit_abstract_params, use_ema=False).params, params)
    with pytest.raises(WeightImportError, match="EMA weights were asked for") as e:
        weights.load_dit(str(only_raw), defs.dit_abstract_params, use_ema=True)
    _one_line_naming(e, only_raw)


def _export(params, cfg, job, ema_enabled: bool | None):
    """The trainer's export under ``job``, with a ``policy.json`` saying whether the run kept an EMA."""
    path = job / "export" / "net.safetensors"
    path.parent.mkdir(parents=True)
    dit_convert.export_dit(params, cfg, str(path))
    if ema_enabled is not None:
        manifest = {"config": {"model": {"ema": {"enabled": ema_enabled}}}, "dataset_statistics": None}
        (path.parent / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    return path


def test_export_ema_rule_and_job_dir_fallback(tiny, tmp_path):
    _, defs, params = tiny
    plain = _export(params, defs.dit_cfg, tmp_path / "plain", None)
    _assert_same(weights.load_dit(str(plain), defs.dit_abstract_params).params, params)
    # A job directory without checkpoints falls back to its export.
    _assert_same(weights.load_dit(str(tmp_path / "plain"), defs.dit_abstract_params).params, params)
    with pytest.raises(WeightImportError, match="EMA weights were asked for"):
        weights.load_dit(str(plain), defs.dit_abstract_params, use_ema=True)
    raw_run = _export(params, defs.dit_cfg, tmp_path / "raw_run", False)
    _assert_same(weights.load_dit(str(raw_run), defs.dit_abstract_params, use_ema=False).params, params)
    with pytest.raises(WeightImportError, match="EMA weights were asked for"):
        weights.load_dit(str(raw_run), defs.dit_abstract_params, use_ema=True)
    # The export of an EMA run holds the EMA weights (as net.*) and no raw ones.
    ema_run = _export(params, defs.dit_cfg, tmp_path / "ema_run", True)
    got = weights.load_dit(str(ema_run), defs.dit_abstract_params)
    _assert_same(got.params, params)
    assert "EMA weights" in got.source
    _assert_same(weights.load_dit(str(ema_run), defs.dit_abstract_params, use_ema=True).params, params)
    with pytest.raises(WeightImportError, match="holds only EMA weights") as e:
        weights.load_dit(str(ema_run), defs.dit_abstract_params, use_ema=False)
    _one_line_naming(e, ema_run)


def test_nnx_params_file(tiny, tmp_path):
    _, defs, params = tiny
    own = tmp_path / "params.safetensors"
    dit_convert.save_nnx_params(params, str(own))
    got = weights.load_dit(str(own), defs.dit_abstract_params)
    _assert_same(got.params, params)
    assert isinstance(got.params, nnx.State)
    _assert_same(weights.load_dit(str(own), defs.dit_abstract_params, use_ema=False).params, params)
    with pytest.raises(WeightImportError, match="EMA weights were asked for"):
        weights.load_dit(str(own), defs.dit_abstract_params, use_ema=True)


def _other_size():
    other = get_config("tiny")
    other.model.net.model_channels = 64
    return model_defs(other, _mesh())


def test_bad_sources_give_one_line_errors_naming_the_path(tiny, tmp_path):
    _, defs, _ = tiny
    with pytest.raises(WeightImportError, match="weights not found") as e:
        weights.load_dit(str(tmp_path / "nope"), defs.dit_abstract_params)
    _one_line_naming(e, tmp_path / "nope")
    with pytest.raises(WeightImportError, match="neither an orbax checkpoint") as e:
        weights.load_dit(str(tmp_path), defs.dit_abstract_params)
    _one_line_naming(e, tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightImportError) as e:
        weights.load_dit(str(junk), defs.dit_abstract_params)
    _one_line_naming(e, junk)
    # A DiT of another size, as an export, an NNX parameter file and an orbax checkpoint.
    other = _other_size()
    small = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), other.dit_abstract_params)
    path = tmp_path / "small.safetensors"
    dit_convert.export_dit(small, other.dit_cfg, str(path))
    with pytest.raises(WeightImportError, match="mismatched shapes") as e:
        weights.load_dit(str(path), defs.dit_abstract_params)
    _one_line_naming(e, path)
    own = tmp_path / "small_params.safetensors"
    dit_convert.save_nnx_params(small, str(own))
    with pytest.raises(WeightImportError, match="of another shape") as e:
        weights.load_dit(str(own), defs.dit_abstract_params)
    _one_line_naming(e, own)
    _save_train_state(str(tmp_path / "small_job"), small, None)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="written for another model") as e:
        weights.load_dit(str(tmp_path / "small_job"), defs.dit_abstract_params)
    _one_line_naming(e, tmp_path / "small_job" / "checkpoints" / "7")


def test_non_finite_weights_are_refused_naming_the_file(tiny, tmp_path):
    _, defs, params = tiny
    leaves, treedef = jax.tree.flatten(params)
    bad = jax.tree.unflatten(treedef, [leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan), *leaves[1:]])
    path = _export(bad, defs.dit_cfg, tmp_path / "job", None)
    with pytest.raises(WeightImportError, match=r"non-finite values \(NaN/inf\) in 1 array") as e:
        weights.load_dit(str(path), defs.dit_abstract_params)
    _one_line_naming(e, path)


def test_vae_file_round_trip_and_non_finite_refusal(tiny, tmp_path):
    _, defs, _ = tiny
    abstract = defs.vae_abstract_params
    leaves, treedef = jax.tree.flatten(abstract)
    values = [np.full(a.shape, 0.01 * (k + 1), np.float32) for k, a in enumerate(leaves)]
    params = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in values])
    path = tmp_path / "vae.safetensors"
    vae_convert.export_vae(params, defs.vae_cfg, str(path))
    got = weights.load_vae(str(path), abstract, defs.vae_cfg)
    _assert_same(got.params, params)
    assert str(path) in got.source
    values[0][...] = np.inf
    vae_convert.export_vae(jax.tree.unflatten(treedef, values), defs.vae_cfg, str(path))
    with pytest.raises(WeightImportError, match="non-finite") as e:
        weights.load_vae(str(path), abstract, defs.vae_cfg)
    _one_line_naming(e, path)


def test_ema_rule_of_the_training_config():
    c = get_config("tiny")
    c.checkpoint.load_ema_to_reg = True
    assert weights.ema_rule(c) is None
    c.checkpoint.load_ema_to_reg = False
    assert weights.ema_rule(c) is False


def _saved_config(path) -> dict | None:
    return weights.saved_metadata(weights.locate(str(path))).config


def test_saved_config_of_each_kind(tiny, tmp_path):
    _, defs, params = tiny
    _save_train_state(str(tmp_path / "job"), params, None)
    assert _saved_config(tmp_path / "job") == {"note": "test"}
    meta = weights.saved_metadata(weights.locate(str(tmp_path / "job" / "checkpoints")))
    assert meta.where == str(tmp_path / "job" / "checkpoints" / "7") and meta.base_dir == str(tmp_path / "job")
    export = _export(params, defs.dit_cfg, tmp_path / "exported", True)
    assert _saved_config(export) == {"model": {"ema": {"enabled": True}}}
    pt = tmp_path / "raw.pt"
    _write_pt(pt, dit_convert.dit_state_dict(params, defs.dit_cfg, buffers=False))
    assert _saved_config(pt) is None
    assert weights.locate(str(pt)).kind == "state_dict"
