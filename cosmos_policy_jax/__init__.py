"""Cosmos Policy in JAX."""

from cosmos_policy_jax.data import workers as _workers

# First thing in a spawned data worker: keep jax out of it (see data/workers.py).
_workers.keep_jax_out_of_spawned_worker()
