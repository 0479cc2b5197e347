"""PyTorch ``MinimalV1LVGDiT`` state dict <-> our NNX DiT parameters.

Key map (torch key without the ``net.`` prefix -> NNX path in ``nnx.state(model, nnx.Param)``):

=====================================================  ===============================================
``x_embedder.proj.1.weight`` [D, patch]                ``x_embedder/kernel`` (transposed)
``t_embedder.1.linear_{1,2}.weight``                   ``t_embedder/linear_{1,2}/kernel`` (transposed)
``t_embedding_norm.weight``                            ``t_embedding_norm/scale``
``blocks.{i}.{self,cross}_attn.{q,k,v,output}_proj``   ``blocks/{self,cross}_attn/*_proj/kernel[i]`` (T)
``blocks.{i}.{self,cross}_attn.{q,k}_norm.weight``     ``blocks/{self,cross}_attn/{q,k}_norm/scale[i]``
``blocks.{i}.mlp.layer{1,2}.weight``                   ``blocks/mlp/layer{1,2}/kernel[i]`` (T)
``blocks.{i}.adaln_modulation_*.{1,2}.weight``         ``blocks/adaln_modulation_*/linear_{1,2}/kernel[i]`` (T)
``final_layer.linear.weight``                          ``final_layer/linear/kernel`` (T)
``final_layer.adaln_modulation.{1,2}.weight``          ``final_layer/adaln_modulation/linear_{1,2}/kernel`` (T)
=====================================================  ===============================================

Blocks are stacked along a leading ``layers`` axis whatever ``scan_layers`` is, so ``[i]`` is a
slice of one array. Ignored on import (carry no learned values): the ``accum_*`` training
statistics, the RoPE buffers ``pos_embedder.{seq,dim_spatial_range,dim_temporal_range}`` and any
``*_extra_state``. Export regenerates the RoPE buffers and zero ``accum_*`` so the reference can
``load_state_dict(strict=True)`` the result.

Imported parameters can be stored for our trainer with ``save_nnx_params`` (safetensors whose keys
are the ``/``-joined NNX paths) and read back with ``load_nnx_params``.
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
    strip_prefixes,
    transpose_rule,
    unflatten,
)
from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT, rope_dims

_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "output_proj")
_ADALN = ("adaln_modulation_self_attn", "adaln_modulation_cross_attn", "adaln_modulation_mlp")
_ROPE_BUFFERS = ("pos_embedder.seq", "pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range")
_ACCUM_BUFFERS = {
    "accum_video_sample_counter": np.int64,
    "accum_image_sample_counter": np.int64,
    "accum_iteration": np.int64,
    "accum_train_in_hours": np.float32,
}
PARAMS_FORMAT = "cosmos_policy_jax.nnx_params"


def dit_rules(cfg: DiTConfig) -> list[Rule]:
    """One rule per learned tensor of the reference network (keys without the ``net.`` prefix)."""
    return _rules(cfg.num_blocks)


def _rules(num_blocks: int) -> list[Rule]:
    rules = [
        transpose_rule("x_embedder.proj.1.weight", ("x_embedder", "kernel")),
        transpose_rule("t_embedder.1.linear_1.weight", ("t_embedder", "linear_1", "kernel")),
        transpose_rule("t_embedder.1.linear_2.weight", ("t_embedder", "linear_2", "kernel")),
        Rule("t_embedding_norm.weight", ("t_embedding_norm", "scale")),
    ]
    for i in range(num_blocks):
        pre = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in _ATTN_PROJ:
                rules.append(transpose_rule(f"{pre}.{attn}.{proj}.weight", ("blocks", attn, proj, "kernel"), i))
            for norm in ("q_norm", "k_norm"):
                rules.append(Rule(f"{pre}.{attn}.{norm}.weight", ("blocks", attn, norm, "scale"), layer=i))
        for layer in ("layer1", "layer2"):
            rules.append(transpose_rule(f"{pre}.mlp.{layer}.weight", ("blocks", "mlp", layer, "kernel"), i))
        for branch in _ADALN:
            for j in (1, 2):
                rules.append(
                    transpose_rule(f"{pre}.{branch}.{j}.weight", ("blocks", branch, f"linear_{j}", "kernel"), i)
                )
    rules.append(transpose_rule("final_layer.linear.weight", ("final_layer", "linear", "kernel")))
    for j in (1, 2):
        rules.append(
            transpose_rule(
                f"final_layer.adaln_modulation.{j}.weight", ("final_layer", "adaln_modulation", f"linear_{j}", "kernel")
            )
        )
    return rules


def is_ignored_dit_key(key: str) -> bool:
    """True for reference tensors without learned values: ``accum_*`` stats, RoPE buffers, ``*_extra_state``."""
    return key.startswith("accum_") or key in _ROPE_BUFFERS or key.endswith("_extra_state")


def reference_buffers(cfg: DiTConfig) -> dict[str, np.ndarray]:
    """The reference's non-learned buffers (RoPE ranges, zero training counters), for a strict torch load."""
    _, dim_h, _ = rope_dims(cfg.head_dim)
    dim_t = cfg.head_dim - 2 * dim_h
    len_max = max(
        cfg.max_img_h // cfg.patch_spatial, cfg.max_img_w // cfg.patch_spatial, cfg.max_frames // cfg.patch_temporal
    )
    out = {k: np.zeros((), dt) for k, dt in _ACCUM_BUFFERS.items()}
    out["pos_embedder.seq"] = np.arange(len_max, dtype=np.float32)
    out["pos_embedder.dim_spatial_range"] = np.arange(0, dim_h, 2)[: dim_h // 2].astype(np.float32) / np.float32(dim_h)
    out["pos_embedder.dim_temporal_range"] = np.arange(0, dim_t, 2)[: dim_t // 2].astype(np.float32) / np.float32(dim_t)
    return out


def _abstract_params(target: Any) -> tuple[dict[Path, Any], DiTConfig | None]:
    """Flat {path: leaf with .shape/.dtype} from a config, model, nnx.State or (nested/flat) dict."""
    cfg = None
    if isinstance(target, DiTConfig):
        cfg = target
        target = nnx.eval_shape(lambda: MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0)))
    if isinstance(target, MinimalV1LVGDiT):
        cfg = target.cfg
    if isinstance(target, nnx.Module):
        target = nnx.state(target, nnx.Param)
    if isinstance(target, nnx.State):
        target = target.to_pure_dict()
    if not isinstance(target, Mapping):
        raise TypeError(f"cannot take parameter shapes from {type(target).__name__}")
    if target and all(isinstance(k, tuple) for k in target):
        return dict(target), cfg
    return flatten_abstract(target), cfg


