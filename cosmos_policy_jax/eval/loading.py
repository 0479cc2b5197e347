"""What an evaluation loads: DiT weights from any checkpoint kind, dataset statistics, instruction embeddings.

``--checkpoint`` accepts

* our training job directory (``{job.path_local}``, holding ``checkpoints/``), an orbax checkpoint
  root (``.../checkpoints``, newest step) or one step directory (``.../checkpoints/<iteration>``):
  only ``params`` (or ``ema_params``, when the run kept an EMA) of the ``state`` item is read, with
  orbax's partial restore, never the optimizer state;
* a ``.safetensors`` file: our export (``{job}/export/net.safetensors``, a ``net.``-prefixed
  reference state dict) or parameters written by ``convert.dit.save_nnx_params``;
* a PyTorch ``.pt``/``.pth`` reference checkpoint (e.g. NVIDIA's released Cosmos Policy LIBERO
  weights), read without PyTorch by ``convert.dit.import_dit``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.common.paths import expand_required
from cosmos_policy_jax.data import statistics as stats_lib
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.eval.errors import EvalInputError

__all__ = ["EvalInputError", "LoadedParams", "load_dit_params", "load_eval_statistics", "load_instruction_embeddings"]


@dataclasses.dataclass(frozen=True)
class LoadedParams:
    params: Any  # nnx.State of DiT parameters placed with the abstract shardings
    source: str  # human-readable description of where they came from


def _orbax_step_dir(path: str) -> str | None:
    """The step directory a job dir / checkpoint root / step dir points at, or None if not orbax."""
    from cosmos_policy_jax.training import checkpoint as ckpt_lib

    candidates = [path, os.path.join(path, "checkpoints")]
    for cand in candidates:
        if not ckpt_lib.is_orbax_checkpoint_dir(cand):
            continue
        if os.path.isdir(os.path.join(cand, ckpt_lib.STATE)):
            return cand
        steps = sorted(
            int(n) for n in os.listdir(cand) if n.isdigit() and os.path.isdir(os.path.join(cand, n, "state"))
        )
        if steps:
            return os.path.join(cand, str(steps[-1]))
    return None


def _restore_orbax_params(step_dir: str, abstract: Any, use_ema: bool | None) -> tuple[Any, str]:
    import orbax.checkpoint as ocp

    state_dir = os.path.join(step_dir, "state")
    ckptr = ocp.PyTreeCheckpointer()
    try:
        tree = ckptr.metadata(state_dir).item_metadata.tree
    except Exception as e:  # orbax raises assorted errors for unreadable metadata
        raise EvalInputError(f"{state_dir}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    has_ema = isinstance(tree.get("ema_params"), dict) and bool(tree.get("ema_params"))
    if use_ema and not has_ema:
        raise EvalInputError(f"{state_dir}: --use_ema was requested but the checkpoint has no EMA parameters")
    key = "ema_params" if (has_ema if use_ema is None else use_ema) else "params"
    if key not in tree:
        raise EvalInputError(f"{state_dir}: no {key!r} entry in the train state (found {sorted(tree)})")
    item = {key: abstract}
    try:
        restored = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
    except Exception as e:
        raise EvalInputError(f"{state_dir}: cannot restore {key} ({type(e).__name__}: {first_line(e)})") from e
    from cosmos_policy_jax.training import checkpoint as ckpt_lib

    try:  # the trainer's fingerprint: a damaged checkpoint must not be evaluated as if it were good
        ckpt_lib.verify_fingerprint(step_dir, {key: restored[key]})
    except ckpt_lib.CorruptCheckpointError as e:
        raise EvalInputError(str(e)) from e
    return restored[key], f"orbax {step_dir} ({key})"


def _place(nested: dict, abstract: Any) -> Any:
    """Nested numpy dict -> nnx.State shaped like ``abstract``, on its shardings."""
    import jax
    from flax import nnx

    state = jax.tree.map(lambda a: a, abstract)
    nnx.replace_by_pure_dict(state, nested)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    return jax.device_put(state, shardings)


def _resolve_checkpoint(path: str) -> tuple[str, str | None, str | None]:
    """(absolute path, its orbax step dir or None, the job's export file when a directory without
    checkpoints has one, else None); ``EvalInputError`` if nothing is at ``path``."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise EvalInputError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        return path, None, None
    step_dir = _orbax_step_dir(path)
    export = os.path.join(path, "export", "net.safetensors")
    return path, step_dir, export if step_dir is None and os.path.isfile(export) else None


