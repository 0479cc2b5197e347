r"""Train Cosmos Policy.

    python -m cosmos_policy_jax.train --config=configs/cosmos_policy.py:libero \
        --config.trainer.max_iter=10000 [--dryrun]

Launch order: parse flags and config -> (dry run: print, write config.yaml, exit) -> validate the
config and its input files, compare with the job's saved config.yaml (no backend yet: a missing
weight file fails in seconds) -> distributed init -> mesh -> device checks -> freeze -> trainer
(job directory files once the inputs have loaded) -> train.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_dict, config_flags

from cosmos_policy_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and arg, e.g. configs/cosmos_policy.py:libero", lock_config=True
)
_DRYRUN = flags.DEFINE_bool("dryrun", False, "Print the resolved config, write config.yaml and exit.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process jobs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process job.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process job.")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Local device ids this process uses (default: all).")


def _check_restart(config, *, dryrun: bool = False) -> None:
    """A job restarted with another config: print what changed; stop on shape/data changes of a job that
    has checkpoints, unless trainer.allow_config_drift (its checkpoints would not fit, or mix data)."""
    from cosmos_policy_jax import config_drift

    job = config.job.path_local
    saved = config_drift.read_yaml(os.path.join(job, "config.yaml"))
    changes = config_drift.diff(saved, config) if saved is not None else []
    if not changes:
        return
    print(f"[cosmos_policy_jax] config differs from {job}/config.yaml: {config_drift.describe(changes)}", flush=True)
    blocking = config_drift.shape_or_data_changes(changes)
    ckpts = os.path.join(job, "checkpoints")
    started = os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
    if blocking and started and not dryrun and not config.trainer.allow_config_drift:
        cli.fail(
            f"job {job} has checkpoints made with other shapes or data ({config_drift.describe(blocking)}); "
            "use another job.path_local, or pass --config.trainer.allow_config_drift=True"
        )


def _load_config(argv: list[str]) -> config_dict.ConfigDict:
    cli.reject_positional(argv)
    try:
        config: config_dict.ConfigDict = _CONFIG.value
    except OSError as e:  # the file exists (checked while parsing) but does not load
        cli.fail(f"cannot load --config: {cli.describe(e.__cause__ or e)}")
    if config is None:
        cli.fail("--config is required, e.g. --config=configs/cosmos_policy.py:demo")
    return config


def _dryrun(config: config_dict.ConfigDict, unresolved: dict, overrides: list[str]) -> int:
    """No device backend, no dataset: static checks only, then print and write config.yaml."""
    from cosmos_policy_jax import config_lib

    try:
        config_lib.validate(config, check_paths=False, unresolved=unresolved)
        _check_restart(config, dryrun=True)
    except config_lib.ConfigError as e:
        cli.fail(f"invalid config: {cli.describe(e)}")
    print(config_lib.to_yaml(config))
    print("overrides:", overrides if overrides else "(none)")
    path = config_lib.save_yaml(config, os.path.join(config.job.path_local, "config.yaml"))
    print(f"config written to {os.path.abspath(path)}")
    return cli.EXIT_OK


def _validate_inputs(config: config_dict.ConfigDict, unresolved: dict) -> None:
    """Input files and static checks before any backend or model: a missing weight file fails in seconds."""
    from cosmos_policy_jax import config_lib

    try:
        config_lib.validate(config, unresolved=unresolved)
        _check_restart(config)
    except config_lib.ConfigError as e:
        cli.fail(f"invalid config: {cli.describe(e)}")


def _init_distributed() -> None:
    from cosmos_policy_jax.parallel import distributed

    try:
        local_ids = tuple(int(x) for x in _LOCAL_DEVICES.value) if _LOCAL_DEVICES.value else None
    except ValueError:
        cli.fail(f"--local_device_ids must be comma-separated integers, got {','.join(_LOCAL_DEVICES.value)!r}")
    args = distributed.DistributedArgs(
        coordinator_address=_COORD.value, num_processes=_NPROC.value, process_id=_PID.value, local_device_ids=local_ids
    )
    try:
        distributed.initialize(args)
    except (ValueError, RuntimeError) as e:
        cli.fail(cli.describe(e))


def _make_mesh(config: config_dict.ConfigDict, unresolved: dict):
    """The mesh, after the checks that need the device count and the mesh shape."""
    import jax

    from cosmos_policy_jax import config_lib
    from cosmos_policy_jax.parallel.mesh import make_mesh

    try:
        config_lib.validate(config, num_devices=jax.device_count(), unresolved=unresolved, check_paths=False)
        mesh = make_mesh(config.parallel)
        config_lib.validate(config, mesh_shape=dict(mesh.shape), unresolved=unresolved, check_paths=False)
    except (config_lib.ConfigError, ValueError) as e:
        cli.fail(f"invalid config: {cli.describe(e)}")
    return mesh


def _freeze(config: config_dict.ConfigDict) -> config_dict.FrozenConfigDict:
    """All processes agree on the job name and directory (the reference broadcasts job.name)."""
    from cosmos_policy_jax.parallel import distributed

    with config.unlocked():
        config.job.name = distributed.broadcast_string(config.job.name)
        config.job.path_local = distributed.broadcast_string(config.job.path_local)
    return config_dict.FrozenConfigDict(config)


def _train(frozen: config_dict.FrozenConfigDict, mesh, launch_info: dict) -> int:
    from cosmos_policy_jax.data.global_batch import DataLoaderTimeout
    from cosmos_policy_jax.training import loop

    try:
        return loop.run(frozen, mesh, launch_info=launch_info)
    except DataLoaderTimeout as e:
        logging.error("%s", e)
        cli.fail_now(cli.EXIT_STALLED, f"{type(e).__name__}: {cli.describe(e)}")
    except Exception as e:
        if not cli.is_bad_input(e):
            raise
        logging.error("%s", e)
        cli.fail(f"{type(e).__name__}: {cli.describe(e)}")


def main(argv: list[str]) -> int:
    config = _load_config(argv)
    from cosmos_policy_jax import config_lib

    overrides = config_lib.config_overrides(sys.argv[1:])
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    unresolved = config_lib.resolve(config)
    if _DRYRUN.value:
        return _dryrun(config, unresolved, overrides)
    cli.quiet_logging()
    _validate_inputs(config, unresolved)
    _init_distributed()
    cli.enable_compilation_cache()
    mesh = _make_mesh(config, unresolved)
    launch_info = {"argv": sys.argv, "overrides": overrides, "config_file": config_file}
    return _train(_freeze(config), mesh, launch_info)


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
