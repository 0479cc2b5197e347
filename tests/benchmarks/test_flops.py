"""The analytic FLOP counts (training/flops.py) agree with XLA's cost analysis for the ``bench`` config.

Compile only (nothing runs). The DiT blocks are unrolled (``scan_layers=False``, same math) because
XLA's cost analysis counts a while-loop body once.
"""

from __future__ import annotations

import jax
import pytest

from benchmarks import common
from configs.cosmos_policy import get_config
from cosmos_policy_jax import xla_env
from cosmos_policy_jax.parallel.mesh import make_mesh
from cosmos_policy_jax.training import flops as flops_lib

TOLERANCE = 0.10

# oneDNN custom calls (convolutions, matmuls) are opaque to XLA's cost analysis: nothing to compare then.
pytestmark = pytest.mark.skipif(
    xla_env.onednn_enabled(),
    reason="XLA_FLAGS enables oneDNN custom calls, whose FLOPs XLA's cost analysis does not count",
)


@pytest.fixture(scope="module")
def bench():
    config = get_config("bench")
    config.model.net.scan_layers = False
    mesh = make_mesh(config.parallel, jax.devices()[:1])
    b = common.abstract_bench(config, mesh)
    per_sample = flops_lib.train_flops_per_sample(config)
    shape, _ = flops_lib.policy_sample_shape(config)
    n = b.global_batch
    with jax.set_mesh(mesh):
        vae = common.make_vae_encode(b).lower(b.vae, b.batch["video"]).compile()
        dit_fwd = (
            common.make_dit_loss(b)
            .lower(b.state.params, common.abstract_latent(b), common.dit_batch(b.batch), b.rest, jax.random.key(0))
            .compile()
        )
        full = common.jit_full_step(b).lower(b.state, b.batch, b.vae, b.rest).compile()
    return {
        "xla": {"vae": common.xla_flops(vae), "dit_forward": common.xla_flops(dit_fwd), "full": common.xla_flops(full)},
        "analytic": {
            "vae": per_sample["vae_encode"] * n,
            "dit_forward": flops_lib.dit_forward_flops(config.model.net, shape) * n,
            "dit_train": per_sample["dit_train"] * n,
            "full": per_sample["total"] * n,
        },
    }


def _check(xla: float, analytic: float, what: str) -> None:
    assert xla is not None, f"no XLA cost analysis for {what}"
    rel = analytic / xla - 1.0
    assert abs(rel) < TOLERANCE, f"{what}: analytic {analytic:.4g} vs XLA {xla:.4g} FLOPs ({rel:+.1%})"


def test_vae_encode_flops(bench):
    _check(bench["xla"]["vae"], bench["analytic"]["vae"], "VAE encode")


def test_dit_forward_flops(bench):
    _check(bench["xla"]["dit_forward"], bench["analytic"]["dit_forward"], "DiT forward")


def test_full_training_step_flops(bench):
    _check(bench["xla"]["full"], bench["analytic"]["full"], "full training step")


def test_dit_training_flops(bench):
    # XLA's full step minus its VAE encode: the DiT forward, backward, loss and optimizer.
    _check(bench["xla"]["full"] - bench["xla"]["vae"], bench["analytic"]["dit_train"], "DiT training step")
