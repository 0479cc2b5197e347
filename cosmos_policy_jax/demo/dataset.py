"""The ``demo`` dataset behind a config: where it lives, generating it once (atomically), reading it.

``dataset.data_dir`` names ``<root>/success_only``; ``ensure_demo_dataset`` generates the dataset
there on first use (``generate.generate_demo_dataset`` in a temporary sibling directory renamed into
place, so concurrent or interrupted first uses never expose a partial dataset) and refuses one made
with other parameters. ``demo_source`` is the source registry's factory for ``dataset.kind=demo``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Mapping
from typing import Any

from cosmos_policy_jax.common.files import atomic_dir
from cosmos_policy_jax.common.paths import expand_required
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.demo import sim as demo_sim
from cosmos_policy_jax.demo.generate import MANIFEST, generate_demo_dataset

__all__ = ["MANIFEST", "demo_dataset_config", "demo_root", "demo_source", "ensure_demo_dataset"]


def demo_source(dataset_cfg: Any, *, seed: int = 0, **overrides: Any) -> Any:
    """The demo dataset of ``dataset_cfg`` (paths expanded), generated on first use, read by the real
    ``LiberoSource``; with ``demo_format=lerobot`` the same episodes through ``LeRobotSource``."""
    root = ensure_demo_dataset(dataset_cfg)
    if dataset_cfg.get("demo_format", "hdf5") == "lerobot":
        from cosmos_policy_jax.data.lerobot import LeRobotSource
        from cosmos_policy_jax.demo.lerobot_copy import demo_lerobot_config

        return LeRobotSource.from_config(demo_lerobot_config(dataset_cfg, root), seed=seed, **overrides)
    return LiberoSource.from_config(demo_dataset_config(dataset_cfg, root), seed=seed, **overrides)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def demo_root(dataset_cfg: Any) -> str:
    """The dataset root implied by ``dataset.data_dir`` (``<root>/success_only``); checks the other paths."""
    raw = _get(dataset_cfg, "data_dir", "")
    if not raw:
        raise DataError("dataset.data_dir: required for the demo dataset (<root>/success_only)")
    data_dir = expand_required(raw, "dataset.data_dir", DataError)
    if os.path.basename(data_dir.rstrip("/")) != "success_only":
        raise DataError(f"dataset.data_dir: a demo dataset lives in <root>/success_only, got {raw!r}")
    root = os.path.dirname(data_dir.rstrip("/"))
    expected = {
        "rollout_data_dir": os.path.join(root, "all_episodes"),
        "t5_text_embeddings_path": os.path.join(root, "success_only", "t5_embeddings.pkl"),
    }
    for key, want in expected.items():
        value = _get(dataset_cfg, key, "")
        if value and expand_required(value, f"dataset.{key}", DataError) != want:
            raise DataError(f"dataset.{key}: the demo generator writes {want}, but the config says {value!r}")
    return root


def ensure_demo_dataset(dataset_cfg: Any, *, jpeg: bool = False) -> str:
    """Generate the demo dataset for ``dataset_cfg`` unless it already exists; returns its root.

    Safe under concurrency and interruption: generation happens in a temporary sibling directory
    that is renamed into place (atomic on POSIX); a process that loses the race discards its copy.
    An existing dataset generated with other parameters is an error (never silently reused).
    """
    root = demo_root(dataset_cfg)
    keys = {
        "num_episodes": "demo_num_episodes",
        "num_rollouts": "demo_num_rollouts",
        "seed": "demo_seed",
        "image_size": "final_image_size",
        "action_dim": "action_dim",
        "proprio_dim": "proprio_dim",
        "text_len": "text_len",
        "text_dim": "text_dim",
    }
    params: dict[str, Any] = {}
    for name, key in keys.items():
        value = _get(dataset_cfg, key)
        if value is None:
            raise DataError(f"dataset.{key}: required to generate the demo dataset")
        params[name] = int(value)
    params["jpeg"] = bool(jpeg)
    layout = str(_get(dataset_cfg, "demo_object_layout", None) or "random")
    sim_config = demo_sim.DemoReachConfig(image_size=params["image_size"], object_layout=layout)
    if not os.path.exists(root):
        parent = os.path.dirname(root)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:  # a path component that is a file, no permission
            raise DataError(
                f"dataset.data_dir: cannot create the demo dataset under {parent} ({e.strerror or e})"
            ) from e
        _remove_abandoned_temporaries(parent, os.path.basename(root))
        # The owner's host and pid in the name: a later start can tell an abandoned copy from a live one.
        prefix = f".{os.path.basename(root)}.tmp-{socket.gethostname()}-{os.getpid()}-"
        # Another process may finish first: its copy is kept and checked below.
        with atomic_dir(root, prefix=prefix) as tmp:
            generate_demo_dataset(tmp, **params, sim_config=sim_config)
            _prepare_statistics(tmp, dataset_cfg)
    _check_manifest(root, {**params, "object_layout": layout})
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_abandoned_temporaries(parent: str, name: str) -> None:
    """Delete the hidden temporary copies of ``name`` that a killed generation left in ``parent``.

    Only copies made on this host by a process that no longer exists are removed; a generation still
    running (here or on another host sharing the file system) keeps its directory.
    """
    pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
    host = socket.gethostname()
    for entry in os.listdir(parent):
        found = pattern.match(entry)
        if found and found["host"] == host and not _pid_alive(int(found["pid"])):
            logging.warning("removing %s, left by an interrupted demo-data generation", os.path.join(parent, entry))
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _prepare_statistics(root: str, dataset_cfg: Any) -> None:
    """Open the fresh dataset with the LIBERO reader once, inside the temporary directory.

    This validates it and writes the normalisation statistics files before the dataset becomes
    visible, so concurrent readers never race to create them.
    """
    source = LiberoSource.from_config(demo_dataset_config(dataset_cfg, root))
    source.close()


def _as_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):  # ml_collections ConfigDict / FrozenConfigDict
        return dict(cfg.to_dict())
    return dict(cfg)


def demo_dataset_config(dataset_cfg: Any, root: str) -> dict[str, Any]:
    """A copy of ``dataset_cfg`` (plain dict) whose paths point at the demo dataset under ``root``."""
    out = _as_dict(dataset_cfg)
    out.update(
        data_dir=os.path.join(root, "success_only"),
        rollout_data_dir=os.path.join(root, "all_episodes"),
        t5_text_embeddings_path=os.path.join(root, "success_only", "t5_embeddings.pkl"),
    )
    return out


def _check_manifest(root: str, params: Mapping[str, Any]) -> None:
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise DataError(f"{root} exists but is not a finished demo dataset (no {MANIFEST}); delete it to regenerate")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable demo manifest ({e}); delete {root} to regenerate") from e
    have = dict(manifest.get("params", {}))
    have["object_layout"] = have.get("sim", {}).get("object_layout", "random")
    for key, want in params.items():
        if have.get(key) != want:
            raise DataError(
                f"{path}: demo dataset was generated with {key}={have.get(key)!r} but the config asks for {want!r}; "
                f"delete {root} or point dataset.data_dir elsewhere"
            )
