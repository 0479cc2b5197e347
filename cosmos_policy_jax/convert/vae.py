"""Wan2.1 VAE weights: reference ``WanVAE_`` state dict (``tokenizer.pth``) <-> ``models/vae.py`` params.

Layouts: torch Conv3d ``[out, in, kt, kh, kw]`` <-> our ``(kt, kh, kw, in, out)``; Conv2d
``[out, in, kh, kw]`` <-> ``(kh, kw, in, out)``; RMS_norm gains ``[C, 1, 1, 1]`` (``[C, 1, 1]`` in
the attention block) <-> ``(C,)``. Module names map as follows:
``residual.{0,2,3,6}`` -> ``norm1, conv1, norm2, conv2``; ``resample.1`` -> ``conv``;
``head.{0,2}`` -> ``head_norm, head_conv``; everything else keeps its name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from cosmos_policy_jax.convert.core import (
    ImportReport,
    Path,
    Rule,
    WeightImportError,
    export_state_dict,
    flatten_abstract,
    import_state_dict,
    load_state_dict,
    save_safetensors,
    save_torch,
    unflatten,
)
from cosmos_policy_jax.models.vae import WanVAE, WanVAEConfig, decoder_layout, encoder_layout


def _permute(axes: tuple[int, ...]):
    """Transpose to the other layout; a tensor of the wrong rank passes unchanged so that the
    shape check in ``import_state_dict`` reports it (instead of a numpy error)."""

    def f(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(w, axes)) if w.ndim == len(axes) else w

    return f


def _conv3d_rule(key: str, path: Path) -> list[Rule]:
    return [
        Rule(f"{key}.weight", (*path, "kernel"), _permute((2, 3, 4, 1, 0)), _permute((4, 3, 0, 1, 2))),
        Rule(f"{key}.bias", (*path, "bias")),
    ]


def _conv2d_rule(key: str, path: Path) -> list[Rule]:
    return [
        Rule(f"{key}.weight", (*path, "kernel"), _permute((2, 3, 1, 0)), _permute((3, 2, 0, 1))),
        Rule(f"{key}.bias", (*path, "bias")),
    ]


def _gamma_rule(key: str, path: Path, trailing_ones: int) -> Rule:
    """RMS_norm gain ``[C, 1, ...]`` <-> ``(C,)``; any other shape is left for the shape check to report."""

    def to_jax(g: np.ndarray) -> np.ndarray:
        if g.ndim == 1 + trailing_ones and g.shape[1:] == (1,) * trailing_ones:
            return g.reshape(-1)
        # Wrong layout (a bare [C] included): keep a shape that cannot match, so it is reported.
        return g if g.ndim != 1 else g[None]

    return Rule(f"{key}.gamma", (*path, "gamma"), to_jax, lambda g: np.reshape(g, (-1,) + (1,) * trailing_ones))


def _residual_rules(key: str, path: Path, c_in: int, c_out: int) -> list[Rule]:
    rules = [_gamma_rule(f"{key}.residual.0", (*path, "norm1"), 3)]
    rules += _conv3d_rule(f"{key}.residual.2", (*path, "conv1"))
    rules.append(_gamma_rule(f"{key}.residual.3", (*path, "norm2"), 3))
    rules += _conv3d_rule(f"{key}.residual.6", (*path, "conv2"))
    if c_in != c_out:
        rules += _conv3d_rule(f"{key}.shortcut", (*path, "shortcut"))
    return rules


def _resample_rules(key: str, path: Path, mode: str) -> list[Rule]:
    rules = _conv2d_rule(f"{key}.resample.1", (*path, "conv"))
    if mode.endswith("3d"):
        rules += _conv3d_rule(f"{key}.time_conv", (*path, "time_conv"))
    return rules


def _blocks_rules(key: str, path: Path, layout) -> list[Rule]:
    rules = []
    for i, (kind, c_in, c_out) in enumerate(layout):
        if kind == "res":
            rules += _residual_rules(f"{key}.{i}", (*path, i), c_in, c_out)
        else:
            rules += _resample_rules(f"{key}.{i}", (*path, i), kind)
    return rules


def _middle_rules(key: str, path: Path, dim: int) -> list[Rule]:
    rules = _residual_rules(f"{key}.0", (*path, 0), dim, dim)
    rules.append(_gamma_rule(f"{key}.1.norm", (*path, 1, "norm"), 2))
    rules += _conv2d_rule(f"{key}.1.to_qkv", (*path, 1, "to_qkv"))
    rules += _conv2d_rule(f"{key}.1.proj", (*path, 1, "proj"))
    rules += _residual_rules(f"{key}.2", (*path, 2), dim, dim)
    return rules


def vae_rules(cfg: WanVAEConfig) -> list[Rule]:
    """One ``Rule`` per tensor of the reference ``WanVAE_`` state dict built with ``cfg``."""
    top = cfg.dim * cfg.dim_mult[-1]
    enc, dec = ("encoder",), ("decoder",)
    rules = _conv3d_rule("encoder.conv1", (*enc, "conv1"))
    rules += _blocks_rules("encoder.downsamples", (*enc, "downsamples"), encoder_layout(cfg))
    rules += _middle_rules("encoder.middle", (*enc, "middle"), top)
    rules.append(_gamma_rule("encoder.head.0", (*enc, "head_norm"), 3))
    rules += _conv3d_rule("encoder.head.2", (*enc, "head_conv"))
    rules += _conv3d_rule("conv1", ("conv1",))
    rules += _conv3d_rule("conv2", ("conv2",))
    rules += _conv3d_rule("decoder.conv1", (*dec, "conv1"))
    rules += _middle_rules("decoder.middle", (*dec, "middle"), top)
    rules += _blocks_rules("decoder.upsamples", (*dec, "upsamples"), decoder_layout(cfg))
    rules.append(_gamma_rule("decoder.head.0", (*dec, "head_norm"), 3))
    rules += _conv3d_rule("decoder.head.2", (*dec, "head_conv"))
    return rules


def _abstract_params(target: Any, cfg: WanVAEConfig | None) -> tuple[dict[Path, Any], WanVAEConfig]:
    """Flat {path: leaf with .shape/.dtype} and the config, from a config, model, nnx.State or dict."""
    if isinstance(target, WanVAEConfig):
        cfg = cfg or target
        target = nnx.eval_shape(lambda: WanVAE(target, rngs=nnx.Rngs(0)))
    if isinstance(target, WanVAE):
        cfg = cfg or target.cfg
    if isinstance(target, nnx.Module):
        target = nnx.state(target, nnx.Param)
    if isinstance(target, nnx.State):
        target = target.to_pure_dict()
    if not isinstance(target, Mapping):
        raise TypeError(f"import_vae: cannot take parameter shapes from {type(target).__name__}")
    if cfg is None:
        raise TypeError("import_vae: pass cfg=WanVAEConfig(...) when the target is a bare state or dict")
    flat = dict(target) if target and all(isinstance(k, tuple) for k in target) else flatten_abstract(target)
    return flat, cfg


def import_vae(
    path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray],
    model_or_abstract_state: Any,
    *,
    cfg: WanVAEConfig | None = None,
    source: str | None = None,
) -> tuple[dict, ImportReport]:
    """Reference ``WanVAE_`` weights -> nested dict of numpy arrays shaped like ``nnx.state(model, nnx.Param)``.

    ``path_or_state_dict``: ``tokenizer.pth`` / any ``.pt``/``.pth`` (read without torch, no
    pickled code run), a ``.safetensors`` file, or a ``{key: array}`` dict. ``model_or_abstract_state``:
    a ``WanVAEConfig``, a ``WanVAE`` (real or from ``nnx.eval_shape``), or an ``nnx.State`` / nested
    or flat dict of arrays or ShapeDtypeStructs (then ``cfg`` is required). Every key, shape and
    dtype is checked; values are cast to the target dtype. Raises ``WeightImportError`` listing all
    missing, unexpected and mismatched keys. Place the result with ``nnx.update(model, params)``.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = source or "state dict"  # the file it was read from, when the caller knows it
        state_dict = dict(path_or_state_dict)
    else:
        source = os.fspath(path_or_state_dict)
        state_dict = load_state_dict(source)
    abstract, cfg = _abstract_params(model_or_abstract_state, cfg)
    flat, report = import_state_dict(state_dict, vae_rules(cfg), abstract, source=source)
    return unflatten(flat), report


