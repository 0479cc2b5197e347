"""Shared weight-import machinery: read state dicts, map keys to NNX paths, validate, export.

A model's converter is a list of ``Rule``s, one per PyTorch tensor, saying which NNX parameter
(path in the flat ``nnx.State``) it fills, how to transform it (transposes, reshapes), and, for
parameters stacked along a leading ``layers`` axis (``nnx.scan`` blocks), which slice.
``import_state_dict`` applies the rules and checks every key, shape and dtype against the
abstract model; ``export_state_dict`` runs them backwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cosmos_policy_jax.common.files import atomic_path
from cosmos_policy_jax.common.torch_pickle import load_torch_file

Path = tuple[str | int, ...]


class WeightImportError(ValueError):
    """State dict and model disagree; the message lists missing, unexpected and mismatched keys."""


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(frozen=True)
class Rule:
    """One PyTorch tensor <-> (a slice of) one NNX parameter.

    ``to_jax`` maps the torch array to the NNX layout (e.g. ``lambda w: w.T``), ``to_torch`` is its
    inverse. ``layer`` is the index along a leading stacked-layers axis, or None.
    """

    torch_key: str
    path: Path
    to_jax: Callable[[np.ndarray], np.ndarray] = _identity
    to_torch: Callable[[np.ndarray], np.ndarray] = _identity
    layer: int | None = None


def transpose_rule(torch_key: str, path: Path, layer: int | None = None) -> Rule:
    """Rule for a torch Linear weight [out, in] stored as an NNX kernel [in, out]."""
    return Rule(torch_key, path, lambda w: np.ascontiguousarray(w.T), lambda w: np.ascontiguousarray(w.T), layer)


@dataclass
class ImportReport:
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} ({', '.join(self.ignored[:8])}{'...' if len(self.ignored) > 8 else ''})"


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat ``{key: array}`` from ``.pt``/``.pth`` (zip or pickle, no torch needed) or ``.safetensors``.

    Checkpoints that nest the weights under ``state_dict`` or ``model`` are unwrapped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from e
    obj = load_torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray | np.generic):
            out[str(k)] = np.asarray(v)
    return out


def strip_prefixes(
    state_dict: Mapping[str, np.ndarray],
    prefix: str | None,
    drop_segments: Sequence[str] = ("_checkpoint_wrapped_module.",),
) -> dict[str, np.ndarray]:
    """Keep keys starting with ``prefix`` (removed), and drop wrapper segments anywhere in a key.

    ``prefix=None`` keeps every key. If no key has the prefix the dict is returned unprefixed, so a
    bare network state dict is accepted too.
    """
    items = {}
    for k, v in state_dict.items():
        for seg in drop_segments:
            k = k.replace(seg, "")
        items[k] = v
    if prefix is None or not any(k.startswith(prefix) for k in items):
        return items
    return {k[len(prefix) :]: v for k, v in items.items() if k.startswith(prefix)}


def flatten_abstract(tree: Mapping) -> dict[Path, object]:
    """Flat ``{path: leaf}`` of a nested mapping (e.g. ``nnx.State.to_pure_dict()``)."""
    out: dict[Path, object] = {}

    def rec(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                rec(v, (*prefix, k))
        else:
            out[prefix] = node

    rec(tree, ())
    return out


def unflatten(flat: Mapping[Path, object]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return out


def _fmt(path: Path) -> str:
    return "/".join(str(p) for p in path)


def import_state_dict(
    state_dict: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    abstract: Mapping[Path, object],
    ignore: Callable[[str], bool] = lambda k: False,
    source: str = "state dict",
) -> tuple[dict[Path, np.ndarray], ImportReport]:
    """Fill every parameter of ``abstract`` (flat path -> object with .shape/.dtype) from ``state_dict``.

    Raises ``WeightImportError`` listing all missing keys, unexpected keys and shape mismatches at
    once. Arrays are cast to the abstract dtype (float32 master weights from a bf16 checkpoint).
    """
    rules = list(rules)
    report = ImportReport()
    missing, mismatched = [], []
    used = set()
    stacks: dict[Path, np.ndarray] = {}
    filled: dict[Path, set[int]] = {}
    out: dict[Path, np.ndarray] = {}
    for rule in rules:
        if rule.path not in abstract:
            raise KeyError(f"converter rule for {rule.torch_key} targets unknown parameter {_fmt(rule.path)}")
        target = abstract[rule.path]
        if rule.torch_key not in state_dict:
            missing.append(rule.torch_key)
            continue
        used.add(rule.torch_key)
        value = np.asarray(rule.to_jax(np.asarray(state_dict[rule.torch_key])))
        want = tuple(target.shape[1:]) if rule.layer is not None else tuple(target.shape)
        if tuple(value.shape) != want:
            mismatched.append(
                f"{rule.torch_key}: checkpoint {tuple(np.asarray(state_dict[rule.torch_key]).shape)} -> {tuple(value.shape)}, model {_fmt(rule.path)} expects {want}"
            )
            continue
        if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
            mismatched.append(f"{rule.torch_key}: dtype {value.dtype} is not floating point")
            continue
        value = value.astype(np.dtype(target.dtype), copy=False)
        if rule.layer is not None:
            buf = stacks.setdefault(rule.path, np.zeros(target.shape, np.dtype(target.dtype)))
            buf[rule.layer] = value
            filled.setdefault(rule.path, set()).add(rule.layer)
        else:
            out[rule.path] = value
        report.loaded.append(rule.torch_key)
    for path, buf in stacks.items():
        n = abstract[path].shape[0]
        if filled[path] == set(range(n)):
            out[path] = buf
    unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
    report.ignored = sorted(k for k in state_dict if k not in used and ignore(k))
    uncovered = sorted(_fmt(p) for p in abstract if p not in out and not any(r.path == p for r in rules))
    if missing or unexpected or mismatched or uncovered:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            lines.append(f"  mismatched shapes ({len(mismatched)}): " + "; ".join(mismatched))
        if uncovered:
            lines.append(f"  parameters without a converter rule ({len(uncovered)}): {', '.join(uncovered)}")
        raise WeightImportError("\n".join(lines))
    return out, report


def export_state_dict(
    params: Mapping[Path, np.ndarray], rules: Iterable[Rule], dtype: np.dtype | None = None
) -> dict[str, np.ndarray]:
    """Inverse of ``import_state_dict``: flat NNX params -> ``{torch_key: array}``."""
    out = {}
    for rule in rules:
        value = np.asarray(params[rule.path])
        if rule.layer is not None:
            value = value[rule.layer]
        value = np.ascontiguousarray(rule.to_torch(value))
        if dtype is not None:
            value = value.astype(dtype)
        out[rule.torch_key] = value
    return out


def save_safetensors(
    state_dict: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Write atomically (temp file + rename) so an interrupted export never leaves a half file."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        # np.asarray(order="C"), not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
        save_file({k: np.asarray(v, order="C") for k, v in state_dict.items()}, tmp, metadata=metadata)


def save_torch(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """``torch.save`` of the dict (needs the optional PyTorch extra)."""
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            "writing .pt needs PyTorch (pip install 'cosmos_policy_jax[torch]'); use .safetensors"
        ) from e
    tensors = {}
    for k, v in state_dict.items():
        if v.dtype.name == "bfloat16":
            tensors[k] = (
                torch.from_numpy(np.asarray(v).view(np.uint16).astype(np.int32)).to(torch.int16).view(torch.bfloat16)
            )
        else:
            tensors[k] = torch.from_numpy(np.asarray(v, order="C"))  # keeps 0-d buffers 0-d
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
