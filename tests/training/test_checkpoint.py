"""Checkpoints across a change of ``trainer.grad_accum_iter`` (1 <-> k > 1): the optimizer state
changes form (no accumulator at 1, ``optax.MultiSteps`` above), the AdamW moments carry over."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training import metrics as metrics_lib
from cosmos_policy_jax.training import optimizer as opt_lib
from cosmos_policy_jax.training.state import TrainState
from tests.training.helpers import mesh_for, tiny_config
from tests.training.test_loop import _run


def _state(k: int, mesh, steps: int) -> TrainState:
    c = tiny_config(**{"trainer.grad_accum_iter": k})
    tx, _ = opt_lib.make_optimizer(c)
    sh = NamedSharding(mesh, PartitionSpec("fsdp"))
    params = {"w": jax.device_put(jnp.linspace(-1.0, 1.0, 8), sh), "b": jax.device_put(jnp.full((8,), 0.5), sh)}
    opt_state = tx.init(params)
    rng = np.random.default_rng(k)
    for _ in range(steps * k):  # full optimizer steps: the accumulator ends empty, as at a checkpoint
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        upd, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
    state = TrainState(
        step=jnp.asarray(steps * k, jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jnp.zeros((2,), jnp.uint32),
        loss_scale=jnp.ones(()),
        good_steps=jnp.zeros((), jnp.int32),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )
    # As in the trainer, every array lives on the mesh (scalars replicated).
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if x.sharding.device_set == sh.device_set else jax.device_put(x, rep), state)


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("saved_k, resumed_k", [(1, 3), (3, 1)])
def test_restore_converts_the_optimizer_state_form(tmp_path, saved_k, resumed_k):
    mesh = mesh_for(tiny_config(), (1, 2, 1))
    saved = _state(saved_k, mesh, steps=2)
    target = _abstract(_state(resumed_k, mesh, steps=0))
    ck = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"), async_save=False)
    ck.save(2, saved, b'{"position": 2}', {})
    ck.wait()
    for restored, data in (ck.restore(2, target), ck.restore_latest(target)[1:]):
        assert data == b'{"position": 2}'
        assert jax.tree.structure(restored) == jax.tree.structure(target)
        _leaves_equal(restored.params, saved.params)
        _leaves_equal(restored.opt_state.inner_opt_state, saved.opt_state.inner_opt_state)
        assert int(restored.opt_state.gradient_step) == 2
        if resumed_k > 1:
            assert int(restored.opt_state.mini_step) == 0
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(restored.opt_state.acc_grads))
            assert restored.opt_state.acc_grads["w"].sharding == target.opt_state.acc_grads["w"].sharding
        assert restored.opt_state.inner_opt_state[1][0].mu["w"].sharding == saved.params["w"].sharding
    ck.close()


@pytest.mark.slow
def test_training_resumes_after_changing_grad_accum_iter(tmp_path):
    assert _run(tmp_path, 2) == 0
    assert _run(tmp_path, 4, **{"trainer.grad_accum_iter": 2}) == 0
    assert _run(tmp_path, 5) == 0
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["optimizer_step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) for r in rows)
