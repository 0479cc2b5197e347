"""Golden fixtures of the PyTorch reference (see tests/fixtures/README.md).

The directory comes from ``COSMOS_POLICY_FIXTURES`` (default ``tests/fixtures``). Parity tests
derive every size and layout from the ``info`` JSON stored in each safetensors file's metadata,
so they also run on fixture sets with other sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

_DEFAULT = pathlib.Path(__file__).parent / "fixtures"


def fixture_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("COSMOS_POLICY_FIXTURES", str(_DEFAULT)))


def fixture_path(name: str) -> pathlib.Path:
    path = fixture_dir() / name
    if not path.exists():
        pytest.skip(f"fixture {path} not present")
    return path


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, info) of ``<fixture_dir>/<name>``; info is the parsed ``info`` metadata (or {})."""
    from safetensors import safe_open

    path = fixture_path(name)
    tensors = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        for k in f.keys():  # noqa: SIM118 - safe_open is not iterable
            tensors[k] = f.get_tensor(k)
    info = json.loads(meta["info"]) if "info" in meta else {}
    return tensors, info


def snapshot(directory: pathlib.Path | str) -> dict[str, str]:
    """Relative path -> sha256 of every file (and "dir" for every directory) under ``directory``: compare
    two snapshots to show that a failed command wrote nothing."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out
