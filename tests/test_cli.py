"""The shared entry-point helpers: one-line errors, the bad-input set, flag errors, the compile cache."""

from __future__ import annotations

import pytest

from cosmos_policy_jax import cli
from cosmos_policy_jax.config_lib import ConfigError


def test_describe_is_one_line():
    assert cli.describe(ConfigError(["a.b: bad", "c: missing"])) == "a.b: bad; c: missing"
    assert cli.describe(RuntimeError("first\n   second  \n\nthird")) == "first second third"


def test_bad_input_set_covers_the_package_errors_and_not_bugs():
    from cosmos_policy_jax.common.torch_pickle import UnsafeCheckpointError
    from cosmos_policy_jax.data.errors import DataError
    from cosmos_policy_jax.eval.errors import EvalInputError
    from cosmos_policy_jax.training.checkpoint import CorruptCheckpointError
    from cosmos_policy_jax.training.joblock import JobLockedError

    for e in (
        ConfigError(["x"]),
        DataError("d"),
        EvalInputError("e"),
        CorruptCheckpointError("c"),
        JobLockedError("j"),
        UnsafeCheckpointError("u"),
        FileNotFoundError(2, "missing"),
    ):
        assert cli.is_bad_input(e), type(e).__name__
    for bug in (ValueError("v"), KeyError("k"), RuntimeError("r"), TypeError("t")):
        assert not cli.is_bad_input(bug)
    assert cli.is_bad_input(ValueError("v"), also=(ValueError,))


def test_clean_flag_error_names_the_whole_override():
    err = AttributeError("'nope'\nDid you mean ...")
    msg = cli.clean_flag_error(err, ["--config=x.py", "--config.model.nope=1"])
    assert msg.startswith("unknown config key 'model.nope'")
    traceback = ValueError("Traceback (most recent call last):\n  File x\nKeyError: 'arg'")
    assert cli.clean_flag_error(traceback, []).startswith("KeyError: ")  # the exception inside get_config
    assert cli.clean_flag_error(ValueError(""), []) == "ValueError"


def test_failures_exit_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.reject_positional(["prog", "trainer.max_iter=3"])
    assert info.value.code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unexpected arguments ['trainer.max_iter=3']")
    cli.reject_positional(["prog"])  # nothing positional: no exit


def test_parse_flags_reports_a_missing_config_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.parse_flags(["prog", f"--config={tmp_path}/nope.py:demo"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --config: config file not found: {tmp_path}/nope.py"


def test_tri_state():
    assert [cli.tri_state(v) for v in ("auto", "true", "false")] == [None, True, False]


def test_compilation_cache(monkeypatch, tmp_path):
    import jax

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "from_env"))
    assert cli.default_compilation_cache() == str(tmp_path / "from_env")
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
        cli.enable_compilation_cache(str(tmp_path / "cache"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # an explicit setting wins
        cli.enable_compilation_cache(str(tmp_path / "cache2"))
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        cli.enable_compilation_cache("")  # disabled: nothing changes
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache2")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