def _flat_params(params: Any) -> dict[Path, np.ndarray]:
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = params.to_pure_dict()
    flat = dict(params) if params and all(isinstance(k, tuple) for k in params) else flatten_abstract(params)
    return {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}


def vae_state_dict(params: Any, cfg: WanVAEConfig, dtype: Any = None) -> dict[str, np.ndarray]:
    """Our parameters (model, ``nnx.State`` or dict) -> the reference ``WanVAE_`` state dict."""
    if dtype is not None and str(dtype) == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    flat = _flat_params(params)
    rules = vae_rules(cfg)
    missing = [r.torch_key for r in rules if r.path not in flat]
    if missing:
        raise WeightImportError(f"export_vae: parameters missing for {len(missing)} keys: {', '.join(missing[:8])}")
    return export_state_dict(flat, rules, dtype=None if dtype is None else np.dtype(dtype))


def export_vae(params: Any, cfg: WanVAEConfig, path: str | os.PathLike, dtype: Any = None) -> dict[str, np.ndarray]:
    """Write the ``WanVAE_`` state dict: ``.safetensors``, or ``.pt``/``.pth`` (needs PyTorch).

    ``params``: a model, ``nnx.State`` or (nested/flat) dict of arrays. ``dtype`` (e.g.
    ``"bfloat16"``) casts the tensors. Returns the state dict written.
    """
    path = os.fspath(path)
    state_dict = vae_state_dict(params, cfg, dtype=dtype)
    if path.endswith(".safetensors"):
        meta = {"format": "pt", "config": json.dumps(dataclasses.asdict(cfg))}
        save_safetensors(state_dict, path, metadata=meta)
    elif path.endswith((".pt", ".pth")):
        save_torch(state_dict, path)
    else:
        raise ValueError(f"export_vae: path must end in .safetensors, .pt or .pth: {path}")
    return state_dict
