"""The CPU oneDNN default of the entry points: added once, explicit settings and the opt-out respected."""

from cosmos_policy_jax import xla_env


def test_adds_flag_to_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_env.enable_cpu_onednn(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", xla_env.ONEDNN_FLAG]
    assert not xla_env.enable_cpu_onednn(env)  # idempotent
    assert env["XLA_FLAGS"].count(xla_env.ONEDNN_FLAG_NAME) == 1


def test_explicit_setting_wins():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_onednn_custom_call=false"}
    assert not xla_env.enable_cpu_onednn(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_onednn_custom_call=false"


def test_opt_out():
    for value in ("0", "false", "OFF"):
        env = {xla_env.OPT_OUT_ENV: value}
        assert not xla_env.enable_cpu_onednn(env)
        assert "XLA_FLAGS" not in env
    env = {xla_env.OPT_OUT_ENV: "1"}
    assert xla_env.enable_cpu_onednn(env) and env["XLA_FLAGS"] == xla_env.ONEDNN_FLAG
