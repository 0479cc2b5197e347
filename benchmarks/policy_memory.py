r"""Peak memory of one policy query at a given model size, from XLA's compiled memory analysis.

    python benchmarks/policy_memory.py [--config=libero] [--batch=1] [--json]

Compiles ``policy.inference.jit_policy_fn`` (``jax.jit`` over the split DiT/VAE states) for abstract
parameters (nothing is allocated), so the 2B LIBERO model can be measured on a laptop. Arguments =
the weights (one copy), plus the inputs; temp = activations and scratch.
"""

from __future__ import annotations

import argparse
import json
import types


def measure(config_arg: str, batch: int) -> dict:
    import jax

    from configs.cosmos_policy import get_config
    from cosmos_policy_jax.parallel.mesh import make_mesh
    from cosmos_policy_jax.policy.api import abstract_inputs, compiled_memory
    from cosmos_policy_jax.policy.config import PolicyConfig
    from cosmos_policy_jax.policy.inference import jit_policy_fn
    from cosmos_policy_jax.training import setup

    config = get_config(config_arg)
    mesh = make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    defs = setup.build(config, mesh).defs  # the definitions load_policy builds (nothing materialised)
    # The DiT's non-parameter state is empty or tiny; params + rest as one state, as the policy holds it.
    from flax import nnx

    net_def, net_state = nnx.split(nnx.eval_shape(lambda: nnx.merge(defs.dit_graphdef, defs.dit_abstract_params,
                                                                     defs.dit_abstract_rest)))  # fmt: skip
    fn = jit_policy_fn(PolicyConfig.from_config(config), net_def, defs.vae_graphdef)
    mem = compiled_memory(fn, net_state, defs.vae_abstract_params, abstract_inputs(config, batch))
    n_params = sum(int(x.size) for x in jax.tree.leaves(defs.dit_abstract_params))
    gib = {k.replace("_in_bytes", "").replace("_bytes", "") + "_gib": round(v / 2**30, 3)
           for k, v in mem.items() if k.endswith("bytes")}  # fmt: skip
    return {"config": config_arg, "batch": batch, "dit_params": n_params, "backend": jax.default_backend(),
            **gib, "compile_s": mem["compile_s"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="libero")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = measure(a.config, a.batch)
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
