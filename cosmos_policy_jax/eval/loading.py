"""What an evaluation loads besides the weights: dataset statistics, instruction embeddings, and the
config/statistics/T5 file saved with a checkpoint.

The weights themselves (any checkpoint kind: job directory, orbax step, export, NVIDIA's ``.pt``) are
read by ``training.weights``, through ``training.setup.ModelSetup.load_params``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cosmos_policy_jax.common.paths import expand_required
from cosmos_policy_jax.data import statistics as stats_lib
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.eval.errors import EvalInputError

__all__ = [
    "CheckpointAssets",
    "EvalInputError",
    "check_config_agrees",
    "load_checkpoint_assets",
    "load_eval_statistics",
    "load_instruction_embeddings",
]


def expand(path: str, what: str) -> str:
    return expand_required(path, what, EvalInputError)


def load_eval_statistics(dataset_cfg: Any, stats_path: str | None) -> tuple[dict[str, np.ndarray], str]:
    """Normalisation statistics: ``stats_path``, else ``<data_dir>/dataset_statistics.json``.

    For the demo config a missing file is computed from the (generated-on-demand) demo dataset,
    exactly as training computes it.
    """
    action_dim, proprio_dim = int(dataset_cfg.action_dim), int(dataset_cfg.proprio_dim)
    try:
        if stats_path:
            path = expand(stats_path, "--stats")
            if not os.path.isfile(path):
                raise EvalInputError(f"--stats: file not found: {path}")
            return stats_lib.load_statistics(path, action_dim, proprio_dim), path
        data_dir = expand(dataset_cfg.data_dir, "dataset.data_dir")
        path = os.path.join(data_dir, stats_lib.STATS_FILE)
        if os.path.isfile(path):
            return stats_lib.load_statistics(path, action_dim, proprio_dim), path
        if dataset_cfg.kind == "demo":
            from cosmos_policy_jax.data.libero import LiberoSource
            from cosmos_policy_jax.demo import dataset as demo_dataset

            demo_dataset.ensure_demo_dataset(dataset_cfg)
            if not os.path.isfile(path):
                LiberoSource.from_config(dataset_cfg)  # writes dataset_statistics.json as training would
            return stats_lib.load_statistics(path, action_dim, proprio_dim), path
    except DataError as e:
        raise EvalInputError(str(e)) from e
    raise EvalInputError(
        f"no dataset statistics at {path}; pass --stats=PATH (NVIDIA's LIBERO checkpoint ships "
        "libero_dataset_statistics.json)"
    )


def load_instruction_embeddings(path: str | None, text_len: int, text_dim: int) -> dict[str, np.ndarray] | None:
    """``{instruction: (L, D) float32}`` from a T5 embeddings file, or None when ``path`` is empty."""
    from cosmos_policy_jax.data import t5

    if not path:
        return None
    full = expand(path, "T5 embeddings")
    try:
        raw = t5.load_t5_embeddings(full)
    except DataError as e:
        raise EvalInputError(str(e)) from e
    out = {k: t5.squeeze_embedding(v) for k, v in raw.items()}
    for k, v in out.items():
        if v.shape != (text_len, text_dim):
            raise EvalInputError(
                f"{full}: embedding of {k!r} has shape {v.shape}, the model expects ({text_len}, {text_dim})"
            )
    return out


# ------------------------------------------------------------------------------------------------
# What a checkpoint carries besides weights (training/assets.py): config, statistics, T5 embeddings
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointAssets:
    config: dict | None = None  # the training config (plain dict)
    stats: dict[str, np.ndarray] | None = None
    t5_path: str | None = None  # the embeddings file, its hash checked
    source: str = ""  # where config/stats came from


def _t5_file(base: str, ref: dict | None, where: str) -> str | None:
    """The referenced T5 file under ``base`` (or its recorded source) whose SHA-256 matches."""
    from cosmos_policy_jax.common.files import sha256_of

    if not ref:
        return None
    candidates = [os.path.join(base, ref["file"]), ref.get("source") or ""]
    for cand in candidates:
        if cand and os.path.isfile(cand):
            if sha256_of(cand) == ref["sha256"]:
                return cand
            raise EvalInputError(f"{where}: T5 embeddings {cand} changed since training (SHA-256 differs)")
    raise EvalInputError(f"{where}: T5 embeddings file {candidates[0]} is missing (saved with the checkpoint)")


def _stats_from(raw: dict | None, where: str) -> dict[str, np.ndarray] | None:
    if raw is None:
        return None
    try:
        return {k: np.asarray(v, np.float64) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise EvalInputError(f"{where}: unreadable dataset statistics ({e})") from e


def load_checkpoint_assets(path: str) -> CheckpointAssets:
    """Config, statistics and T5 file saved with the checkpoint at ``path`` (empty for foreign files)."""
    from cosmos_policy_jax.training import weights

    saved = weights.saved_metadata(weights.locate(path))
    if not saved.inference:
        return CheckpointAssets(config=saved.config, source=saved.where)
    inference = saved.inference
    return CheckpointAssets(
        saved.config, _stats_from(inference.get("dataset_statistics"), saved.where),
        _t5_file(saved.base_dir, inference.get("t5_embeddings"), saved.where), saved.where,
    )  # fmt: skip


# The settings a served/evaluated policy must share with the checkpoint (a mismatch gives wrong actions
# or a shape error deep inside the model).
def check_config_agrees(saved: dict, config: Any, where: str) -> None:
    """One-line ``EvalInputError`` naming every key where ``config`` differs from the config saved with
    the checkpoint, among those a trained network's inputs and outputs depend on
    (``config_drift.INFERENCE_KEYS``: action/proprio dims, chunk, image size, text shape, layout, sizes)."""
    from cosmos_policy_jax.config_drift import inference_mismatches

    differ = [f"{key}: checkpoint {a} vs config {b}" for key, a, b in inference_mismatches(saved, config)]
    if differ:
        raise EvalInputError(f"{where}: the config disagrees with the checkpoint's ({'; '.join(differ)})")
