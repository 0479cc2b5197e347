"""Test setup: 8 fake CPU devices before JAX touches a backend; a shared compilation cache."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The CLI processes the tests start keep XLA's own CPU kernels, whose executables the shared
# compilation cache can store (oneDNN ones cannot; see cosmos_policy_jax/xla_env.py). The default
# (oneDNN on) is covered by tests/test_train_cli.py::test_cpu_training_uses_onednn_by_default.
os.environ.setdefault("COSMOS_POLICY_CPU_ONEDNN", "0")

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
# Many tests compile the same tiny programs (train-state init, the VAE init, the step on a given
# mesh); a persistent cache shared by the pytest-xdist workers compiles each of them once.
_CACHE = os.environ.get(
    "COSMOS_POLICY_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "cosmos_policy_jax_test_cache")
)
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
