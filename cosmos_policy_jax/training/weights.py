"""Model weights from files: the DiT from any checkpoint kind, the frozen VAE from its weight file.

``load_dit`` reads

* a training job directory (holding ``checkpoints/``; without checkpoints, its ``export/net.safetensors``),
  an orbax checkpoint root (newest step) or one step directory: only ``params`` or ``ema_params`` of the
  train state, with orbax's partial restore (never the optimizer state), checked against the shapes of
  the model and the fingerprint the trainer saved;
* a ``.safetensors`` file: the trainer's export (a ``net.``-prefixed reference state dict, ``policy.json``
  beside it) or NNX parameters written by ``convert.dit.save_nnx_params``;
* a PyTorch ``.pt``/``.pth`` reference checkpoint (e.g. NVIDIA's released weights), read without PyTorch.

One EMA rule for every kind, ``use_ema``: None takes the EMA weights when the source has them, True
requires them, False takes the raw weights. A source has EMA weights when it is an orbax checkpoint with
``ema_params``, a reference state dict with ``net_ema.`` keys, or the export of a run that kept an EMA
(``model.ema.enabled`` in its ``policy.json``: its ``net.`` weights are the EMA ones, and it has no raw ones).

Errors are one line naming the path: ``WeightImportError`` for files (missing, unreadable, of another
model, non-finite values, EMA weights asked for but absent), the ``CheckpointError`` family for orbax
checkpoints written for another model or differing from their fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.convert.core import WeightImportError, flatten_abstract, load_state_dict
from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training.assets import EXPORT_MANIFEST

EXPORT_FILE = os.path.join("export", "net.safetensors")  # under a job directory
EMA_PREFIX = "net_ema."

__all__ = [
    "Loaded",
    "SavedMetadata",
    "WeightImportError",
    "WeightSource",
    "choose_ema",
    "ema_rule",
    "load_dit",
    "load_vae",
    "locate",
    "place",
    "refuse_nonfinite",
    "saved_metadata",
]


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """What ``locate`` found: ``kind`` is "orbax" (``path`` is the step directory), "state_dict" (reference
    keys in a ``.pt``/``.pth``/``.safetensors`` file) or "nnx_params" (``save_nnx_params``' files)."""

    given: str
    kind: str
    path: str


@dataclasses.dataclass(frozen=True)
class Loaded:
    params: Any  # nnx.State placed with the abstract parameters' shardings
    source: str  # where they came from, for the start-up line and the policy's info


@dataclasses.dataclass(frozen=True)
class SavedMetadata:
    """What a checkpoint carries besides weights (empty for foreign files)."""

    config: dict | None = None  # the training config, as a plain dict
    inference: dict | None = None  # training/assets.py's item: dataset statistics, T5 reference
    base_dir: str = ""  # relative file names in ``inference`` are under it
    where: str = ""  # the step directory or manifest it was read from


def ema_rule(config: Any) -> bool | None:
    """``use_ema`` for the trainer's ``checkpoint.load_path``: ``checkpoint.load_ema_to_reg`` (as the
    reference's option of that name) takes the EMA weights when present, else the raw ones."""
    return None if bool(config.checkpoint.get("load_ema_to_reg", True)) else False


def choose_ema(use_ema: bool | None, has_ema: bool, where: str, *, has_raw: bool = True) -> bool:
    """The one EMA rule: whether to read the EMA weights of a source that has them (``has_ema``) or not."""
    if use_ema and not has_ema:
        raise WeightImportError(f"{where}: EMA weights were asked for (use_ema) but it has none")
    if use_ema is False and not has_raw:
        raise WeightImportError(f"{where}: raw weights were asked for (use_ema=False) but it holds only EMA weights")
    return has_ema if use_ema is None else bool(use_ema)


# ------------------------------------------------------------------------------------------------
# Finding the weights


def orbax_step_dir(path: str) -> str | None:
    """The step directory a job dir / checkpoint root (newest step) / step dir points at, or None."""
    for cand in (path, os.path.join(path, "checkpoints")):
        if not ckpt_lib.is_orbax_checkpoint_dir(cand):
            continue
        if os.path.isdir(os.path.join(cand, ckpt_lib.STATE)):  # a step directory, named by its iteration
            return cand if os.path.basename(cand).isdigit() else None
        steps = [
            int(n) for n in os.listdir(cand) if n.isdigit() and os.path.isdir(os.path.join(cand, n, ckpt_lib.STATE))
        ]
        if steps:
            return os.path.join(cand, str(max(steps)))
    return None


def locate(path: str) -> WeightSource:
    """Where the weights at ``path`` are and of which kind (see the module docstring)."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        raise WeightImportError(f"weights not found: {full}")
    if os.path.isdir(full):
        step_dir = orbax_step_dir(full)
        if step_dir is not None:
            return WeightSource(path, "orbax", step_dir)
        export = os.path.join(full, EXPORT_FILE)
        if not os.path.isfile(export):
            raise WeightImportError(
                f"{full}: neither an orbax checkpoint (checkpoints/<step>/state) nor a job with {EXPORT_FILE}"
            )
        full = export
    kind = "nnx_params" if full.endswith(".safetensors") and _is_nnx_params_file(full) else "state_dict"
    return WeightSource(path, kind, full)


def _is_nnx_params_file(path: str) -> bool:
    from safetensors import safe_open

    from cosmos_policy_jax.convert.dit import PARAMS_FORMAT

    try:
        with safe_open(path, framework="numpy") as f:
            return (f.metadata() or {}).get("format") == PARAMS_FORMAT
    except Exception:  # not a safetensors file: the state-dict reader says why
        return False


# ------------------------------------------------------------------------------------------------
# Placing and checking


def place(nested: dict, abstract: Any) -> Any:
    """Nested numpy dict -> ``nnx.State`` shaped like ``abstract``, cast to its dtypes, on its shardings."""
    state = jax.tree.map(lambda a: a, abstract)
    nnx.replace_by_pure_dict(state, nested)
    state = jax.tree.map(lambda v, a: np.asarray(v).astype(a.dtype, copy=False), state, abstract)
    return jax.device_put(state, jax.tree.map(lambda a: a.sharding, abstract))


def refuse_nonfinite(params: Any, where: str) -> None:
    """One-line ``WeightImportError`` naming ``where`` if any floating-point array holds NaN or inf."""
    if bad := ckpt_lib.nonfinite_arrays({"params": params}):
        raise WeightImportError(f"{where}: non-finite values (NaN/inf) in {len(bad)} array(s): {', '.join(bad[:4])}")


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """The converters list every bad key on its own line: keep the report, on one line."""
    try:
        yield
    except WeightImportError as e:
        if "\n" not in str(e):
            raise
        raise WeightImportError(" ".join(part.strip() for part in str(e).splitlines() if part.strip())) from e


def _check_shapes(nested: dict, abstract: Any, where: str) -> None:
    """A parameter file of another model: name the first differing keys (the converters do it for state dicts)."""
    want = {k: tuple(a.shape) for k, a in flatten_abstract(abstract.to_pure_dict()).items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_abstract(nested).items()}
    differ = sorted(set(want) ^ set(got)) + sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if differ:
        names = ", ".join("/".join(map(str, k)) for k in differ[:4])
        raise WeightImportError(f"{where}: {len(differ)} parameter(s) missing, unexpected or of another shape: {names}")


# ------------------------------------------------------------------------------------------------
# The DiT


def load_dit(path: str, abstract: Any, *, use_ema: bool | None = None) -> Loaded:
    """DiT parameters from ``path`` (any kind of the module docstring), placed like ``abstract`` (the
    abstract parameters with their shardings); ``use_ema`` as the module docstring's EMA rule."""
    src = locate(path)
    if src.kind == "orbax":
        params, desc = _restore_orbax(src.path, abstract, use_ema)
    else:
        read = _read_nnx_params if src.kind == "nnx_params" else _read_state_dict
        with _one_line():
            nested, desc = read(src.path, abstract, use_ema)
        params = place(nested, abstract)
    refuse_nonfinite(params, src.path)
    return Loaded(params, desc)


def _restore_orbax(step_dir: str, abstract: Any, use_ema: bool | None) -> tuple[Any, str]:
    ema = choose_ema(use_ema, _orbax_has_ema(step_dir), step_dir)
    field = "ema_params" if ema else "params"
    ck = ckpt_lib.Checkpointer(os.path.dirname(step_dir), read_only=True)
    try:
        params = ck.restore_params(int(os.path.basename(step_dir)), abstract, ema=ema)
    except ckpt_lib.CheckpointError:  # another model, or differs from its fingerprint: names the step
        raise
    except Exception as e:  # orbax's assorted read errors
        raise WeightImportError(f"{step_dir}: cannot restore {field} ({type(e).__name__}: {first_line(e)})") from e
    finally:
        ck.close()
    return params, f"orbax checkpoint {step_dir} ({field}; optimizer state not loaded)"


def _orbax_has_ema(step_dir: str) -> bool:
    import orbax.checkpoint as ocp

    state_dir = os.path.join(step_dir, ckpt_lib.STATE)
    try:
        tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
    except Exception as e:  # orbax raises assorted errors for unreadable metadata
        raise WeightImportError(
            f"{state_dir}: not a readable orbax checkpoint ({type(e).__name__}: {first_line(e)})"
        ) from e
    ema = tree.get("ema_params") if isinstance(tree, dict) else None
    return isinstance(ema, dict) and bool(ema)


def _read_state_dict(path: str, abstract: Any, use_ema: bool | None) -> tuple[dict, str]:
    """A reference (``net.``/``net_ema.``) state dict: a ``.pt``/``.pth`` file or an export."""
    from cosmos_policy_jax.convert.dit import import_dit

    state_dict = load_state_dict(path)
    ema_keys = any(k.startswith(EMA_PREFIX) for k in state_dict)
    ema_export = not ema_keys and _export_of_ema_run(path)
    ema = choose_ema(use_ema, ema_keys or ema_export, path, has_raw=not ema_export)
    nested, report = import_dit(state_dict, abstract, use_ema=ema and ema_keys, source=path)
    logging.info("loaded keys: %s", ", ".join(report.loaded))
    what = "EMA weights, " + ("net_ema.*" if ema_keys else "the export of an EMA run") if ema else "raw weights"
    return nested, f"{path} ({what}): {report.summary()}"


def _export_of_ema_run(path: str) -> bool:
    """Whether ``path`` is the trainer's export of a run that kept an EMA (then it holds the EMA weights)."""
    manifest = _export_manifest(path)
    config = (_read_manifest(manifest).get("config") or {}) if manifest else {}
    return bool(config.get("model", {}).get("ema", {}).get("enabled", False))


def _export_manifest(path: str) -> str | None:
    """The ``policy.json`` beside the trainer's export ``path`` (a ``.safetensors``), or None."""
    manifest = os.path.join(os.path.dirname(path), EXPORT_MANIFEST)
    return manifest if path.endswith(".safetensors") and os.path.isfile(manifest) else None


def _read_nnx_params(path: str, abstract: Any, use_ema: bool | None) -> tuple[dict, str]:
    from cosmos_policy_jax.convert.dit import load_nnx_params

    choose_ema(use_ema, False, path)  # such a file holds one set of weights, not known to be an EMA
    nested, _ = load_nnx_params(path)
    _check_shapes(nested, abstract, path)
    return nested, f"nnx parameters {path}"


# ------------------------------------------------------------------------------------------------
# The VAE


def load_vae(path: str, abstract: Any, cfg: Any) -> Loaded:
    """Frozen VAE parameters from a reference weight file (``tokenizer.pth``, ``.pt``, ``.safetensors``)."""
    from cosmos_policy_jax.convert.vae import import_vae

    with _one_line():
        nested, report = import_vae(path, abstract, cfg=cfg)
    params = place(nested, abstract)
    refuse_nonfinite(params, path)
    return Loaded(params, f"{path}: {report.summary()}")


# ------------------------------------------------------------------------------------------------
# What a checkpoint carries besides weights


def saved_metadata(src: WeightSource) -> SavedMetadata:
    """The config and ``inference`` item saved with an orbax checkpoint or an export (empty for others)."""
    if src.kind == "orbax":
        return _orbax_metadata(src.path)
    manifest = _export_manifest(src.path)
    if manifest is None:
        return SavedMetadata()
    saved = _read_manifest(manifest)
    return SavedMetadata(saved.get("config"), saved, os.path.dirname(manifest), manifest)


def _orbax_metadata(step_dir: str) -> SavedMetadata:
    root = os.path.dirname(step_dir)
    ck = ckpt_lib.Checkpointer(root, read_only=True)
    try:
        step = int(os.path.basename(step_dir))
        config, inference = ck.restore_config(step), ck.restore_inference(step)
    except Exception as e:  # orbax's assorted read errors
        raise WeightImportError(
            f"{step_dir}: cannot read the saved config ({type(e).__name__}: {first_line(e)})"
        ) from e
    finally:
        ck.close()
    return SavedMetadata(config, inference, os.path.dirname(root), step_dir)


def _read_manifest(path: str) -> dict:
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightImportError(f"{path}: unreadable ({first_line(e)})") from e
    if not isinstance(saved, dict):
        raise WeightImportError(f"{path}: not a policy manifest (a JSON object)")
    return saved
