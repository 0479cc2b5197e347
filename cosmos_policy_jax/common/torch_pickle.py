"""Read PyTorch checkpoints into numpy without PyTorch and without running pickled code.

Two serialisations are supported:

* the zip format of ``torch.save`` (``<name>/data.pkl`` + raw storages under ``<name>/data/``),
  used by ``model-480p-16fps.pt``, released Cosmos Policy checkpoints and ``tokenizer.pth``;
* plain pickles of tensors (the reference's T5 embedding pickle), whose tensors are
  ``torch.storage._load_from_bytes`` blobs in the legacy (pre-zip) ``torch.save`` format.

Unpickling goes through an allow-list: only the globals needed to rebuild tensors, storages and
ordered dicts are resolved, to local functions that build numpy arrays. Anything else (a pickle
asking for ``os.system``, ``builtins.eval``, a custom class...) raises ``UnsafeCheckpointError``.

Tensors are not built while unpickling: ``_rebuild_tensor_v2`` records a ``_TensorRef`` and, once
the whole object is read, each view is checked against its storage exactly (any stride sign, zero
strides, offset, element count) and charged to a per-file byte budget before a single byte is
copied. A view that reaches outside its storage, or a file that would materialise more than its
budget (``max_bytes``; default ``DEFAULT_BYTES_PER_FILE_BYTE`` x its size on disk plus
``DEFAULT_BYTES_SLACK``), raises ``CheckpointFormatError`` naming the file and the tensor.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
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


# A legitimate file materialises its storages once and each tensor about once more (tied weights
# and expanded views a little more): 4x its size is generous, yet a 700-byte file can no longer ask
# for terabytes. The slack keeps tiny test files and small headers out of the way.
DEFAULT_BYTES_PER_FILE_BYTE = 4
DEFAULT_BYTES_SLACK = 64 << 20


def view_extent(numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Number of elements of the view; ``ValueError`` unless every element lies in ``[0, numel)``.

    Exact for any stride sign and zero strides (Python integers: no overflow). The lowest element
    read is ``offset + sum((s-1)*st for st < 0)``, the highest ``offset + sum((s-1)*st for st > 0)``.
    """
    if len(size) != len(stride):
        raise ValueError(f"size {size} and stride {stride} differ in length")
    if any(s < 0 for s in size):
        raise ValueError(f"negative size {size}")
    if offset < 0 or numel < 0:
        raise ValueError(f"negative storage offset {offset} or storage size {numel}")
    count = math.prod(size)
    if count == 0:
        if offset > numel:
            raise ValueError(f"offset {offset} past the end of a storage of {numel} elements")
        return 0
    lo = offset + sum((s - 1) * st for s, st in zip(size, stride) if st < 0)
    hi = offset + sum((s - 1) * st for s, st in zip(size, stride) if st > 0)
    if lo < 0 or hi >= numel:
        raise ValueError(
            f"view (offset {offset}, size {size}, stride {stride}) reaches elements {lo}..{hi} "
            f"of a storage of {numel} elements"
        )
    return count


