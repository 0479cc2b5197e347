"""Memory safety of the restricted ``.pt``/``.pkl`` reader: no view reads outside its storage, no file
materialises more than its budget.

A seeded fuzz over storage sizes, offsets, shapes and strides (any sign, zero, huge) checks the reader
against index arithmetic done here in Python: every accepted tensor equals ``storage[index]`` with every
index inside the storage, and every view with an index outside it is refused. The crafted files of
issue 19 are rebuilt as regression tests, in-process and through both CLIs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, load_torch_file, view_extent
from cosmos_policy_jax.data import t5
from tests.common.test_torch_pickle import _global, _int, _ordered_dict, _pickle, _str, _tuple, _write_zip

ROOT = Path(__file__).resolve().parents[2]
_HUGE = (1 << 40, -(1 << 40), 1 << 62, -(1 << 62))


def _long(i: int) -> bytes:
    """Pickle LONG1: any integer, so strides and sizes beyond 32 bits can be written."""
    data = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """``_rebuild_tensor_v2(<FloatStorage pid>, offset, size, stride, False, OrderedDict())`` with 64-bit ints."""
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _long(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(pid, _long(offset), _tuple(*map(_long, size)), _tuple(*map(_long, stride)), b"\x89", hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _indices(numel_offset: int, size: tuple, stride: tuple) -> list[int]:
    """Every storage index the view reads, in C order (the ground truth)."""
    return [numel_offset + sum(i * st for i, st in zip(idx, stride)) for idx in itertools.product(*map(range, size))]


def _random_view(rng: np.random.Generator) -> tuple[int, int, tuple, tuple]:
    numel = int(rng.integers(0, 40))
    offset = int(rng.integers(-3, 45))
    ndim = int(rng.integers(1, 4))
    size = tuple(int(rng.integers(0, 6)) for _ in range(ndim))
    stride = tuple(int(rng.integers(-12, 13)) for _ in range(ndim))
    if rng.random() < 0.1:  # a huge stride on a dimension of length > 1 must never overflow or read
        stride = tuple(int(rng.choice(_HUGE)) if rng.random() < 0.5 else st for st in stride)
    return numel, offset, size, stride


def test_view_extent_is_exact_over_a_seeded_fuzz():
    rng = np.random.default_rng(19)
    refused = accepted = 0
    for _ in range(5000):
        numel, offset, size, stride = _random_view(rng)
        idx = _indices(offset, size, stride)
        inside = offset >= 0 and all(0 <= i < numel for i in idx) and (idx or offset <= numel)
        try:
            count = view_extent(numel, offset, size, stride)
        except ValueError:
            refused += 1
            assert not inside, (numel, offset, size, stride)
            continue
        accepted += 1
        assert inside, (numel, offset, size, stride)
        assert count == len(idx)
    assert refused > 500 and accepted > 500  # the fuzz covers both sides


def test_loaded_tensors_never_leave_their_storage_fuzz(tmp_path):
    """Real zip checkpoints with random views: accepted ones equal storage[index], the rest are refused."""
    rng = np.random.default_rng(1919)
    refused = accepted = 0
    for case in range(150):
        numel, offset, size, stride = _random_view(rng)
        flat = (np.arange(numel, dtype=np.float32) + 1) * 3
        path = tmp_path / f"case{case}.pt"
        _write_zip(
            path, _pickle(_ordered_dict([("w", _tensor("0", numel, offset, size, stride))])), {"0": flat.tobytes()}
        )
        idx = _indices(offset, size, stride)
        try:
            out = load_torch_file(path)["w"]
        except CheckpointFormatError as e:
            refused += 1
            assert str(path) in str(e) and "tensor w" in str(e)
            assert offset < 0 or any(not 0 <= i < numel for i in idx) or (not idx and offset > numel)
            continue
        accepted += 1
        assert all(0 <= i < numel for i in idx)
        np.testing.assert_array_equal(out.ravel(), flat[idx] if idx else np.zeros(0, np.float32))
        assert out.shape == size
    assert refused > 20 and accepted > 20


def test_budget_caps_what_a_file_materialises(tmp_path):
    flat = np.ones(4, np.float32)
    path = tmp_path / "expand.pt"
    # a legal stride-0 view (every read inside the storage) of 1000x1000 floats: 4 MB from a 16-byte storage
    _write_zip(path, _pickle(_ordered_dict([("w", _tensor("0", 4, 0, (1000, 1000), (0, 0)))])), {"0": flat.tobytes()})
    assert load_torch_file(path)["w"].shape == (1000, 1000)  # under the default budget (slack)
    with pytest.raises(CheckpointFormatError, match=r"expand\.pt: tensor w .* over this file's limit"):
        load_torch_file(path, max_bytes=1 << 20)


# --- the crafted files of issue 19 --------------------------------------------------------------------


def _t5_pickle_negative_strides(path: Path) -> None:
    """A T5 ``.pkl`` whose tensor walks backwards from a 4-float storage (it used to leak 508 bytes)."""
    blob = t5._legacy_storage_bytes(np.arange(4, dtype=np.float32), "FloatStorage")
    ops = t5._op_global("torch._utils", "_rebuild_tensor_v2") + b"("
    ops += t5._op_global("torch.storage", "_load_from_bytes") + b"B" + len(blob).to_bytes(4, "little") + blob + b"\x85R"
    ops += _int(3) + b"(" + _int(1) + _int(16) + _int(8) + b"t" + b"(" + _int(128) + _int(-1) + _int(-1) + b"t"
    ops += b"\x89" + t5._op_global("collections", "OrderedDict") + b")R" + b"tR"
    path.write_bytes(b"\x80\x04}(" + t5._op_str("pick up the bowl") + ops + b"u.")


def _pt_negative_strides(path: Path) -> None:
    """A ``.pt`` building a 400 MB tensor out of a 16-byte storage with opposite strides."""
    pkl = _pickle(_ordered_dict([("net.w", _tensor("0", 4, 0, (10000, 10000), (1, -1)))]))
    _write_zip(path, pkl, {"0": np.zeros(4, np.float32).tobytes()})


def _pt_stride_zero_huge(path: Path) -> None:
    """A tiny ``.pt`` whose stride-0 tensor asks for 3.64 TiB."""
    pkl = _pickle(_ordered_dict([("net.w", _tensor("0", 4, 0, (1000000, 1000000), (0, 0)))]))
    _write_zip(path, pkl, {"0": np.zeros(4, np.float32).tobytes()})


CRAFTED = {
    "negative_strides.pkl": (_t5_pickle_negative_strides, r"tensor pick up the bowl: .*reaches elements -19"),
    "negative_strides.pt": (_pt_negative_strides, r"tensor net\.w: .*reaches elements -9999"),
    "stride_zero.pt": (_pt_stride_zero_huge, r"tensor net\.w of size \(1000000, 1000000\) would materialise"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_files_are_refused_naming_file_and_tensor(tmp_path, name):
    make, message = CRAFTED[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointFormatError, match=message) as info:
        load_torch_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return res, time.perf_counter() - start


def _assert_refused(res: subprocess.CompletedProcess, path: Path) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and path.name in errors[0], res.stderr[-2000:]


@pytest.mark.parametrize("name", ["negative_strides.pt", "stride_zero.pt"])
def test_convert_cli_refuses_crafted_checkpoints(tmp_path, name):
    path = tmp_path / name
    CRAFTED[name][0](path)
    out = tmp_path / "out"
    config = f"--config={ROOT / 'configs' / 'cosmos_policy.py'}:tiny"
    res, _ = _run(
        ["-m", "cosmos_policy_jax.convert", "import", "--model=dit", config, f"--input={path}", f"--output={out}/"]
    )
    _assert_refused(res, path)
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_t5_tool_refuses_crafted_files(tmp_path, name):
    src = tmp_path / name
    CRAFTED[name][0](src)
    dst = tmp_path / "out.safetensors"
    res, _ = _run(["-m", "cosmos_policy_jax.data.t5", "convert", str(src), str(dst)])
    _assert_refused(res, src)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no output, no temporary file left
