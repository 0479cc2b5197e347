from cosmos_policy_jax.serve.main import run

if __name__ == "__main__":
    run()
