"""Action / proprio normalisation statistics.

``dataset_statistics.json`` in the demo directory holds, per dimension, the min, max, mean, population
std and median of all demo actions and proprio (computed with numpy on the float32 arrays) under the
keys ``{actions,proprio}_{min,max,mean,std,median}``. It is loaded when present, else computed and
written. In memory the statistics are always float64, so normalised values are float64:
``2 * (x - min) / (max - min) - 1``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from cosmos_policy_jax.common.files import atomic_write_json
from cosmos_policy_jax.data.errors import DataError

STATS_FILE = "dataset_statistics.json"
POST_NORM_STATS_FILE = "dataset_statistics_post_norm.json"
STAT_NAMES = ("min", "max", "mean", "std", "median")
STAT_KEYS = tuple(f"{group}_{name}" for group in ("actions", "proprio") for name in STAT_NAMES)

_log = logging.getLogger(__name__)


def compute_statistics(actions: Sequence[np.ndarray], proprio: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-dimension statistics over all timesteps of the given episodes (arrays of shape (T, D)).

    Computed in the arrays' own dtype (float32 for the reference's demos) and returned as float64.
    """
    if not actions or not proprio:
        raise DataError("cannot compute dataset statistics without any demonstration episode")
    out: dict[str, np.ndarray] = {}
    for group, arrays in (("actions", actions), ("proprio", proprio)):
        x = np.concatenate(list(arrays), axis=0)
        values = {
            "min": np.min(x, axis=0),
            "max": np.max(x, axis=0),
            "mean": np.mean(x, axis=0),
            "std": np.std(x, axis=0),
            "median": np.median(x, axis=0),
        }
        for name in STAT_NAMES:
            out[f"{group}_{name}"] = np.asarray(values[name]).astype(np.float64)
    return out


def save_statistics(stats: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write statistics as JSON lists (float64 values), atomically (temp file + rename)."""
    atomic_write_json(path, {k: np.asarray(v).tolist() for k, v in stats.items()}, indent=4)


def load_statistics(path: str | os.PathLike, action_dim: int | None = None, proprio_dim: int | None = None) -> dict:
    """Read a statistics JSON into float64 arrays; checks every key and dimension."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object with keys {', '.join(STAT_KEYS)}")
    missing = [k for k in STAT_KEYS if k not in raw]
    if missing:
        raise DataError(f"{path}: missing statistics key(s) {', '.join(missing)}")
    stats = {}
    for k, v in raw.items():
        try:
            stats[k] = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: statistics key {k!r} is not a list of numbers") from e
    for group, dim in (("actions", action_dim), ("proprio", proprio_dim)):
        for name in STAT_NAMES:
            arr = stats[f"{group}_{name}"]
            if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim):
                want = f"({dim},)" if dim is not None else "1-D"
                raise DataError(f"{path}: {group}_{name} has shape {arr.shape}, expected {want}")
    return stats


def load_or_compute_statistics(
    directory: str | os.PathLike,
    actions: Sequence[np.ndarray],
    proprio: Sequence[np.ndarray],
    filename: str = STATS_FILE,
) -> dict[str, np.ndarray]:
    """Load ``<directory>/<filename>`` if it exists, else compute from the episodes and save it there.

    A read-only directory only costs a warning: the statistics are still returned.
    """
    path = os.path.join(os.fspath(directory), filename)
    if os.path.exists(path):
        dims = [a.shape[-1] for a in actions[:1]], [p.shape[-1] for p in proprio[:1]]
        return load_statistics(path, dims[0][0] if dims[0] else None, dims[1][0] if dims[1] else None)
    if not actions:
        raise DataError(f"{path} does not exist and there are no demonstrations to compute it from")
    stats = compute_statistics(actions, proprio)
    try:
        save_statistics(stats, path)
        _log.info("dataset statistics written to %s", path)
    except OSError as e:
        _log.warning("could not write dataset statistics to %s (%s); using them from memory", path, e)
    return stats


def normalize(x: np.ndarray, stats: dict[str, np.ndarray], group: str) -> np.ndarray:
    """Rescale ``x`` to [-1, 1] with the group's min/max: ``2 * ((x - min) / (max - min)) - 1`` (float64)."""
    lo, hi = stats[f"{group}_min"], stats[f"{group}_max"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * ((x - lo) / (hi - lo)) - 1
