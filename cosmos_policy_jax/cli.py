"""What the absl entry points (``train``, ``eval``, ``serve``) share: exit codes, one-line errors,
flag parsing and the persistent compilation cache.

Bad input (a config, data, weights, a checkpoint, a job directory, a flag) ends a command with one
``error: ...`` line on stderr and exit code 2, never a traceback; anything else is a bug and keeps
its traceback. Only the standard library is imported here at module level, so that parsing flags
and reporting a bad command line never wait for JAX.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

# Exit codes (documented in docs/reliability.md).
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_STALLED = 3  # no batch within dataloader_*.timeout (a stuck worker or file system)
EXIT_PREEMPTED = 143  # overridden by trainer.exit_code_on_preemption

CONFIG_HINT = "overrides look like --config.trainer.max_iter=10"


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input. Imported when asked (an error is being handled), so
    that commands that never fail do not pay for the training modules' imports."""
    from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, UnsafeCheckpointError
    from cosmos_policy_jax.config_lib import ConfigError
    from cosmos_policy_jax.convert.core import WeightImportError
    from cosmos_policy_jax.data.errors import DataError
    from cosmos_policy_jax.eval.errors import EvalInputError
    from cosmos_policy_jax.training.checkpoint import CheckpointError
    from cosmos_policy_jax.training.joblock import JobDirectoryError

    return (
        ConfigError,
        DataError,
        WeightImportError,
        CheckpointFormatError,
        UnsafeCheckpointError,
        CheckpointError,
        JobDirectoryError,
        EvalInputError,
        FileNotFoundError,
    )


def is_bad_input(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    return isinstance(error, (*bad_input_errors(), *also))


def describe(error: BaseException) -> str:
    """An error as one line: a config's problems joined by "; ", other multi-line reports joined by spaces."""
    problems = getattr(error, "problems", None)
    if problems:
        return "; ".join(problems)
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def print_error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print_error(msg)
    sys.exit(code)


def fail_now(code: int, msg: str) -> NoReturn:
    """Report and leave at once: a stuck thread (e.g. the loader that failed the run) would block a normal exit."""
    from absl import logging

    print_error(msg)
    logging.flush()
    sys.stdout.flush()
    os._exit(code)


def reject_positional(argv: list[str]) -> None:
    """Exit 2 on positional arguments (absl leaves them to ``main``): usually a mistyped override."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; {CONFIG_HINT}")


def quiet_logging() -> None:
    """orbax and jax log every save and compile at INFO; keep the console to the command's own lines and
    warnings unless the user asks for more (--verbosity=0 or -v 0 restores INFO)."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


# ---------------------------------------------------------------------------------------------------
# Flags


def clean_flag_error(error: Exception, argv: list[str]) -> str:
    """A flag or config-override error (ml_collections' multi-line reports) as one line."""
    text = str(error).encode().decode("unicode_escape") if "\\n" in str(error) else str(error)
    lines = [ln.strip().strip("'\"") for ln in text.splitlines() if ln.strip().strip("'\"")]
    if "Traceback" in text:  # an exception inside get_config: keep its last line
        return lines[-1]
    missing = re.match(r"^'?([A-Za-z0-9_]+)'?$", lines[0]) if lines else None
    if isinstance(error, AttributeError) and missing:
        # ml_collections names only the last key; name the whole override the user typed.
        key = missing.group(1)
        bad = [
            a[len("--config.") :].split("=")[0]
            for a in argv
            if a.startswith("--config.") and a.split("=")[0].endswith("." + key)
        ]
        return f"unknown config key {bad[0] if bad else key!r}. " + " ".join(lines[1:])
    return " ".join(lines) or type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing (the ``flags_parser`` of ``app.run``) with the ``--config`` file found from any
    directory; a missing config file, a bad flag or a bad override is one line and exit 2."""
    from absl import flags

    from cosmos_policy_jax import config_lib

    try:
        located = config_lib.locate_config_flag(argv)
    except config_lib.ConfigError as e:
        fail(describe(e))
    try:
        return flags.FLAGS(located)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        fail(f"bad command line: {clean_flag_error(e, argv)}")


def tri_state(value: str) -> bool | None:
    """An ``auto|true|false`` enum flag as None/True/False."""
    return None if value == "auto" else value == "true"


# ---------------------------------------------------------------------------------------------------
# Compilation cache and start-up


def default_compilation_cache() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else a directory shared by training, evaluation and serving."""
    return os.environ.get(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "cosmos_policy_jax", "jax")
    )


def enable_compilation_cache(path: str | None = None) -> None:
    """Persist compiled programs across runs (restarts, resumes and repeated evaluations skip
    recompiling the model: minutes on a CPU); ``''`` disables it."""
    path = default_compilation_cache() if path is None else path
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # an explicit setting wins (tests: 0)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def run(main: Callable[[list[str]], int | None], *, define_flags: Callable[[], None] | None = None,
        help_module: str | None = None) -> None:  # fmt: skip
    """Start an entry point: XLA process settings before any backend, its flags, then ``main``.

    ``help_module``: the module whose flags ``--help`` lists (absl lists only the main module's,
    which for ``python -m pkg`` is ``pkg/__main__.py``).
    """
    from absl import app, flags

    from cosmos_policy_jax import xla_env

    xla_env.configure_process()  # before any backend starts; see xla_env for the measurements
    if define_flags is not None:
        define_flags()
    if help_module is not None:
        for flag in flags.FLAGS.flags_by_module_dict().get(help_module, []):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse_flags)
