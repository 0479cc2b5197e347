"""Config handling around ml-collections: path resolution, validation, YAML dumps.

``validate`` collects every problem it finds and raises one ``ConfigError`` whose lines each name
the offending key, so a user fixes a config in one round trip instead of one error per launch.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import yaml
from ml_collections import config_dict

from cosmos_policy_jax.common.files import atomic_write_text
from cosmos_policy_jax.common.git import git_commit
from cosmos_policy_jax.common.paths import expand_path, unset_message
from cosmos_policy_jax.common.plain import to_plain

DEFAULT_OUTPUT_ROOT = "outputs"


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


# Pretrained files the shipped configs point at, and where they are downloaded from.
PRETRAINED_REPO = "nvidia/Cosmos-Predict2-2B-Video2World"
_PRETRAINED_FILES = ("tokenizer/tokenizer.pth", "model-480p-16fps.pt")
# Seeds and counters become int32 on device (jax keys, the step counter, grain seeds).
_INT32_MAX = 2**31 - 1


def download_hint(path: str) -> str:
    """How to fetch ``path`` when it is one of NVIDIA's released files, else ''."""
    for name in _PRETRAINED_FILES:
        if path.endswith("/" + name):
            local = path[: -len(name) - 1]
            return f"; download it with: hf download {PRETRAINED_REPO} {name} --local-dir {local}"
    return ""


def _named(section: str, error: Exception) -> str:
    """A typed config's error as a problem line that names its config key."""
    msg = " ".join(str(error).split())
    if msg.startswith(("sde.", "latent_layout", "num_conditional_frames")):
        return f"model.{msg}"
    if msg.startswith("latent layout state_t"):
        return f"model.state_t: {msg}"
    return msg if msg.startswith(section.split(".")[0] + ".") else f"{section}: {msg}"


def _typed(problems: list[str], section: str, build, *args) -> Any:
    """``build(*args)``; a ValueError/TypeError becomes one problem line (returns None then)."""
    try:
        return build(*args)
    except (ValueError, TypeError, KeyError) as e:
        problems.append(_named(section, e))
        return None


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config (sequences are leaves)."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping | config_dict.ConfigDict):
            yield from leaves(value, name + ".")
        else:
            yield name, value


