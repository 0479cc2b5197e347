"""Compare a requested config with the one a job or checkpoint was made with.

``train`` uses it on a restart (the job's ``config.yaml`` against the command line: every change is
printed, shape- or data-changing ones stop the run unless ``trainer.allow_config_drift``); ``eval``
and the policy server use ``check_checkpoint_matches`` so that a checkpoint is never run with another
action size, chunk length, layout or image size than it was trained with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from cosmos_policy_jax.common.plain import to_plain
from cosmos_policy_jax.config_lib import ConfigError

ABSENT = "<absent>"

# Key prefixes whose change alters array shapes or the data a job trains on.
SHAPE_OR_DATA_KEYS = (
    "model.net.",
    "model.tokenizer.",
    "model.state_t",
    "model.state_ch",
    "model.num_conditional_frames",
    "model.latent_layout.",
    "dataloader_train.batch_size",
    "dataloader_train.global_batch_size",
    "dataloader_train.dataset.",
)
# ... except these execution choices (same arrays, same data).
EXECUTION_KEYS = (
    "model.net.dtype",
    "model.net.attention_impl",
    "model.net.remat_policy",
    "model.tokenizer.dtype",
    "model.tokenizer.conv_impl",
    "model.tokenizer.batch_steps",
)
# What a trained network's inputs and outputs depend on: inference must use the training values.
INFERENCE_KEYS = (
    "dataloader_train.dataset.action_dim",
    "dataloader_train.dataset.proprio_dim",
    "dataloader_train.dataset.chunk_size",
    "dataloader_train.dataset.final_image_size",
    "dataloader_train.dataset.text_len",
    "dataloader_train.dataset.text_dim",
    "model.state_t",
    "model.num_conditional_frames",
    "model.latent_layout.",
    "model.net.model_channels",
    "model.net.num_blocks",
    "model.net.num_heads",
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested mapping (tuples become lists, as in YAML)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def diff(saved: Any, requested: Any) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, requested value)`` for every leaf that differs, sorted by key."""
    a, b = flatten(to_plain(saved)), flatten(to_plain(requested))
    return [
        (k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b)) if a.get(k, ABSENT) != b.get(k, ABSENT)
    ]


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def _both_set(change: tuple[str, Any, Any]) -> bool:
    """A key only one side has comes from another code version, not from the user: never blocks."""
    return change[1] != ABSENT and change[2] != ABSENT


def shape_or_data_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [
        c for c in changes if _both_set(c) and _matches(c[0], SHAPE_OR_DATA_KEYS) and not _matches(c[0], EXECUTION_KEYS)
    ]


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)


def read_yaml(path: str) -> dict | None:
    """A saved ``config.yaml`` as a dict; None when absent; ``ConfigError`` when unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([f"{path}: unreadable saved config ({type(e).__name__})"]) from e
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: saved config is not a mapping"])
    return loaded


def saved_config_for(checkpoint: str) -> tuple[dict | None, str]:
    """The ``config.yaml`` of the training job a checkpoint path belongs to (job dir, checkpoint root,
    step directory or ``export/net.safetensors``), and its path; (None, "") for foreign files."""
    path = os.path.abspath(os.path.expanduser(checkpoint))
    start = path if os.path.isdir(path) else os.path.dirname(path)
    for _ in range(4):
        candidate = os.path.join(start, "config.yaml")
        if os.path.isfile(candidate) and any(os.path.isdir(os.path.join(start, d)) for d in ("checkpoints", "export")):
            return read_yaml(candidate), candidate
        start = os.path.dirname(start)
    return None, ""


def inference_mismatches(saved: Any, requested: Any) -> list[tuple[str, Any, Any]]:
    """Differences in what a trained network's inputs and outputs depend on."""
    return [c for c in diff(saved, requested) if _both_set(c) and _matches(c[0], INFERENCE_KEYS)]


def check_checkpoint_matches(checkpoint: str, requested: Any, *, name: str = "checkpoint") -> str:
    """Raise ``ConfigError`` (one line, starting with ``name``) when ``checkpoint`` was trained with another
    action size, chunk, layout or image size than ``requested``; returns the saved config's path ('' when
    there is none)."""
    saved, where = saved_config_for(checkpoint)
    if saved is None:
        return ""
    bad = inference_mismatches(saved, requested)
    if bad:
        raise ConfigError(
            [f"{name} {checkpoint} was trained with other settings than the config ({where}): {describe(bad)}"]
        )
    return where
