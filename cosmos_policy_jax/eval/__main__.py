"""``python -m cosmos_policy_jax.eval``: see ``cosmos_policy_jax/eval/main.py``."""

from cosmos_policy_jax.eval.main import run

if __name__ == "__main__":
    run()
