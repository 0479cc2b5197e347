"""Serving a trained policy over the network: ``python -m cosmos_policy_jax.serve`` (docs/serving.md)."""
