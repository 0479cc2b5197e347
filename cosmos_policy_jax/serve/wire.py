"""Wire formats: openpi's msgpack-numpy frames and json-numpy bodies (NVIDIA's deploy server), decoded safely.

msgpack-numpy (what ``openpi_client.msgpack_numpy`` writes): an array is the map
``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <numpy dtype str>, b"shape": [...]}``, a numpy
scalar ``{b"__npgeneric__": True, b"data": <value>, b"dtype": ...}``.

json-numpy: an array or numpy scalar is ``{"__numpy__": <base64 of the C-order bytes>, "dtype": <descr>,
"shape": [...]}``.

Decoding accepts only plain numeric/bool dtypes (never object, void or structured: an object array
built from foreign bytes would hold arbitrary pointers) and checks that the byte count matches the
shape; anything else raises ``WireError`` naming the problem.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import numpy as np

from cosmos_policy_jax.common.errors import first_line

_KINDS = "biuf"  # bool, signed, unsigned, float


class WireError(ValueError):
    """A request body that cannot be decoded."""


def _dtype(descr: Any) -> np.dtype:
    try:
        dt = np.dtype(descr.decode() if isinstance(descr, bytes) else descr)
    except (TypeError, ValueError) as e:
        raise WireError(f"unknown array dtype {descr!r}") from e
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None:
        raise WireError(f"array dtype {dt.str} is not allowed (numeric and bool only)")
    return dt


def _array(data: Any, descr: Any, shape: Any) -> np.ndarray:
    dt = _dtype(descr)
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WireError(f"bad array shape {shape!r}")
    if not isinstance(data, bytes | bytearray):
        raise WireError("array data must be bytes")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dt.itemsize != len(data):
        raise WireError(f"array of shape {tuple(shape)} {dt.str} needs {count * dt.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


# -- msgpack-numpy ----------------------------------------------------------------------------------


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}  # fmt: skip
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return _array(obj.get(b"data"), obj.get(b"dtype"), obj.get(b"shape"))
    if b"__npgeneric__" in obj:
        return _dtype(obj.get(b"dtype")).type(obj.get(b"data"))
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook, strict_map_key=False)
    except WireError:
        raise
    except Exception as e:  # msgpack's assorted errors for garbage bytes
        raise WireError(f"not a msgpack message ({type(e).__name__})") from e


# -- json-numpy --------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        arr = np.ascontiguousarray(obj)
        return {"__numpy__": base64.b64encode(arr.tobytes()).decode("ascii"), "dtype": arr.dtype.str,
                "shape": list(arr.shape)}  # fmt: skip
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _json_hook(obj: dict) -> Any:
    if "__numpy__" not in obj:
        return obj
    try:
        data = base64.b64decode(obj["__numpy__"], validate=True)
    except (TypeError, ValueError) as e:
        raise WireError("'__numpy__' is not base64") from e
    arr = _array(data, obj.get("dtype"), obj.get("shape"))
    return arr[()] if arr.ndim == 0 else arr


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, allow_nan=False, separators=(",", ":"))


def json_loads(text: str | bytes) -> Any:
    try:
        return json.loads(text, object_hook=_json_hook)
    except WireError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise WireError(f"not valid JSON ({first_line(e, 120)})") from e
