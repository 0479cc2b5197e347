"""``python -m cosmos_policy_jax.convert import|export`` end to end (subprocesses, fixture sizes via overrides)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cosmos_policy_jax.convert.dit import import_dit, load_nnx_params
from cosmos_policy_jax.models.dit import DiTConfig
from tests.fixture_utils import fixture_path, load_fixture

ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"--config={ROOT / 'configs' / 'cosmos_policy.py'}:tiny"


def _net_config(info: dict) -> dict:
    return info.get("net") or info["config"]  # policy_net_state_dict keeps it under "net"


def _net_overrides(info: dict) -> list[str]:
    """``--config.model.net.<k>=<v>`` for every size in the fixture's network config."""
    known = DiTConfig.__dataclass_fields__
    return [f"--config.model.net.{k}={v}" for k, v in _net_config(info).items() if k in known]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.convert", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _flat(nested: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def test_import_then_export_dit(tmp_path):
    ref, info = load_fixture("policy_net_state_dict.safetensors")
    overrides = _net_overrides(info)
    res = _cli(
        "import",
        "--model=dit",
        CONFIG,
        *overrides,
        f"--input={fixture_path('dit_checkpoint_net.pt')}",
        f"--output={tmp_path}/",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    params_file = tmp_path / "dit_params.safetensors"
    params, meta = load_nnx_params(params_file)
    assert meta["model"] == "dit"
    expected, _ = import_dit(
        fixture_path("policy_net_state_dict.safetensors"), DiTConfig.from_config(_net_config(info))
    )
    a, b = _flat(params), _flat(expected)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))

    out_dir = tmp_path / "export"
    res = _cli("export", "--model=dit", CONFIG, *overrides, f"--input={params_file}", f"--output={out_dir}/")
    assert res.returncode == 0, res.stderr[-2000:]
    exported = load_file(str(out_dir / "model.safetensors"))
    assert set(exported) == {"net." + k for k in ref}
    for k, v in ref.items():
        if not k.startswith("accum_"):
            np.testing.assert_array_equal(exported["net." + k], v, err_msg=k)
    assert (out_dir / "model.pt").exists() == (importlib.util.find_spec("torch") is not None)


def test_bad_inputs_exit_2_with_one_line_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    res = _cli("import", "--model=dit", CONFIG, f"--input={garbage}", f"--output={tmp_path}/")
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "garbage.pt" in err[0]
    # fixture weights into a model of other sizes: one line listing (some of) the mismatched keys
    res = _cli(
        "import",
        "--model=dit",
        CONFIG,
        "--config.model.net.num_blocks=1",
        f"--input={fixture_path('dit_checkpoint_net.pt')}",
        f"--output={tmp_path}/",
    )
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(err) == 1 and "unexpected keys" in err[0], res.stderr[-2000:]
    res = _cli("convert", CONFIG, "--input=x", "--output=y")
    assert res.returncode == 2 and "import or export" in res.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("cosmos_policy_jax.convert.vae") is None, reason="VAE converter not present"
)
def test_import_vae_dispatch(tmp_path):
    ref, info = load_fixture("vae_state_dict.safetensors")
    cfg = info.get("config", {})
    overrides = [f"--config.model.tokenizer.{k}={v}" for k, v in cfg.items() if k in ("dim", "z_dim", "num_res_blocks")]
    res = _cli(
        "import",
        "--model=vae",
        CONFIG,
        *overrides,
        f"--input={fixture_path('vae_tokenizer.pth')}",
        f"--output={tmp_path}/",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    params, meta = load_nnx_params(tmp_path / "vae_params.safetensors")
    assert meta["model"] == "vae"
    assert sum(v.size for v in _flat(params).values()) == sum(v.size for v in ref.values())


def test_bad_output_paths_exit_2_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    src = fixture_path("dit_checkpoint_net.pt")
    for output, expected in (
        (f"{blocker}/sub/", "is a file, not a directory"),
        (f"{blocker}/params.safetensors", "is a file, not a directory"),
        (str(tmp_path / "params.bin"), "must be a directory or a .safetensors file"),
    ):
        res = _cli("import", "--model=dit", CONFIG, f"--input={src}", f"--output={output}")
        err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert res.returncode == 2 and len(err) == 1 and expected in err[0], res.stderr[-2000:]
        assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
