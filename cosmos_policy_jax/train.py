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
import re
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and arg, e.g. configs/cosmos_policy.py:libero", lock_config=True
)
_DRYRUN = flags.DEFINE_bool("dryrun", False, "Print the resolved config, write config.yaml and exit.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process jobs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process job.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process job.")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Local device ids this process uses (default: all).")

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_STALLED = 3  # no batch within dataloader_*.timeout (a stuck worker or file system)
EXIT_PREEMPTED = 143  # overridden by trainer.exit_code_on_preemption


def _describe(e: BaseException) -> str:
    """An error as one line: a config's problems joined by "; ", other multi-line reports joined by spaces."""
    problems = getattr(e, "problems", None)
    if problems:
        return "; ".join(problems)
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip())


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


def _fail_now(code: int, msg: str) -> None:
    """Report and leave at once: the stuck loader thread that failed the run would block a normal exit."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    logging.flush()
    sys.stdout.flush()
    os._exit(code)


def _enable_compilation_cache(jax) -> None:
    """Persist compiled steps across runs (restarts and resumes skip recompiling); opt out with ''."""
    path = os.environ.get(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "cosmos_policy_jax", "jax")
    )
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # an explicit setting wins (tests: 0)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


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
        _fail(
            f"job {job} has checkpoints made with other shapes or data ({config_drift.describe(blocking)}); "
            "use another job.path_local, or pass --config.trainer.allow_config_drift=True"
        )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; overrides look like --config.trainer.max_iter=10")
    try:
        config: config_dict.ConfigDict = _CONFIG.value
    except OSError as e:  # the file exists (checked while parsing) but does not load
        _fail(f"cannot load --config: {_describe(e.__cause__ or e)}")
    if config is None:
        _fail("--config is required, e.g. --config=configs/cosmos_policy.py:demo")
    from cosmos_policy_jax import config_lib

    overrides = config_lib.config_overrides(sys.argv[1:])
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    unresolved = config_lib.resolve(config)

    if _DRYRUN.value:
        # No device backend, no dataset: static checks only, then print and write config.yaml.
        try:
            config_lib.validate(config, check_paths=False, unresolved=unresolved)
            _check_restart(config, dryrun=True)
        except config_lib.ConfigError as e:
            _fail(f"invalid config: {_describe(e)}")
        print(config_lib.to_yaml(config))
        print("overrides:", overrides if overrides else "(none)")
        path = config_lib.save_yaml(config, os.path.join(config.job.path_local, "config.yaml"))
        print(f"config written to {os.path.abspath(path)}")
        return EXIT_OK

    # orbax and jax log every save and compile at INFO; keep the console to the progress lines and
    # warnings unless the user asks for more (--verbosity=0 or -v 0 restores INFO).
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    # Input files and static checks before any backend or model: a missing weight file fails in seconds.
    try:
        config_lib.validate(config, unresolved=unresolved)
        _check_restart(config)
    except config_lib.ConfigError as e:
        _fail(f"invalid config: {_describe(e)}")

    from cosmos_policy_jax.parallel import distributed

    try:
        local_ids = tuple(int(x) for x in _LOCAL_DEVICES.value) if _LOCAL_DEVICES.value else None
    except ValueError:
        _fail(f"--local_device_ids must be comma-separated integers, got {','.join(_LOCAL_DEVICES.value)!r}")
    try:
        distributed.initialize(
            distributed.DistributedArgs(
                coordinator_address=_COORD.value,
                num_processes=_NPROC.value,
                process_id=_PID.value,
                local_device_ids=local_ids,
            )
        )
    except (ValueError, RuntimeError) as e:
        _fail(_describe(e))

    import jax

    from cosmos_policy_jax.parallel.mesh import make_mesh

    _enable_compilation_cache(jax)

    try:
        config_lib.validate(config, num_devices=jax.device_count(), unresolved=unresolved, check_paths=False)
        mesh = make_mesh(config.parallel)
        config_lib.validate(config, mesh_shape=dict(mesh.shape), unresolved=unresolved, check_paths=False)
    except (config_lib.ConfigError, ValueError) as e:
        _fail(f"invalid config: {_describe(e)}")

    # All processes agree on the job name and directory (the reference broadcasts job.name).
    with config.unlocked():
        config.job.name = distributed.broadcast_string(config.job.name)
        config.job.path_local = distributed.broadcast_string(config.job.path_local)
    frozen = config_dict.FrozenConfigDict(config)

    from cosmos_policy_jax.data.global_batch import DataLoaderTimeout
    from cosmos_policy_jax.training import loop

    try:
        return loop.run(
            frozen,
            mesh,
            launch_info={"argv": sys.argv, "overrides": overrides, "config_file": config_file},
        )
    except DataLoaderTimeout as e:
        logging.error("%s", e)
        _fail_now(EXIT_STALLED, f"{type(e).__name__}: {_describe(e)}")
    except loop.BAD_INPUT_ERRORS as e:
        logging.error("%s", e)
        _fail(f"{type(e).__name__}: {_describe(e)}")
    return EXIT_OK


def _clean_flag_error(e: Exception, argv: list[str]) -> str:
    text = str(e).encode().decode("unicode_escape") if "\\n" in str(e) else str(e)
    lines = [ln.strip().strip("'\"") for ln in text.splitlines() if ln.strip().strip("'\"")]
    if "Traceback" in text:  # an exception inside get_config: keep its last line
        return lines[-1]
    missing = re.match(r"^'?([A-Za-z0-9_]+)'?$", lines[0]) if lines else None
    if isinstance(e, AttributeError) and missing:
        # ml_collections names only the last key; name the whole override the user typed.
        key = missing.group(1)
        bad = [
            a[len("--config.") :].split("=")[0]
            for a in argv
            if a.startswith("--config.") and a.split("=")[0].endswith("." + key)
        ]
        return f"unknown config key {bad[0] if bad else key!r}. " + " ".join(lines[1:])
    return " ".join(lines)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with config-override errors (typos, wrong types) as one clean line."""
    try:
        return flags.FLAGS(_locate_config(argv))
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: bad command line: {_clean_flag_error(e, argv)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)


def _locate_config(argv: list[str]) -> list[str]:
    """``--config`` found from any directory; a missing file is one line, exit 2."""
    from cosmos_policy_jax import config_lib

    try:
        return config_lib.locate_config_flag(argv)
    except config_lib.ConfigError as e:
        print(f"error: {_describe(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)


def run() -> None:
    from cosmos_policy_jax import xla_env

    xla_env.configure_process()  # before any backend starts; see xla_env for the measurements
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
