"""Wan2.1 VAE weight import/export: exact round trip, torch-free ``.pth`` import, strict validation."""

from __future__ import annotations

import builtins
import dataclasses
import sys

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from cosmos_policy_jax.convert.core import WeightImportError, load_state_dict
from cosmos_policy_jax.convert.vae import export_vae, import_vae, vae_rules, vae_state_dict
from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig, abstract_vae, param_shapes
from tests.fixture_utils import fixture_path, load_fixture


@pytest.fixture(scope="module")
def fixture_sd():
    sd, info = load_fixture("vae_state_dict.safetensors")
    return sd, WanVAEConfig.from_config({**info["config"], "dtype": "float32"})


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        WanVAEConfig(dim=8),
        WanVAEConfig(dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1),
        WanVAEConfig(dim=4, dim_mult=(1, 3, 2), num_res_blocks=3, temperal_downsample=(True, False)),
    ],
)
def test_rules_cover_every_parameter_once(cfg):
    rules = vae_rules(cfg)
    keys = [r.torch_key for r in rules]
    paths = [r.path for r in rules]
    assert len(set(keys)) == len(keys)
    assert len(set(paths)) == len(paths)
    assert set(paths) == set(param_shapes(cfg))


def test_round_trip_reproduces_state_dict_exactly(fixture_sd, tmp_path):
    sd, cfg = fixture_sd
    params, report = import_vae(sd, cfg)
    assert sorted(report.loaded) == sorted(sd) and not report.ignored
    out = vae_state_dict(params, cfg)
    assert sorted(out) == sorted(sd)
    for k, v in sd.items():
        assert out[k].shape == v.shape and out[k].dtype == v.dtype, k
        np.testing.assert_array_equal(out[k], v, err_msg=k)
    path = tmp_path / "vae.safetensors"
    written = export_vae(params, cfg, path)
    reread = load_state_dict(path)
    assert sorted(reread) == sorted(sd) and sorted(written) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(reread[k], v, err_msg=k)


def test_import_into_model_and_abstract_state(fixture_sd):
    sd, cfg = fixture_sd
    model = WanVAE(cfg, rngs=nnx.Rngs(0))
    loaded, _ = import_vae(fixture_path("vae_state_dict.safetensors"), model)  # into a live module
    nnx.update(model, loaded)
    got = nnx.state(model, nnx.Param).to_pure_dict()
    abstract_state = nnx.state(abstract_vae(cfg), nnx.Param)
    with pytest.raises(TypeError, match="cfg"):
        import_vae(sd, abstract_state)
    params, _ = import_vae(sd, abstract_state, cfg=cfg)
    flat_model, flat_params = _flat(got), _flat(params)
    assert flat_model.keys() == flat_params.keys()
    for k in flat_params:
        np.testing.assert_array_equal(np.asarray(flat_model[k]), flat_params[k], err_msg=str(k))
    # Torch conv weight [out, in, kt, kh, kw] lands as kernel (kt, kh, kw, in, out).
    w = sd["encoder.conv1.weight"]
    np.testing.assert_array_equal(flat_params[("encoder", "conv1", "kernel")], np.transpose(w, (2, 3, 4, 1, 0)))


def test_pth_imports_without_torch_and_equals_safetensors(fixture_sd, monkeypatch):
    sd, cfg = fixture_sd
    pth = fixture_path("vae_tokenizer.pth")
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    from_pth, _ = import_vae(pth, cfg)
    from_st, _ = import_vae(sd, cfg)
    a, b = _flat(from_pth), _flat(from_st)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    assert "torch" not in sys.modules


def test_strict_errors_list_every_bad_key(fixture_sd):
    sd, cfg = fixture_sd
    bad = dict(sd)
    del bad["decoder.head.2.bias"]
    del bad["encoder.middle.1.to_qkv.weight"]
    bad["encoder.extra.weight"] = np.zeros(3, np.float32)
    bad["conv2.weight"] = np.zeros((1, 2, 3), np.float32)  # wrong rank
    bad["encoder.head.0.gamma"] = sd["encoder.head.0.gamma"].reshape(-1)  # [C] instead of [C, 1, 1, 1]
    with pytest.raises(WeightImportError) as e:
        import_vae(bad, cfg)
    msg = str(e.value)
    for key in (
        "decoder.head.2.bias",
        "encoder.middle.1.to_qkv.weight",
        "encoder.extra.weight",
        "conv2.weight",
        "encoder.head.0.gamma",
    ):
        assert key in msg, key


def test_wrong_width_lists_mismatched_shapes(fixture_sd):
    sd, cfg = fixture_sd
    wider = dataclasses.replace(cfg, dim=2 * cfg.dim)
    with pytest.raises(WeightImportError, match="mismatched shapes") as e:
        import_vae(sd, wider)
    assert "encoder.conv1.weight" in str(e.value) and "decoder.head.2.weight" in str(e.value)
    # One residual block more per level: the extra blocks' keys are missing.
    deeper = dataclasses.replace(cfg, num_res_blocks=cfg.num_res_blocks + 1)
    with pytest.raises(WeightImportError, match="missing keys"):
        import_vae(sd, deeper)


def test_non_float_tensor_is_rejected(fixture_sd):
    sd, cfg = fixture_sd
    bad = dict(sd)
    bad["conv1.bias"] = sd["conv1.bias"].astype(np.int32)
    with pytest.raises(WeightImportError, match=r"conv1\.bias"):
        import_vae(bad, cfg)


def test_bf16_checkpoint_imports_and_bf16_export(fixture_sd, tmp_path):
    sd, cfg = fixture_sd
    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    params, _ = import_vae(bf, cfg)
    flat = _flat(params)
    assert all(v.dtype == np.float32 for v in flat.values())
    out = export_vae(params, cfg, tmp_path / "vae_bf16.safetensors", dtype="bfloat16")
    for k, v in bf.items():
        assert out[k].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(out[k].view(np.uint16), v.view(np.uint16), err_msg=k)


def test_export_rejects_unknown_suffix(fixture_sd, tmp_path):
    sd, cfg = fixture_sd
    params, _ = import_vae(sd, cfg)
    with pytest.raises(ValueError, match=r"vae\.bin"):
        export_vae(params, cfg, tmp_path / "vae.bin")
