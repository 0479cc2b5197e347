"""Test setup: 8 fake CPU devices before JAX touches a backend; a shared compilation cache."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