@dataclass
class _Budget:
    """Bytes a file may still materialise (storages read plus tensors built)."""

    path: str
    limit: int
    used: int = field(default=0)

    def charge(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise CheckpointFormatError(
                f"{self.path}: {what} would materialise {nbytes} bytes, over this file's limit of {self.limit} "
                f"bytes ({self.used} already used; pass max_bytes to raise it); refusing to load it"
            )
        self.used += nbytes


def _budget_for(path: str, max_bytes: int | None) -> _Budget:
    if max_bytes is None:
        max_bytes = DEFAULT_BYTES_PER_FILE_BYTE * os.path.getsize(path) + DEFAULT_BYTES_SLACK
    return _Budget(path, int(max_bytes))


@dataclass(frozen=True)
class _TensorRef:
    """``_rebuild_tensor_v2``'s arguments, kept until the view has been checked."""

    storage: Any  # 1-D numpy array or _LazyStorage
    offset: Any
    size: Any
    stride: Any


def _ints(values, what: str) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    if not isinstance(values, tuple | list) or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{what} {values!r} is not a tuple of integers")
    return tuple(int(v) for v in values)


def _build_view(ref: _TensorRef, flat: np.ndarray, budget: _Budget, name: str) -> np.ndarray:
    """The checked, contiguous copy of one tensor view."""
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise CheckpointFormatError(f"{budget.path}: tensor {name}: its storage is not a flat array")
    try:
        size, stride = _ints(ref.size, "size"), _ints(ref.stride, "stride")
        (offset,) = _ints(ref.offset, "storage offset")
        count = view_extent(flat.size, offset, size, stride) if size else view_extent(flat.size, offset, (1,), (1,))
    except ValueError as e:
        raise CheckpointFormatError(f"{budget.path}: tensor {name}: {e}; refusing to read outside its storage") from e
    budget.charge(count * flat.dtype.itemsize, f"tensor {name} of size {size}")
    if not size:
        return flat[offset].copy()
    if count == 0:
        return np.empty(size, dtype=flat.dtype)
    # Strides of length-1 dimensions are never applied; zero them so huge values cannot overflow.
    byte_strides = tuple(0 if s == 1 else st * flat.dtype.itemsize for s, st in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=byte_strides, writeable=False)
    return np.ascontiguousarray(view)


def _materialise(obj, budget: _Budget, storages: dict | None = None, name: str = "") -> Any:
    """Replace every ``_TensorRef`` (and lazy storage) in ``obj`` by its checked array."""
    if isinstance(obj, _LazyStorage):
        return _lazy_lookup(obj, storages, budget)
    if isinstance(obj, _TensorRef):
        flat = obj.storage
        if isinstance(flat, _LazyStorage):
            flat = _lazy_lookup(flat, storages, budget)
        return _build_view(obj, flat, budget, name or "<root>")
    if isinstance(obj, dict):
        return type(obj)(
            (k, _materialise(v, budget, storages, f"{name}.{k}" if name else str(k))) for k, v in obj.items()
        )
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, budget, storages, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _lazy_lookup(lazy, storages: dict | None, budget: _Budget) -> np.ndarray:
    if storages is None or lazy.key not in storages:
        raise CheckpointFormatError(f"{budget.path}: storage {lazy.key} is referenced but not stored")
    return storages[lazy.key]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only an allow-list of globals; storages come from ``load_storage``."""

    _ALLOWED: ClassVar[dict] = {
        ("torch._utils", "_rebuild_tensor_v2"): lambda *a: _rebuild_tensor_v2(*a),
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
    storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointFormatError(f"storage {key} has an invalid element count {numel!r}")
    if isinstance(storage_type, _StorageType):
        return storage_type, key, numel
    raise CheckpointFormatError(f"unexpected storage type {storage_type!r}")


def _load_zip(path: str, budget: _Budget) -> Any:
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
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise CheckpointFormatError(f"{path}: storage {key} missing from the archive")
                dt = stype.dtype.newbyteorder("<" if byteorder == "little" else ">")
                if zf.getinfo(member).file_size < numel * dt.itemsize:
                    raise CheckpointFormatError(f"{path}: storage {key} is truncated")
                budget.charge(numel * dt.itemsize, f"storage {key}")  # before reading: no zip bomb
                with zf.open(member) as f:
                    raw = f.read(numel * dt.itemsize)
                if len(raw) < numel * dt.itemsize:
                    raise CheckpointFormatError(f"{path}: storage {key} is truncated")
                cache[key] = np.frombuffer(raw, dtype=dt, count=numel).astype(stype.dtype, copy=False)
            return cache[key]

        budget.charge(zf.getinfo(pkl[0]).file_size, "data.pkl")
        with zf.open(pkl[0]) as f:
            return _materialise(_RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load(), budget)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_legacy_bytes(data: bytes, budget: _Budget | None = None) -> Any:
    """Decode a legacy (non-zip) ``torch.save`` stream, as stored by ``torch.storage._load_from_bytes``."""
    budget = budget or _Budget("<legacy torch stream>", DEFAULT_BYTES_PER_FILE_BYTE * len(data) + DEFAULT_BYTES_SLACK)
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
    pending: dict[str, _StorageType] = {}

    def load_storage(pid):
        stype, key, _numel = _storage_from_pid(pid)
        pending.setdefault(key, stype)
        return _LazyStorage(key)

    result = _RestrictedUnpickler(f, load_storage).load()
    keys = plain(f)
    if not isinstance(keys, list | tuple):
        raise CheckpointFormatError("legacy torch stream without a list of storage keys")
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        if str(key) not in pending:
            raise CheckpointFormatError(f"legacy torch stream stores an unreferenced storage {key!r}")
        dt = pending[str(key)].dtype.newbyteorder("<" if little else ">")
        (count,) = struct.unpack("<q" if little else ">q", f.read(8))
        raw = f.read(count * dt.itemsize) if count >= 0 else b""
        if count < 0 or len(raw) != count * dt.itemsize:
            raise CheckpointFormatError("legacy torch stream is truncated")
        storages[str(key)] = np.frombuffer(raw, dtype=dt).astype(pending[str(key)].dtype, copy=False)
    return _materialise(result, budget, storages)


def _no_storage(pid):
    raise CheckpointFormatError(f"unexpected persistent id {pid!r} in a legacy header")


@dataclass(frozen=True)
class _LazyStorage:
    key: str


def _load_plain_pickle(path: str, budget: _Budget) -> Any:
    # Tensors of a plain pickle are `_rebuild_tensor_v2(_load_from_bytes(<legacy stream>), ...)`.
    def load_from_bytes(data: bytes) -> np.ndarray:
        storage = load_legacy_bytes(data, budget)
        if not isinstance(storage, np.ndarray):
            raise CheckpointFormatError("embedded storage did not decode to an array")
        return storage.ravel()

    extra = {("torch.storage", "_load_from_bytes"): load_from_bytes}
    with open(path, "rb") as f:
        return _materialise(_RestrictedUnpickler(f, _no_storage, extra).load(), budget)


def load_torch_file(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """Load a ``torch.save`` file (zip or plain pickle of tensors) with numpy arrays as tensors.

    ``max_bytes`` caps what the file may materialise (storages plus tensors); the default is
    ``DEFAULT_BYTES_PER_FILE_BYTE`` times its size on disk plus ``DEFAULT_BYTES_SLACK``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointFormatError(f"{path}: is a directory, not a checkpoint file")
    budget = _budget_for(path, max_bytes)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, budget)
        return _load_plain_pickle(path, budget)
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, struct.error, ValueError) as e:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
