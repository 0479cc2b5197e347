"""Plain-Python copies of nested values, for JSON and YAML files (configs, reports, manifests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_plain(value: Any) -> Any:
    """``value`` with mappings as ``dict`` (string keys), lists and tuples as ``list``, ConfigDicts as
    dicts (references resolved), numpy and jax scalars as Python numbers and arrays as nested lists.
    Anything else is returned as it is (a JSON writer then names what it cannot store)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if callable(getattr(value, "to_dict", None)):  # ml_collections ConfigDict / FrozenConfigDict
        return to_plain(value.to_dict())
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # jax arrays, without importing jax
        return np.asarray(value).tolist()
    return value