def load_dit_params(path: str, abstract_params: Any, *, use_ema: bool | None = None) -> LoadedParams:
    """DiT parameters from ``path`` (see the module docstring), placed like ``abstract_params``.

    ``use_ema``: None picks EMA parameters when an orbax checkpoint has them; True/False forces
    (for ``.pt`` files True reads the ``net_ema.`` keys).
    """
    from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, UnsafeCheckpointError
    from cosmos_policy_jax.convert import dit as dit_convert
    from cosmos_policy_jax.convert.core import WeightImportError

    path, step_dir, export = _resolve_checkpoint(path)
    if export:
        return load_dit_params(export, abstract_params, use_ema=use_ema)
    if os.path.isdir(path):
        if step_dir is None:
            raise EvalInputError(
                f"{path}: neither an orbax checkpoint (checkpoints/<step>/state) nor a job with export/"
            )
        params, source = _restore_orbax_params(step_dir, abstract_params, use_ema)
        return LoadedParams(params, source)
    try:
        if path.endswith(".safetensors") and _is_nnx_params_file(path):
            nested, _ = dit_convert.load_nnx_params(path)
            source = f"nnx parameters {path}"
        else:
            nested, report = dit_convert.import_dit(path, abstract_params, use_ema=bool(use_ema))
            source = f"reference state dict {path} ({report.summary()})"
    except (WeightImportError, CheckpointFormatError, UnsafeCheckpointError, FileNotFoundError) as e:
        raise EvalInputError(f"{path}: {e}") from e
    return LoadedParams(_place(nested, abstract_params), source)


def _is_nnx_params_file(path: str) -> bool:
    from safetensors import safe_open

    from cosmos_policy_jax.convert.dit import PARAMS_FORMAT

    try:
        with safe_open(path, framework="numpy") as f:
            return (f.metadata() or {}).get("format") == PARAMS_FORMAT
    except Exception:
        return False


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
            from cosmos_policy_jax.demo import dataset as demo_gen

            demo_gen.ensure_demo_dataset(dataset_cfg)
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
    from cosmos_policy_jax.training.assets import sha256_of

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
    import json

    from cosmos_policy_jax.training import assets as assets_lib
    from cosmos_policy_jax.training import checkpoint as ckpt_lib

    path, step_dir, export = _resolve_checkpoint(path)
    if export:
        return load_checkpoint_assets(export)
    if os.path.isdir(path):
        if step_dir is None:
            return CheckpointAssets()
        root, step = os.path.dirname(step_dir), int(os.path.basename(step_dir))
        try:
            ck = ckpt_lib.Checkpointer(root, read_only=True)
            config = ck.restore_config(step)
            inference = ck.restore_inference(step)
        except Exception as e:  # orbax's assorted read errors
            raise EvalInputError(f"{step_dir}: cannot read the saved config ({type(e).__name__}: {e})") from e
        if not inference:
            return CheckpointAssets(config=config, source=step_dir)
        job_dir = os.path.dirname(root)
        return CheckpointAssets(
            config, _stats_from(inference.get("dataset_statistics"), step_dir),
            _t5_file(job_dir, inference.get("t5_embeddings"), step_dir), step_dir,
        )  # fmt: skip
    manifest = os.path.join(os.path.dirname(path), assets_lib.EXPORT_MANIFEST)
    if not path.endswith(".safetensors") or not os.path.isfile(manifest):
        return CheckpointAssets()
    try:
        with open(manifest) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvalInputError(f"{manifest}: unreadable ({e})") from e
    return CheckpointAssets(
        saved.get("config"), _stats_from(saved.get("dataset_statistics"), manifest),
        _t5_file(os.path.dirname(manifest), saved.get("t5_embeddings"), manifest), manifest,
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