def _num_layers(abstract: Mapping[Path, Any]) -> int:
    leaf = abstract.get(("blocks", "mlp", "layer1", "kernel"))
    if leaf is None:
        raise WeightImportError("target model has no blocks/mlp/layer1/kernel parameter; is it a DiT?")
    return int(leaf.shape[0])


def import_dit(
    path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray],
    model_or_abstract_state: Any,
    *,
    use_ema: bool = False,
    cfg: DiTConfig | None = None,
    source: str | None = None,
) -> tuple[dict, ImportReport]:
    """Reference DiT weights -> nested dict of numpy arrays shaped like ``nnx.state(model, nnx.Param)``.

    ``path_or_state_dict``: a ``.pt``/``.pth`` (read without torch) or ``.safetensors`` file, or a
    ``{key: array}`` dict. Keys may carry ``net.`` (or ``net_ema.`` with ``use_ema``) and
    ``_checkpoint_wrapped_module.``. ``model_or_abstract_state``: a ``DiTConfig``, a model, an
    ``nnx.State`` (arrays or ShapeDtypeStructs) or a nested/flat dict of such leaves; every shape is
    checked and values are cast to its dtype. Raises ``WeightImportError`` listing every missing,
    unexpected and mismatched key. Use ``nnx.update(model, params)`` or ``jax.device_put`` with the
    abstract shardings to place the result.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = source or "state dict"  # the file it was read from, when the caller knows it
        state_dict = dict(path_or_state_dict)
    else:
        source = os.fspath(path_or_state_dict)
        state_dict = load_state_dict(source)
    prefix = "net_ema." if use_ema else "net."
    if use_ema and not any(k.startswith(prefix) for k in state_dict):
        raise WeightImportError(f"{source}: use_ema was requested but no key starts with {prefix!r}")
    state_dict = strip_prefixes(state_dict, prefix)
    abstract, model_cfg = _abstract_params(model_or_abstract_state)
    cfg = cfg or model_cfg
    n_layers = cfg.num_blocks if cfg is not None else _num_layers(abstract)
    rules = _rules(n_layers)
    flat, report = import_state_dict(state_dict, rules, abstract, ignore=is_ignored_dit_key, source=source)
    return unflatten(flat), report


def _flat_params(params: Any) -> dict[Path, np.ndarray]:
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = params.to_pure_dict()
    if params and all(isinstance(k, tuple) for k in params):
        flat = dict(params)
    else:
        flat = flatten_abstract(params)
    return {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}


def dit_state_dict(
    params: Any, cfg: DiTConfig, prefix: str = "net.", dtype: Any = None, buffers: bool = True
) -> dict[str, np.ndarray]:
    """Our parameters -> reference state dict (``prefix`` + torch keys), with the reference buffers if ``buffers``."""
    out = export_state_dict(_flat_params(params), dit_rules(cfg), dtype=None if dtype is None else np.dtype(dtype))
    if buffers:
        out.update(reference_buffers(cfg))
    return {prefix + k: v for k, v in out.items()}


def export_dit(
    params: Any, cfg: DiTConfig, path: str | os.PathLike, prefix: str = "net.", dtype: Any = None
) -> dict[str, np.ndarray]:
    """Write a ``net.``-prefixed reference state dict: ``.safetensors``, or ``.pt``/``.pth`` (needs PyTorch).

    ``params``: a model, ``nnx.State`` or (nested/flat) dict of arrays. ``dtype`` (e.g. ``"bfloat16"``)
    casts the learned tensors. Returns the state dict written.
    """
    path = os.fspath(path)
    if dtype is not None and str(dtype) == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    state_dict = dit_state_dict(params, cfg, prefix=prefix, dtype=dtype)
    if path.endswith(".safetensors"):
        save_safetensors(state_dict, path, metadata={"format": "pt", "config": json.dumps(dataclasses.asdict(cfg))})
    elif path.endswith((".pt", ".pth")):
        save_torch(state_dict, path)
    else:
        raise ValueError(f"export path must end in .safetensors, .pt or .pth: {path}")
    return state_dict


# ----------------------------------------------------------------------------------------------
# Our own parameter files (what `python -m cosmos_policy_jax.convert import` writes)


def save_nnx_params(params: Any, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Safetensors of NNX parameters, keys = ``/``-joined paths (``blocks/mlp/layer1/kernel``)."""
    flat = _flat_params(params)
    tensors = {"/".join(str(p) for p in k): v for k, v in flat.items()}
    meta = {"format": PARAMS_FORMAT, **dict(metadata or {})}
    save_safetensors(tensors, path, metadata=meta)


def load_nnx_params(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """(nested params dict, metadata) from ``save_nnx_params``; integer path parts are restored."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"parameter file not found: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as e:  # safetensors raises its own error types
        raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != PARAMS_FORMAT:
        raise WeightImportError(f"{path}: not a {PARAMS_FORMAT} file (metadata format={meta.get('format')!r})")
    flat = {tuple(int(p) if p.isdigit() else p for p in k.split("/")): v for k, v in tensors.items()}
    return unflatten(flat), meta
