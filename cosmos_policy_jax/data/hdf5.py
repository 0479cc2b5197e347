"""HDF5 helpers shared by the file readers: finding files, opening them, reading checked datasets.

Every failure is a :class:`DataError` naming the file and the dataset.
"""

from __future__ import annotations

import io
import os
from typing import Any

import h5py
import numpy as np
from PIL import Image

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.data.errors import DataError

HDF5_EXTENSIONS = (".h5", ".hdf5", ".he5")


def require_dir(directory: str, what: str) -> None:
    """``DataError`` naming ``what`` unless ``directory`` is an existing directory."""
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"dataset directory {directory!r} is a file, not a directory ({what})")
    if not directory or not os.path.isdir(directory):
        raise DataError(f"dataset directory not found: {directory!r} ({what})")


def find_hdf5_files(directory: str, *, what: str = "data_dir", split: str | None = None) -> list[str]:
    """Every ``*.h5/.hdf5/.he5`` under ``directory`` (recursive, symlinks followed), sorted by path.

    ``split`` keeps only files with a path component equal to it (ALOHA's ``train`` / ``val``).
    """
    require_dir(directory, what)
    files = []
    for root, _dirs, names in os.walk(directory, followlinks=True):
        for name in names:
            if name.lower().endswith(HDF5_EXTENSIONS):
                path = os.path.join(root, name)
                if split is not None:
                    parts = os.path.normpath(os.path.relpath(path, directory)).split(os.sep)
                    if split not in parts:
                        continue
                files.append(path)
    return sorted(files)


def open_h5(path: str) -> h5py.File:
    """``path`` opened read-only; an unreadable file is a ``DataError`` naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot open HDF5 file ({first_line(e)})") from e


def attr_str(value: Any) -> str:
    """An HDF5 string attribute (bytes, numpy bytes or a 0-d array) as ``str``."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attr_str(value.item())
    return str(value)


def read_array(f: h5py.File, key: str, path: str) -> np.ndarray:
    """The whole dataset ``key`` of ``f``; missing or unreadable is a ``DataError``."""
    if key not in f:
        raise DataError(f"{path}: missing required dataset {key!r}")
    try:
        return f[key][()]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot read dataset {key!r} ({first_line(e)})") from e


def read_numbers(f: h5py.File, key: str, path: str) -> np.ndarray:
    """A numeric dataset (actions, proprio): strings or other types and NaN/inf values are refused,
    naming the file, the dataset and the first bad index (a NaN action would only surface later as a
    diverging loss that names nothing)."""
    arr = read_array(f, key, path)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: dataset {key!r} holds {arr.dtype} values, expected numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise DataError(f"{path}: dataset {key!r} has a non-finite value ({arr[first]}) at index {first}")
    return arr


def decode_jpeg(data: np.ndarray, where: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 from one stored JPEG byte string; ``where`` names it in errors."""
    try:
        img = Image.open(io.BytesIO(np.asarray(data).tobytes()))
        img.load()
    except Exception as e:
        raise DataError(f"{where}: not a decodable JPEG ({first_line(e)})") from e
    if img.mode != "RGB":
        raise DataError(f"{where}: JPEG frame has mode {img.mode}, expected RGB")
    return np.asarray(img, dtype=np.uint8)


def camera_dataset(
    f: h5py.File, path: str, label: str, role: str, raw_key: str, jpeg_key: str, prefer_jpeg: bool | None
) -> tuple[str, bool]:
    """Dataset of one camera, ``(key, is_jpeg)``: raw ``(T,H,W,3)`` uint8 or variable-length JPEG bytes."""
    order = [(jpeg_key, True), (raw_key, False)] if prefer_jpeg else [(raw_key, False), (jpeg_key, True)]
    for key, jpeg in order:
        if key in f:
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                break
            if not jpeg and (ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8):
                raise DataError(
                    f"{path}: {key} has shape {ds.shape} and dtype {ds.dtype}, expected (T, H, W, 3) uint8 images"
                )
            if jpeg and ds.ndim != 1:
                raise DataError(f"{path}: {key} has shape {ds.shape}, expected one JPEG byte string per frame")
            return key, jpeg
    raise DataError(f"{path}: {label} has no {role} camera dataset ({raw_key!r} or {jpeg_key!r})")
