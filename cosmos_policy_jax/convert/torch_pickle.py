"""Read PyTorch checkpoints into numpy without PyTorch and without running pickled code.

Two serialisations are supported:

* the zip format of ``torch.save`` (``<name>/data.pkl`` + raw storages under ``<name>/data/``),
  used by ``model-480p-16fps.pt``, released Cosmos Policy checkpoints and ``tokenizer.pth``;
* plain pickles of tensors (the reference's T5 embedding pickle), whose tensors are
  ``torch.storage._load_from_bytes`` blobs in the legacy (pre-zip) ``torch.save`` format.

Unpickling goes through an allow-list: only the globals needed to rebuild tensors, storages and
ordered dicts are resolved, to local functions that build numpy arrays. Anything else (a pickle
asking for ``os.system``, ``builtins.eval``, a custom class...) raises ``UnsafeCheckpointError``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, ClassVar

import ml_dtypes
import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle references a callable outside the tensor allow-list."""


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch checkpoint."""


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.<Type>Storage`` globals: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    flat = storage  # 1-D numpy array of the storage's elements
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if not size:
        return flat[storage_offset].copy()
    itemsize = flat.dtype.itemsize
    needed = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > flat.size:
        raise CheckpointFormatError(f"tensor of size {size} overruns its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:], shape=size, strides=tuple(st * itemsize for st in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only an allow-list of globals; storages come from ``load_storage``."""

    _ALLOWED: ClassVar[dict] = {
        ("torch._utils", "_rebuild_tensor_v2"): lambda *a: _deferred_rebuild(*a),
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): _ordered_dict,
    }

    def __init__(self, file, load_storage, extra_globals: dict | None = None):
        super().__init__(file)
        self._load_storage = load_storage
        self._extra = extra_globals or {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._ALLOWED:
            return self._ALLOWED[key]
        if key in self._extra:
            return self._extra[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"checkpoint pickle references {module}.{name}, which is not a tensor type; refusing to load it"
        )

    def persistent_load(self, pid):
        return self._load_storage(pid)


def _storage_from_pid(pid) -> tuple[_StorageType, str, int]:
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise CheckpointFormatError(f"unexpected persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
    if isinstance(storage_type, _StorageType):
        return storage_type, key, numel
    raise CheckpointFormatError(f"unexpected storage type {storage_type!r}")


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointFormatError(f"{path}: zip archive without a single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode().strip()
        cache: dict[str, np.ndarray] = {}

        def load_storage(pid):
            stype, key, numel = _storage_from_pid(pid)
            if key not in cache:
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError as e:
                    raise CheckpointFormatError(f"{path}: storage {key} missing from the archive") from e
                dt = stype.dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) < numel * dt.itemsize:
                    raise CheckpointFormatError(f"{path}: storage {key} is truncated")
                cache[key] = np.frombuffer(raw, dtype=dt, count=numel).astype(stype.dtype, copy=False)
            return cache[key]

        with zf.open(pkl[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_legacy_bytes(data: bytes) -> Any:
    """Decode a legacy (non-zip) ``torch.save`` stream, as stored by ``torch.storage._load_from_bytes``."""
    f = io.BytesIO(data)

    def plain(obj_file):
        return _RestrictedUnpickler(obj_file, _no_storage).load()

    magic = plain(f)
    if magic != _LEGACY_MAGIC:
        raise CheckpointFormatError("legacy torch stream with a wrong magic number")
    protocol = plain(f)
    if protocol != 1001:
        raise CheckpointFormatError(f"legacy torch stream with unsupported protocol {protocol}")
    sys_info = plain(f)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    pending: dict[str, tuple[_StorageType, int]] = {}

    def load_storage(pid):
        stype, key, numel = _storage_from_pid(pid)
        pending.setdefault(key, (stype, numel))
        return _LazyStorage(key)

    result = _RestrictedUnpickler(f, load_storage).load()
    keys = plain(f)
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        stype, _ = pending[str(key)]
        (count,) = struct.unpack("<q" if little else ">q", f.read(8))
        dt = stype.dtype.newbyteorder("<" if little else ">")
        raw = f.read(count * dt.itemsize)
        if len(raw) != count * dt.itemsize:
            raise CheckpointFormatError("legacy torch stream is truncated")
        storages[str(key)] = np.frombuffer(raw, dtype=dt).astype(stype.dtype, copy=False)
    return _resolve_lazy(result, storages)


def _no_storage(pid):
    raise CheckpointFormatError(f"unexpected persistent id {pid!r} in a legacy header")


class _LazyStorage:
    def __init__(self, key: str):
        self.key = key


class _LazyTensor:
    def __init__(self, args):
        self.args = args


def _resolve_lazy(obj, storages):
    """Replace the placeholders of a legacy stream by arrays once its storages have been read."""
    if isinstance(obj, _LazyStorage):
        return storages[obj.key]
    if isinstance(obj, _LazyTensor):
        storage, *rest = obj.args
        return _rebuild_tensor_v2(storages[storage.key], *rest)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve_lazy(v, storages)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_resolve_lazy(v, storages) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve_lazy(v, storages) for v in obj)
    return obj


def _deferred_rebuild(storage, *args):
    if isinstance(storage, _LazyStorage):
        return _LazyTensor((storage, *args))
    return _rebuild_tensor_v2(storage, *args)


def _load_plain_pickle(path: str) -> Any:
    # Tensors of a plain pickle are `_rebuild_tensor_v2(_load_from_bytes(<legacy stream>), ...)`.
    extra = {("torch.storage", "_load_from_bytes"): _load_from_bytes}
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, _no_storage, extra).load()


def _load_from_bytes(data: bytes) -> np.ndarray:
    storage = load_legacy_bytes(data)
    if not isinstance(storage, np.ndarray):
        raise CheckpointFormatError("embedded storage did not decode to an array")
    return storage.ravel()


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip or plain pickle of tensors) with numpy arrays as tensors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_plain_pickle(path)
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, struct.error, ValueError) as e:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
