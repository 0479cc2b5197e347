"""Config handling around ml-collections: path resolution, validation, YAML dumps.

``validate`` collects every problem it finds and raises one ``ConfigError`` whose lines each name
the offending key, so a user fixes a config in one round trip instead of one error per launch.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from ml_collections import config_dict

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
CONV_IMPLS = ("auto", "conv3d", "taps")  # model.tokenizer.conv_impl (models/vae.py)
REMAT_POLICIES = ("none", "full", "attention_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
DATASET_KINDS = ("libero", "robocasa", "aloha", "demo", "synthetic", "lerobot")
DEFAULT_OUTPUT_ROOT = "outputs"
_ENV_PATTERN = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")

# Defaults for path variables the shipped configs use, so `demo` works with no environment set.
_ENV_DEFAULTS = {"COSMOS_POLICY_DATA_ROOT": os.path.join(os.path.expanduser("~"), ".cache", "cosmos_policy_jax")}


class ConfigError(ValueError):
    """Invalid configuration; ``str(err)`` has one line per problem, each naming its key."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if len(self.problems) < 2 else "\n  " + "\n  ".join(self.problems))


# Config fields holding file-system paths that may use ${ENV} variables.
PATH_FIELDS = (
    "job.path_local",
    "model.tokenizer.load_path",
    "dataloader_train.dataset.data_dir",
    "dataloader_train.dataset.rollout_data_dir",
    "dataloader_train.dataset.t5_text_embeddings_path",
    "dataloader_val.dataset.data_dir",
    "dataloader_val.dataset.rollout_data_dir",
    "dataloader_val.dataset.t5_text_embeddings_path",
    "checkpoint.load_path",
    "checkpoint.resume_from_checkpoint",
)


