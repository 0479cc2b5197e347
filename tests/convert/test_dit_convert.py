"""DiT weight import/export against the fixture state dicts (sizes from each file's ``info``).

Round trip: every learned tensor comes back bit-identical. The non-learned buffers are regenerated
on export: the RoPE buffers ``pos_embedder.{seq,dim_spatial_range,dim_temporal_range}`` from the
config (compared exactly too) and the ``accum_*`` training counters as zeros (same keys, shapes
and dtypes; values are reset, which the reference only uses for logging).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from flax import nnx

from cosmos_policy_jax.convert.core import WeightImportError
from cosmos_policy_jax.convert.dit import (
    dit_rules,
    dit_state_dict,
    export_dit,
    import_dit,
    is_ignored_dit_key,
    load_nnx_params,
    save_nnx_params,
)
from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
from tests.fixture_utils import fixture_path, load_fixture


def _cfg(info: dict, **kw) -> DiTConfig:
    return DiTConfig.from_config(info.get("config") or info["net"], dtype="float32", **kw)


def _flat(nested: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


@pytest.fixture(scope="module")
def fixture_sd():
    return load_fixture("dit_state_dict.safetensors")


def test_rules_cover_every_parameter_once(fixture_sd):
    sd, info = fixture_sd
    cfg = _cfg(info)
    abstract = nnx.state(nnx.eval_shape(lambda: MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    paths = set(_flat(abstract.to_pure_dict()))
    rules = dit_rules(cfg)
    targets = [(r.path, r.layer) for r in rules]
    assert len(targets) == len(set(targets)), "two rules fill the same slice"
    assert {r.path for r in rules} == paths
    for path in paths:
        layers = {r.layer for r in rules if r.path == path}
        assert layers in ({None}, set(range(cfg.num_blocks))), path
    assert all(not r.torch_key.startswith("net.") for r in rules)
    learned = {k for k in sd if not is_ignored_dit_key(k)}
    assert {r.torch_key for r in rules} == learned


def test_ignored_keys():
    for k in (
        "accum_iteration",
        "accum_train_in_hours",
        "pos_embedder.seq",
        "pos_embedder.dim_spatial_range",
        "x._extra_state",
    ):
        assert is_ignored_dit_key(k)
    for k in ("blocks.0.mlp.layer1.weight", "t_embedding_norm.weight", "extra_pos_embedder.pos_emb_h"):
        assert not is_ignored_dit_key(k)


def test_import_export_round_trip_is_exact(fixture_sd, tmp_path):
    sd, info = fixture_sd
    cfg = _cfg(info)
    params, report = import_dit(fixture_path("dit_state_dict.safetensors"), cfg)
    assert sorted(report.ignored) == sorted(k for k in sd if is_ignored_dit_key(k))
    # kernels are transposed ([in, out]) and stacked along the layers axis
    k = params["blocks"]["mlp"]["layer1"]["kernel"]
    assert k.shape[0] == cfg.num_blocks
    np.testing.assert_array_equal(k[cfg.num_blocks - 1], sd[f"blocks.{cfg.num_blocks - 1}.mlp.layer1.weight"].T)
    path = tmp_path / "net.safetensors"
    written = export_dit(params, cfg, path)
    back, _ = load_fixture_file(path)
    assert set(back) == {"net." + key for key in sd}
    assert set(written) == set(back)
    for key, ref in sd.items():
        got = back["net." + key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        if key.startswith("accum_"):
            assert not np.any(got), key  # reset counters
        else:
            np.testing.assert_array_equal(got, ref, err_msg=key)


def load_fixture_file(path):
    from safetensors.numpy import load_file

    return load_file(str(path)), None


def test_pt_checkpoint_imports_without_torch_and_matches_safetensors():
    _, info = load_fixture("policy_net_state_dict.safetensors")
    cfg = _cfg(info)
    from_pt, report = import_dit(fixture_path("dit_checkpoint_net.pt"), cfg)
    assert "torch" not in sys.modules
    from_st, _ = import_dit(fixture_path("policy_net_state_dict.safetensors"), cfg)
    a, b = _flat(from_pt), _flat(from_st)
    assert a.keys() == b.keys() and len(report.loaded) == len(dit_rules(cfg))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def test_imported_params_drive_the_model(fixture_sd):
    _, info = fixture_sd
    cfg = _cfg(info)
    model = MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0))
    params, _ = import_dit(fixture_path("dit_state_dict.safetensors"), model)
    nnx.update(model, params)
    np.testing.assert_array_equal(np.asarray(model.x_embedder.kernel[...]), fixture_sd[0]["x_embedder.proj.1.weight"].T)


def test_prefixes_ema_and_wrapper_segments(fixture_sd):
    sd, info = fixture_sd
    cfg = _cfg(info)
    plain, _ = import_dit(sd, cfg)
    wrapped = {}
    for k, v in sd.items():
        kk = k.replace("blocks.0.", "blocks.0._checkpoint_wrapped_module.")
        wrapped["net." + kk] = v
        wrapped["net_ema." + kk] = v * 2 if v.dtype.kind == "f" else v
    wrapped["conditioner.text.weight"] = np.zeros(3, np.float32)  # other modules of a full checkpoint
    reg, _ = import_dit(wrapped, cfg)
    ema, _ = import_dit(wrapped, cfg, use_ema=True)
    for key, v in _flat(plain).items():
        np.testing.assert_array_equal(_flat(reg)[key], v)
        np.testing.assert_array_equal(_flat(ema)[key], 2 * v)
    with pytest.raises(WeightImportError, match="net_ema"):
        import_dit(sd, cfg, use_ema=True)


def test_strict_errors_list_keys(fixture_sd):
    sd, info = fixture_sd
    cfg = _cfg(info)
    n = cfg.num_blocks
    # a differently sized model: every mismatched key is named
    wider = _cfg(info, model_channels=cfg.model_channels * 2)
    with pytest.raises(WeightImportError) as e:
        import_dit(sd, wider)
    assert "mismatched shapes" in str(e.value) and "x_embedder.proj.1.weight" in str(e.value)
    assert f"blocks.{n - 1}.mlp.layer2.weight" in str(e.value)
    # more blocks than the checkpoint: missing keys; fewer: unexpected keys
    with pytest.raises(WeightImportError, match=rf"missing keys .*blocks\.{n}\.mlp\.layer1\.weight"):
        import_dit(sd, _cfg(info, num_blocks=n + 1))
    if n > 1:
        with pytest.raises(WeightImportError, match=rf"unexpected keys .*blocks\.{n - 1}\.mlp\.layer1\.weight"):
            import_dit(sd, _cfg(info, num_blocks=n - 1))
    # a stray key and a dropped key in one go
    bad = {k: v for k, v in sd.items() if k != "final_layer.linear.weight"}
    bad["blocks.0.self_attn.bias"] = np.zeros(3, np.float32)
    with pytest.raises(WeightImportError) as e:
        import_dit(bad, cfg)
    msg = str(e.value)
    assert "missing keys (1): final_layer.linear.weight" in msg and "blocks.0.self_attn.bias" in msg


def test_bf16_checkpoint_is_cast_to_param_dtype(fixture_sd):
    import ml_dtypes

    sd, info = fixture_sd
    cfg = _cfg(info)
    bf16 = {k: (v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v) for k, v in sd.items()}
    params, _ = import_dit(bf16, cfg)
    k = params["x_embedder"]["kernel"]
    assert k.dtype == np.float32
    np.testing.assert_array_equal(k, sd["x_embedder.proj.1.weight"].T.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_export_bf16_and_pt_without_torch(fixture_sd, tmp_path):
    sd, info = fixture_sd
    cfg = _cfg(info)
    params, _ = import_dit(sd, cfg)
    out = export_dit(params, cfg, tmp_path / "bf16.safetensors", dtype="bfloat16")
    assert out["net.blocks.0.mlp.layer1.weight"].dtype.name == "bfloat16"
    assert out["net.pos_embedder.seq"].dtype == np.float32  # buffers keep their dtype
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(RuntimeError, match="safetensors"):
            export_dit(params, cfg, tmp_path / "net.pt")
    with pytest.raises(ValueError, match="must end in"):
        export_dit(params, cfg, tmp_path / "net.bin")


def test_nnx_params_file_round_trip(fixture_sd, tmp_path):
    sd, info = fixture_sd
    cfg = _cfg(info)
    params, _ = import_dit(sd, cfg)
    path = tmp_path / "params.safetensors"
    save_nnx_params(params, path, {"model": "dit"})
    back, meta = load_nnx_params(path)
    assert meta["model"] == "dit"
    a, b = _flat(params), _flat(back)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # exporting from the loaded file gives the reference tensors again
    again = dit_state_dict(back, cfg, prefix="")
    np.testing.assert_array_equal(again["t_embedding_norm.weight"], sd["t_embedding_norm.weight"])
    with pytest.raises(WeightImportError, match="format"):
        load_nnx_params(fixture_path("dit_state_dict.safetensors"))
