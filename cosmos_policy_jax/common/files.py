"""Atomic file writes: the data goes to a temporary file in the target's directory, is flushed to
disk, then renamed over the target (``os.replace`` is atomic on POSIX within one file system).

A crash or an exception mid-write leaves the previous file untouched and no partial file under the
target's name; the temporary file is removed on an exception (a killed process may leave a hidden
``.<name>.<pid>.<random>.tmp`` behind, never a half-written target).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any


def _fsync_path(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path to write (with any writer: h5py, safetensors, torch.save); renamed to ``path``
    when the block ends without an exception. The parent directory is created if needed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Hidden and unique: concurrent writers never share a temporary file, and globs over the
    # directory (e.g. ``*.hdf5``) never see one.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _fsync_path(tmp)  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    # The rename itself survives a power loss only once the directory is synced; not every file
    # system allows syncing a directory, and the file is complete either way.
    with contextlib.suppress(OSError):
        _fsync_path(directory, directory=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """``json.dump`` to ``path`` atomically; an object that does not serialise leaves ``path`` as it was."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=default)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, prefix: str | None = None) -> Iterator[str]:
    """A fresh temporary directory next to ``path`` to fill; renamed to ``path`` when the block ends
    without an exception, and removed in every case.

    Several processes may build the same directory at once: the first rename wins, the others keep
    the winner's copy and drop their own (the caller checks the result if copies can differ)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=prefix or f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