def get_field(config: config_dict.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def set_field(config: config_dict.ConfigDict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


def expand_path(value: str) -> tuple[str, list[str]]:
    """Expand ``${VAR}``/``$VAR`` and ``~``; returns the result and the names of unset variables."""
    missing = [m for m in _ENV_PATTERN.findall(value) if m not in os.environ and m not in _ENV_DEFAULTS]
    env = {**_ENV_DEFAULTS, **os.environ}
    expanded = string.Template(value).safe_substitute(env)
    return os.path.expanduser(expanded), missing


def default_job_dir(config: config_dict.ConfigDict) -> str:
    root = os.environ.get("COSMOS_POLICY_OUTPUT_ROOT", DEFAULT_OUTPUT_ROOT)
    return os.path.join(root, config.job.project, config.job.group, config.job.name)


def resolve(config: config_dict.ConfigDict) -> dict[str, list[str]]:
    """Fill ``job.path_local`` and expand variables in path fields, in place.

    Returns ``{field: [unset variable names]}`` for fields that still reference unset variables;
    ``validate`` reports them when (and only when) the field is actually needed.
    """
    unresolved: dict[str, list[str]] = {}
    with config.unlocked():
        if not config.job.path_local:
            config.job.path_local = default_job_dir(config)
        for name in PATH_FIELDS:
            value = get_field(config, name)
            if not isinstance(value, str) or not value:
                continue
            expanded, missing = expand_path(value)
            if missing:
                unresolved[name] = missing
            else:
                set_field(config, name, expanded)
    return unresolved


def _dataset_needs(ds: config_dict.ConfigDict) -> list[str]:
    """Path fields of a dataset section that must exist for its kind."""
    if ds.kind in ("synthetic", "demo"):
        return []  # synthetic needs nothing; demo is generated on first use
    needs = ["data_dir", "t5_text_embeddings_path"]
    if ds.rollout_data_dir and ds.demonstration_sampling_prob < 1.0:
        needs.append("rollout_data_dir")
    return needs


def validate(
    config: config_dict.ConfigDict,
    *,
    num_devices: int | None = None,
    mesh_shape: Mapping[str, int] | None = None,
    check_paths: bool = True,
    unresolved: Mapping[str, list[str]] | None = None,
) -> None:
    """Check required fields and cross-field constraints; raise ``ConfigError`` listing every problem.

    ``mesh_shape``/``num_devices`` enable the device-dependent checks (mesh product, batch
    divisibility); ``check_paths`` the file-system checks (skipped by ``--dryrun``).
    """
    p: list[str] = []
    unresolved = unresolved or {}

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            p.append(f"{key}: {msg}")

    for key in ("project", "group", "name"):
        need(bool(config.job[key]), f"job.{key}", "must be a non-empty string")

    t = config.trainer
    for key in ("max_iter", "logging_iter", "validation_iter", "grad_accum_iter", "max_val_iter"):
        need(isinstance(t[key], int) and t[key] >= 1, f"trainer.{key}", f"must be an integer >= 1, got {t[key]!r}")
    need(t.seed >= 0, "trainer.seed", f"must be >= 0, got {t.seed}")

    m = config.model
    need(m.state_t >= 2, "model.state_t", f"must be >= 2, got {m.state_t}")
    need(
        1 <= m.num_conditional_frames < m.state_t,
        "model.num_conditional_frames",
        f"must be in [1, state_t={m.state_t}), got {m.num_conditional_frames}",
    )
    need(m.precision in DTYPES, "model.precision", f"must be one of {DTYPES}, got {m.precision!r}")
    need(m.scaling in ("rectified_flow", "edm"), "model.scaling", f"must be rectified_flow or edm, got {m.scaling!r}")
    need(m.sigma_data > 0, "model.sigma_data", f"must be > 0, got {m.sigma_data}")
    need(m.loss_scale > 0, "model.loss_scale", f"must be > 0, got {m.loss_scale}")
    layout = {k: v for k, v in m.latent_layout.items() if v != -1}
    for slot, idx in layout.items():
        need(
            isinstance(idx, int) and 1 <= idx < m.state_t,
            f"model.latent_layout.{slot}",
            f"must be -1 or a latent frame index in [1, state_t={m.state_t}), got {idx!r}",
        )
    dup = sorted({i for i in layout.values() if list(layout.values()).count(i) > 1})
    need(not dup, "model.latent_layout", f"two slots share latent frame(s) {dup}")
    for slot in ("action", "current_proprio"):
        need(layout.get(slot, -1) != -1, f"model.latent_layout.{slot}", "is required")

    n = m.net
    need(n.dtype in DTYPES, "model.net.dtype", f"must be one of {DTYPES}, got {n.dtype!r}")
    need(
        n.param_dtype == "float32", "model.net.param_dtype", f"must be float32 (master weights), got {n.param_dtype!r}"
    )
    need(
        n.attention_impl in ATTENTION_IMPLS,
        "model.net.attention_impl",
        f"must be one of {ATTENTION_IMPLS}, got {n.attention_impl!r}",
    )
    need(
        n.remat_policy in REMAT_POLICIES,
        "model.net.remat_policy",
        f"must be one of {REMAT_POLICIES}, got {n.remat_policy!r}",
    )
    for key in ("model_channels", "num_blocks", "num_heads", "adaln_lora_dim", "crossattn_emb_channels"):
        need(n[key] >= 1, f"model.net.{key}", f"must be >= 1, got {n[key]}")
    if n.num_heads >= 1:
        need(
            n.model_channels % n.num_heads == 0,
            "model.net.num_heads",
            f"must divide model_channels={n.model_channels}, got {n.num_heads}",
        )
        head_dim = n.model_channels // max(n.num_heads, 1)
        need(head_dim % 2 == 0 and head_dim >= 8, "model.net.num_heads", f"head dim {head_dim} must be even and >= 8")
    need(n.in_channels == m.state_ch, "model.net.in_channels", f"must equal model.state_ch={m.state_ch}")
    tok = m.tokenizer
    need(tok.dtype in DTYPES, "model.tokenizer.dtype", f"must be one of {DTYPES}, got {tok.dtype!r}")
    need(tok.z_dim == m.state_ch, "model.tokenizer.z_dim", f"must equal model.state_ch={m.state_ch}")
    conv_impls = ("auto", "conv3d", "taps")
    need(
        tok.conv_impl in conv_impls, "model.tokenizer.conv_impl", f"must be one of {conv_impls}, got {tok.conv_impl!r}"
    )
    need(int(tok.batch_steps) >= 1, "model.tokenizer.batch_steps", f"must be >= 1, got {tok.batch_steps}")
    need(
        len(tok.temperal_downsample) == len(tok.dim_mult) - 1,
        "model.tokenizer.temperal_downsample",
        "needs one entry per down-sampling level (len(dim_mult) - 1)",
    )
    sde = m.sde
    need(0.0 <= sde.lognormal_prob <= 1.0, "model.sde.lognormal_prob", f"must be in [0, 1], got {sde.lognormal_prob}")
    need(sde.uniform_lower < sde.uniform_upper, "model.sde.uniform_lower", "must be < uniform_upper")
    need(sde.p_std > 0, "model.sde.p_std", f"must be > 0, got {sde.p_std}")
    s = m.sampler
    need(s.num_steps >= 1, "model.sampler.num_steps", f"must be >= 1, got {s.num_steps}")
    need(0 < s.sigma_min < s.sigma_max, "model.sampler.sigma_min", "must satisfy 0 < sigma_min < sigma_max")
    need(s.solver in ("2ab", "1euler"), "model.sampler.solver", f"must be 2ab or 1euler, got {s.solver!r}")

    o = config.optimizer
    need(o.name == "adamw", "optimizer.name", f"only adamw is supported, got {o.name!r}")
    need(o.lr >= 0, "optimizer.lr", f"must be >= 0, got {o.lr}")
    need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optimizer.b1", "betas must be in [0, 1)")
    need(o.eps > 0, "optimizer.eps", f"must be > 0, got {o.eps}")
    need(o.clip_norm > 0, "optimizer.clip_norm", f"must be > 0, got {o.clip_norm}")
    sc = config.scheduler
    need(sc.name == "lambdalinear", "scheduler.name", f"only lambdalinear is supported, got {sc.name!r}")
    lengths = {len(sc[k]) for k in ("cycle_lengths", "warm_up_steps", "f_start", "f_max", "f_min")}
    need(len(lengths) == 1, "scheduler", "cycle_lengths, warm_up_steps, f_start, f_max, f_min need equal lengths")
    for i, (c, w) in enumerate(zip(sc.cycle_lengths, sc.warm_up_steps)):
        need(
            (c > 0 and 0 <= w < c) or (w == 0 and c > 0),
            f"scheduler.warm_up_steps[{i}]",
            "must be in [0, cycle_length)",
        )

    for section in ("dataloader_train", "dataloader_val"):
        dl = config[section]
        need(dl.batch_size >= 1, f"{section}.batch_size", f"must be >= 1, got {dl.batch_size}")
        gbs = dl.global_batch_size
        need(gbs is None or gbs >= 1, f"{section}.global_batch_size", f"must be >= 1, got {gbs}")
        need(dl.num_workers >= 0, f"{section}.num_workers", f"must be >= 0, got {dl.num_workers}")
        need(dl.timeout > 0, f"{section}.timeout", f"must be > 0 seconds, got {dl.timeout}")
        ds = dl.dataset
        need(ds.kind in DATASET_KINDS, f"{section}.dataset.kind", f"must be one of {DATASET_KINDS}, got {ds.kind!r}")
        need(ds.chunk_size >= 1, f"{section}.dataset.chunk_size", f"must be >= 1, got {ds.chunk_size}")
        need(
            ds.final_image_size >= 16 and ds.final_image_size % 16 == 0,
            f"{section}.dataset.final_image_size",
            f"must be a positive multiple of 16 (VAE x8, patch x2), got {ds.final_image_size}",
        )
        for key in ("demonstration_sampling_prob", "success_rollout_sampling_prob"):
            need(0.0 <= ds[key] <= 1.0, f"{section}.dataset.{key}", f"must be in [0, 1], got {ds[key]}")
        need(0.0 < ds.gamma <= 1.0, f"{section}.dataset.gamma", f"must be in (0, 1], got {ds.gamma}")
        need(
            ds.text_dim == n.crossattn_emb_channels,
            f"{section}.dataset.text_dim",
            f"must equal model.net.crossattn_emb_channels={n.crossattn_emb_channels}",
        )
        if mesh_shape is not None:
            dp = mesh_shape["data"] * mesh_shape["fsdp"]
            if gbs is not None:
                need(
                    gbs % dp == 0,
                    f"{section}.global_batch_size",
                    f"{gbs} is not divisible by the data-parallel size {dp} (data x fsdp)",
                )
        if check_paths and (section == "dataloader_train" or config.trainer.run_validation):
            for key in _dataset_needs(ds):
                field = f"{section}.dataset.{key}"
                if field in unresolved:
                    p.append(f"{field}: environment variable(s) {', '.join(unresolved[field])} not set ({ds[key]})")
                elif not ds[key]:
                    p.append(f"{field}: required for dataset kind {ds.kind!r}")
                elif not os.path.exists(ds[key]):
                    p.append(f"{field}: path does not exist: {ds[key]}")

    ck = config.checkpoint
    need(ck.save_iter >= 1, "checkpoint.save_iter", f"must be >= 1, got {ck.save_iter}")
    need(ck.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {ck.keep_last}")
    if check_paths:
        for key in ("load_path", "resume_from_checkpoint"):
            field = f"checkpoint.{key}"
            if not ck[key]:
                continue
            if field in unresolved:
                p.append(
                    f"{field}: environment variable(s) {', '.join(unresolved[field])} not set ({ck[key]}); "
                    f"set it or pass --config.{field}=''"
                )
            elif not os.path.exists(ck[key]):
                p.append(f"{field}: path does not exist: {ck[key]}")
        if tok.load_path:
            if "model.tokenizer.load_path" in unresolved:
                p.append(f"model.tokenizer.load_path: environment variable(s) not set ({tok.load_path})")
            elif not os.path.exists(tok.load_path):
                p.append(f"model.tokenizer.load_path: path does not exist: {tok.load_path}")

    par = config.parallel
    for key in ("data", "fsdp", "tensor"):
        need(par[key] == -1 or par[key] >= 1, f"parallel.{key}", f"must be >= 1 or -1 (fill), got {par[key]}")
    need([par.data, par.fsdp, par.tensor].count(-1) <= 1, "parallel", "at most one of data/fsdp/tensor may be -1")
    try:
        from cosmos_policy_jax.parallel.rules import check_rules, normalize_rules

        check_rules(normalize_rules(par.logical_axis_rules))
    except ValueError as e:
        p.append(str(e))
    if num_devices is not None:
        from cosmos_policy_jax.parallel.mesh import resolve_axis_sizes

        try:
            resolve_axis_sizes((par.data, par.fsdp, par.tensor), num_devices)
        except ValueError as e:
            p.append(str(e))
    if mesh_shape is not None:
        tp = mesh_shape["tensor"]
        need(n.num_heads % tp == 0, "parallel.tensor", f"{tp} must divide model.net.num_heads={n.num_heads}")
        hidden = int(n.model_channels * n.mlp_ratio)
        need(hidden % tp == 0, "parallel.tensor", f"{tp} must divide the MLP width {hidden}")
    if p:
        raise ConfigError(p)


def _plain(value: Any) -> Any:
    """ConfigDict values -> YAML-safe Python (tuples become lists, placeholders None)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, config_dict.FieldReference):
        return _plain(value.get())
    return value


def to_plain_dict(config: config_dict.ConfigDict | config_dict.FrozenConfigDict) -> dict:
    return _plain(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def to_yaml(config) -> str:
    return yaml.safe_dump(to_plain_dict(config), sort_keys=True, default_flow_style=False)


def atomic_write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_yaml(config, path: str) -> str:
    atomic_write_text(path, to_yaml(config))
    return path


def config_overrides(argv: Iterable[str]) -> list[str]:
    """The ``--config.a.b=v`` overrides of a command line, in order."""
    out = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config.") and "=" in arg:
            out.append(arg[2:])
        elif arg.startswith("--config.") and i + 1 < len(argv):
            out.append(f"{arg[2:]}={argv[i + 1]}")
    return out


def git_commit(path: str | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path or os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def job_env_info() -> dict:
    """Versions, devices and processes: what is needed to reproduce a run (job_env.yaml)."""
    import importlib.metadata as md

    import jax

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "packages": versions,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else None,
        "num_devices": len(devices),
        "num_local_devices": jax.local_device_count(),
        "process_count": jax.process_count(),
        "git_commit": git_commit(),
        "hostname": os.uname().nodename,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "SLURM_JOB", "CUDA_VISIBLE"))},
    }


def pretty(config) -> str:
    return json.dumps(to_plain_dict(config), indent=2, sort_keys=True)
