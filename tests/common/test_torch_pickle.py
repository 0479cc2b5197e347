"""The restricted ``.pt`` reader: real checkpoints load without torch; malicious or broken files are refused.

Pickles are assembled here opcode by opcode (no torch, no foreign classes), so what is tested is
exactly what the file says.
"""

from __future__ import annotations

import re
import struct
import sys
import zipfile

import numpy as np
import pytest

from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_file
from cosmos_policy_jax.convert.core import WeightImportError, load_state_dict
from tests.fixture_utils import fixture_path, load_fixture

# --- a minimal pickle assembler (protocol 2 opcodes) ---------------------------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<storage pid>, offset, size, stride, False, OrderedDict())``."""
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _ordered_dict(items: list[tuple[str, bytes]]) -> bytes:
    body = _global("collections", "OrderedDict") + b")R" + b"("
    for k, v in items:
        body += _str(k) + v
    return body + b"u"


def _write_zip(path, pkl: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)


# --- tests ----------------------------------------------------------------------------------------


def test_hand_built_checkpoint_with_strided_view(tmp_path):
    flat = np.arange(8, dtype=np.float32) * 1.5
    pkl = _pickle(
        _ordered_dict(
            [
                ("w", _tensor("0", 8, 1, (2, 3), (1, 2))),  # a transposed view starting at element 1
                ("b", _tensor("0", 8, 0, (4,), (1,))),  # second tensor sharing the storage
            ]
        )
    )
    path = tmp_path / "ok.pt"
    _write_zip(path, pkl, {"0": flat.tobytes()})
    sd = load_state_dict(path)
    expected_w = np.array([[flat[1 + i + 2 * j] for j in range(3)] for i in range(2)], np.float32)
    np.testing.assert_array_equal(sd["w"], expected_w)
    np.testing.assert_array_equal(sd["b"], flat[:4])


@pytest.mark.parametrize(
    "module,name,arg",
    [
        ("os", "system", "touch {marker}"),
        ("builtins", "eval", "open('{marker}', 'w')"),
        ("posix", "system", "touch {marker}"),
    ],
)
def test_pickle_referencing_a_callable_is_refused(tmp_path, module, name, arg):
    marker = tmp_path / "pwned"
    evil = _global(module, name) + _tuple(_str(arg.format(marker=marker))) + b"R"
    # the payload sits inside an otherwise normal state dict
    pkl = _pickle(_ordered_dict([("w", _tensor("0", 2, 0, (2,), (1,))), ("x", evil)]))
    path = tmp_path / "evil.pt"
    _write_zip(path, pkl, {"0": np.zeros(2, np.float32).tobytes()})
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"{module}.{name}")):
        load_torch_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_plain_pickle_referencing_eval_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_pickle(_global("builtins", "eval") + _tuple(_str(f"open('{marker}', 'w')")) + b"R"))
    with pytest.raises(UnsafeCheckpointError):
        load_torch_file(path)
    assert not marker.exists()


def test_real_torch_save_file_loads_without_torch():
    sd = load_state_dict(fixture_path("dit_checkpoint_net.pt"))
    ref, _ = load_fixture("policy_net_state_dict.safetensors")
    assert "torch" not in sys.modules
    assert set(sd) == {"net." + k for k in ref}
    for k, v in ref.items():
        assert sd["net." + k].dtype == v.dtype, k
        np.testing.assert_array_equal(sd["net." + k], v, err_msg=k)


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    data = fixture_path("dit_checkpoint_net.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises((CheckpointFormatError, WeightImportError), match=r"truncated\.pt"):
        load_state_dict(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises((CheckpointFormatError, WeightImportError), match=r"garbage\.pt"):
        load_state_dict(garbage)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightImportError, match=r"garbage\.safetensors"):
        load_state_dict(bad_st)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_state_dict(tmp_path / "missing.pt")


def test_zip_with_missing_storage_is_a_format_error(tmp_path):
    path = tmp_path / "nostorage.pt"
    _write_zip(path, _pickle(_ordered_dict([("w", _tensor("7", 4, 0, (4,), (1,)))])), {})
    with pytest.raises(CheckpointFormatError, match="storage 7"):
        load_torch_file(path)