def _check_values(config) -> list[str]:
    """Every number is finite and fits 64 bits (a typo like lr=inf or 1e400 fails here, by name)."""
    p = []
    for key, value in leaves(config):
        for v in value if isinstance(value, list | tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                p.append(f"{key}: must be a finite number, got {v}")
            elif isinstance(v, int) and abs(v) >= 2**63:
                p.append(f"{key}: integer {v} is out of range")
    return p


def _check_job_trainer(config) -> list[str]:
    p = [f"job.{k}: must be a non-empty string" for k in ("project", "group", "name") if not config.job[k]]
    t = config.trainer
    for key in ("max_iter", "logging_iter", "validation_iter", "grad_accum_iter", "max_val_iter"):
        if not (isinstance(t[key], int) and t[key] >= 1):
            p.append(f"trainer.{key}: must be an integer >= 1, got {t[key]!r}")
    if not p and t.max_iter * t.grad_accum_iter > _INT32_MAX:
        p.append(f"trainer.max_iter: max_iter x grad_accum_iter must be <= {_INT32_MAX} (the step counter)")
    seeds = {"trainer.seed": t.seed, "model.sampler.seed": config.model.sampler.seed}
    for section in ("dataloader_train", "dataloader_val"):
        seeds[f"{section}.seed"] = config[section].seed
    for key, seed in seeds.items():
        if not (isinstance(seed, int) and 0 <= seed <= _INT32_MAX):
            p.append(f"{key}: must be an integer in [0, {_INT32_MAX}], got {seed!r}")
    if t.get("peak_tflops", 0.0) < 0:
        p.append(f"trainer.peak_tflops: must be >= 0 (0: look up the device), got {t.peak_tflops}")
    return p


def _check_model(config) -> list[str]:
    """The typed configs the trainer builds (their limits are the only ones), plus cross-section ties."""
    from cosmos_policy_jax.diffusion.sde import SDEConfig
    from cosmos_policy_jax.models.dit import DiTConfig
    from cosmos_policy_jax.models.vae import WanVAEConfig
    from cosmos_policy_jax.policy.config import PolicyConfig
    from cosmos_policy_jax.policy.layout import LatentLayout

    p: list[str] = []
    m = config.model
    net = _typed(p, "model.net", DiTConfig.from_config, m.net)
    vae = _typed(p, "model.tokenizer", WanVAEConfig.from_config, m.tokenizer)
    layout = _typed(p, "model.latent_layout", LatentLayout.from_config, m)
    sde = _typed(p, "model.sde", SDEConfig.from_config, m.sde)
    if layout is not None and sde is not None:
        _typed(p, "model", PolicyConfig.from_config, config)
    for key in ("sigma_data", "loss_scale"):
        if not m[key] > 0:
            p.append(f"model.{key}: must be > 0, got {m[key]}")
    if net is not None and net.in_channels != m.state_ch:
        p.append(f"model.net.in_channels: must equal model.state_ch={m.state_ch}")
    tok = m.tokenizer
    if tok.z_dim != m.state_ch:
        p.append(f"model.tokenizer.z_dim: must equal model.state_ch={m.state_ch}")
    if vae is not None:
        for key, factor in (("spatial_compression", vae.spatial_factor), ("temporal_compression", vae.temporal_factor)):
            if tok[key] != factor:
                p.append(f"model.tokenizer.{key}: must be {factor} (from dim_mult/temperal_downsample), got {tok[key]}")
    if tok.random_init and tok.load_path:
        p.append("model.tokenizer.random_init=True needs model.tokenizer.load_path='' (a random VAE reads no file)")
    if not tok.random_init and not tok.load_path:
        p.append(
            "model.tokenizer.load_path: empty; set it to the pretrained VAE (tokenizer.pth) "
            "or ask for a random VAE with --config.model.tokenizer.random_init=True"
        )
    s = m.sampler
    if s.num_steps < 1:
        p.append(f"model.sampler.num_steps: must be >= 1, got {s.num_steps}")
    if not 0 < s.sigma_min < s.sigma_max:
        p.append("model.sampler.sigma_min: must satisfy 0 < sigma_min < sigma_max")
    if s.solver not in ("2ab", "1euler"):
        p.append(f"model.sampler.solver: must be 2ab or 1euler, got {s.solver!r}")
    if s.num_open_loop_steps < 1:  # <= chunk_size is eval's check (it may override either)
        p.append(f"model.sampler.num_open_loop_steps: must be >= 1, got {s.num_open_loop_steps}")
    return p


def _check_optimizer(config) -> list[str]:
    p = []
    o = config.optimizer
    if o.name != "adamw":
        p.append(f"optimizer.name: only adamw is supported, got {o.name!r}")
    for key in ("lr", "weight_decay"):
        if not o[key] >= 0:
            p.append(f"optimizer.{key}: must be >= 0, got {o[key]}")
    if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        p.append("optimizer.b1: betas must be in [0, 1)")
    for key in ("eps", "clip_norm"):
        if not o[key] > 0:
            p.append(f"optimizer.{key}: must be > 0, got {o[key]}")
    sc = config.scheduler
    if sc.name != "lambdalinear":
        p.append(f"scheduler.name: only lambdalinear is supported, got {sc.name!r}")
    if len({len(sc[k]) for k in ("cycle_lengths", "warm_up_steps", "f_start", "f_max", "f_min")}) != 1:
        p.append("scheduler: cycle_lengths, warm_up_steps, f_start, f_max, f_min need equal lengths")
    for i, (c, w) in enumerate(zip(sc.cycle_lengths, sc.warm_up_steps)):
        if not (c > 0 and 0 <= w < c):
            p.append(f"scheduler.warm_up_steps[{i}]: must be in [0, cycle_length)")
    return p


def _check_data(config, mesh_shape: Mapping[str, int] | None) -> list[str]:
    from cosmos_policy_jax.data.registry import DATASET_KINDS, DEMO_FORMATS  # the kinds that have a source

    p = []
    for section in ("dataloader_train", "dataloader_val"):
        dl = config[section]
        ds, gbs = dl.dataset, dl.global_batch_size
        checks = (
            (dl.batch_size >= 1, "batch_size", f"must be >= 1, got {dl.batch_size}"),
            (gbs is None or gbs >= 1, "global_batch_size", f"must be >= 1, got {gbs}"),
            (dl.num_workers >= 0, "num_workers", f"must be >= 0, got {dl.num_workers}"),
            (dl.timeout > 0, "timeout", f"must be > 0 seconds, got {dl.timeout}"),
            (ds.kind in DATASET_KINDS, "dataset.kind", f"must be one of {DATASET_KINDS}, got {ds.kind!r}"),
            (ds.chunk_size >= 1, "dataset.chunk_size", f"must be >= 1, got {ds.chunk_size}"),
            (ds.text_len >= 1, "dataset.text_len", f"must be >= 1, got {ds.text_len}"),
            (
                ds.final_image_size >= 16 and ds.final_image_size % 16 == 0,
                "dataset.final_image_size",
                f"must be a positive multiple of 16 (VAE x8, patch x2), got {ds.final_image_size}",
            ),
            (0.0 < ds.gamma <= 1.0, "dataset.gamma", f"must be in (0, 1], got {ds.gamma}"),
            (
                ds.text_dim == config.model.net.crossattn_emb_channels,
                "dataset.text_dim",
                f"must equal model.net.crossattn_emb_channels={config.model.net.crossattn_emb_channels}",
            ),
        )
        p += [f"{section}.{key}: {msg}" for ok, key, msg in checks if not ok]
        if ds.kind == "demo" and ds.get("demo_format", "hdf5") not in DEMO_FORMATS:
            p.append(f"{section}.dataset.demo_format: must be one of {DEMO_FORMATS}, got {ds.demo_format!r}")
        for key in ("demonstration_sampling_prob", "success_rollout_sampling_prob"):
            if not 0.0 <= ds[key] <= 1.0:
                p.append(f"{section}.dataset.{key}: must be in [0, 1], got {ds[key]}")
        if mesh_shape is not None and gbs is not None and gbs >= 1:
            dp = mesh_shape["data"] * mesh_shape["fsdp"]
            if gbs % dp:
                p.append(
                    f"{section}.global_batch_size: {gbs} is not divisible by the data-parallel size {dp} (data x fsdp)"
                )
    return p


def _check_paths(config, unresolved: Mapping[str, list[str]], check_files: bool) -> list[str]:
    """Unset variables in the job path, and with ``check_files`` in every used input path and the
    input files themselves (a dry run needs no input file)."""
    used = ["job.path_local"]
    if config.model.tokenizer.load_path:
        used.append("model.tokenizer.load_path")
    used += [f"checkpoint.{k}" for k in ("load_path", "resume_from_checkpoint") if config.checkpoint[k]]
    for section in ("dataloader_train", "dataloader_val"):
        if section == "dataloader_train" or config.trainer.run_validation:
            used += [f"{section}.dataset.{k}" for k in _dataset_needs(config[section].dataset)]
    if not check_files:
        used = ["job.path_local"]  # a dry run writes the job directory and reads no input
    p = []
    for field in used:
        value = get_field(config, field)
        hint = download_hint(value)
        if field == "checkpoint.load_path":
            hint += "; or pass --config.checkpoint.load_path='' to start the DiT from random weights"
        if field in unresolved:
            p.append(unset_message(field, unresolved[field], value) + hint)
        elif field == "job.path_local":
            continue  # a path that is a file: training/joblock.py names it when the job starts
        elif not value:
            p.append(f"{field}: required for dataset kind {get_field(config, field.rsplit('.', 1)[0]).kind!r}")
        elif not os.path.exists(value):
            p.append(f"{field}: not found: {value}{hint}")
    return p


def _check_parallel(config, num_devices: int | None, mesh_shape: Mapping[str, int] | None) -> list[str]:
    from cosmos_policy_jax.parallel.mesh import resolve_axis_sizes
    from cosmos_policy_jax.parallel.rules import check_rules, normalize_rules

    p = []
    par = config.parallel
    for key in ("data", "fsdp", "tensor"):
        if not (par[key] == -1 or par[key] >= 1):
            p.append(f"parallel.{key}: must be >= 1 or -1 (fill), got {par[key]}")
    if [par.data, par.fsdp, par.tensor].count(-1) > 1:
        p.append("parallel: at most one of data/fsdp/tensor may be -1")
    try:
        check_rules(normalize_rules(par.logical_axis_rules))
        if num_devices is not None:
            resolve_axis_sizes((par.data, par.fsdp, par.tensor), num_devices)
    except ValueError as e:
        p.append(str(e))
    n = config.model.net
    if mesh_shape is not None:
        tp = mesh_shape["tensor"]
        if n.num_heads % tp:
            p.append(f"parallel.tensor: {tp} must divide model.net.num_heads={n.num_heads}")
        if int(n.model_channels * n.mlp_ratio) % tp:
            p.append(f"parallel.tensor: {tp} must divide the MLP width {int(n.model_channels * n.mlp_ratio)}")
    ck = config.checkpoint
    p += [f"checkpoint.{k}: must be >= 1, got {ck[k]}" for k in ("save_iter", "keep_last") if ck[k] < 1]
    return p


def validate(
    config: config_dict.ConfigDict,
    *,
    num_devices: int | None = None,
    mesh_shape: Mapping[str, int] | None = None,
    check_paths: bool = True,
    unresolved: Mapping[str, list[str]] | None = None,
) -> None:
    """Check the config section by section; raise ``ConfigError`` listing every problem.

    The model section is checked by building the typed configs the trainer builds (``DiTConfig``,
    ``WanVAEConfig``, ``LatentLayout``, ``SDEConfig``, ``PolicyConfig``), so their limits are the only
    ones. ``mesh_shape``/``num_devices`` enable the device-dependent checks; ``check_paths`` the
    file-system checks (skipped by ``--dryrun``). Unset variables in ``job.path_local`` always fail.
    """
    p = _check_values(config)
    if not p:  # the section checks compare numbers: only when they are all sane
        p += _check_job_trainer(config)
        p += _check_model(config)
        p += _check_optimizer(config)
        p += _check_data(config, mesh_shape)
        p += _check_parallel(config, num_devices, mesh_shape)
    p += _check_paths(config, unresolved or {}, check_paths)
    if p:
        raise ConfigError(p)


def to_plain_dict(config: config_dict.ConfigDict | config_dict.FrozenConfigDict) -> dict:
    """YAML-safe Python (tuples become lists, references resolved, placeholders None)."""
    return to_plain(config if hasattr(config, "to_dict") else dict(config))


def to_yaml(config) -> str:
    return yaml.safe_dump(to_plain_dict(config), sort_keys=True, default_flow_style=False)


def save_yaml(config, path: str) -> str:
    atomic_write_text(path, to_yaml(config))
    return path


# The directory holding ``cosmos_policy_jax/`` and ``configs/`` (a checkout, or site-packages when installed).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def locate_config_flag(argv: list[str]) -> list[str]:
    """``argv`` with the ``--config`` file found: as given, else under the package's parent (so
    ``configs/cosmos_policy.py`` works from any directory). A file found nowhere raises ``ConfigError``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            at, value = i, arg[len("--config=") :]
        elif arg == "--config" and i + 1 < len(out):
            at, value = i + 1, out[i + 1]
        else:
            continue
        path, sep, rest = value.partition(":")
        if not os.path.isfile(path):
            alt = os.path.join(_PACKAGE_PARENT, path)
            if os.path.isabs(path) or not os.path.isfile(alt):
                raise ConfigError([f"--config: config file not found: {path}"])
            path = alt
        out[at] = ("--config=" if at == i else "") + path + sep + rest
    return out


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
