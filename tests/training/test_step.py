"""The jitted training step: mesh equivalence, Megatron/FSDP shardings, gradient accumulation,
non-finite skipping inside the step, and the fixture's first loss through checkpoint.load_path."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.training.helpers import StepRunner, flat_params, host_batches, mesh_for, tiny_config

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def _with_noise(batch: dict, seed: int = 0) -> dict:
    """Fixed sigma/epsilon per sample so runs with different micro-batching see the same noise."""
    b = dict(batch)
    n = np.asarray(batch["video"]).shape[0]
    rng = np.random.default_rng(seed)
    b["_sigma"] = (3.0 * np.exp(rng.normal(np.log(4.0), 1.2, size=(n, 1)))).astype(np.float32)
    return b


@pytest.fixture(scope="module")
def shared_batches():
    c = tiny_config(**{"dataloader_train.global_batch_size": 8})
    mesh = mesh_for(c, (8, 1, 1))
    return [jax.device_get(b) for b in host_batches(c, mesh, 2)]


def test_same_step_on_three_meshes(shared_batches):
    results = []
    for shape in MESHES:
        c = tiny_config(**{"dataloader_train.global_batch_size": 8})
        mesh = mesh_for(c, shape)
        runner = StepRunner(c, mesh, shared_batches[0])
        losses = [float(runner.run(b)["loss"]) for b in shared_batches]
        results.append((losses, flat_params(runner.state)))
    ref_losses, ref_params = results[0]
    assert all(np.isfinite(ref_losses))
    for losses, params in results[1:]:
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
        for k in ref_params:
            np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6, err_msg=str(k))


@pytest.mark.slow
def test_fsdp_step_keeps_activations_per_device():
    # fsdp=8 with 2 samples per device must need about the temporaries of one device with 2 samples,
    # not those of the global batch of 16 (GSPMD gathers activations unless the DiT pins the residual
    # stream's batch axis: 1.5x here without it, 4.5x for the 2B libero step).
    def temp_bytes(shape, global_batch):
        c = tiny_config(**{"dataloader_train.global_batch_size": global_batch})
        mesh = mesh_for(c, shape)
        batch = host_batches(c, mesh, 1)[0]
        runner = StepRunner(c, mesh, batch)
        with jax.set_mesh(mesh):
            compiled = runner.step.lower(runner.state, runner.put(batch), runner.vae, runner.rest).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    sharded, single = temp_bytes((1, 8, 1), 16), temp_bytes((1, 1, 1), 2)
    assert sharded <= 1.2 * single, (sharded, single)


def test_compiled_step_shardings_split_heads_mlp_and_state(shared_batches):
    c = tiny_config(**{"dataloader_train.global_batch_size": 8})
    mesh = mesh_for(c, (1, 2, 4))
    runner = StepRunner(c, mesh, shared_batches[0])
    with jax.set_mesh(mesh):
        compiled = runner.step.lower(runner.state, runner.put(shared_batches[0]), runner.vae, runner.rest).compile()
    out_state = compiled.output_shardings[0]
    params = out_state.params
    blocks = params["blocks"]

    def spec(var):
        return tuple(var.get_value().spec if hasattr(var, "get_value") else var.spec)

    # Column-parallel q/k/v and MLP-in (output dim on tensor), row-parallel out-proj and MLP-out.
    assert spec(blocks["self_attn"]["q_proj"]["kernel"])[1:] == ("fsdp", "tensor")
    assert spec(blocks["self_attn"]["output_proj"]["kernel"])[1:] == ("tensor", "fsdp")
    assert spec(blocks["mlp"]["layer1"]["kernel"])[1:] == ("fsdp", "tensor")
    assert spec(blocks["mlp"]["layer2"]["kernel"])[1:] == ("tensor", "fsdp")
    # Adam moments carry the same shardings as their parameters.
    inner = out_state.opt_state.inner_opt_state
    adam = inner[1][0]
    assert spec(adam.mu["blocks"]["mlp"]["layer1"]["kernel"])[1:] == ("fsdp", "tensor")
    assert spec(adam.nu["blocks"]["self_attn"]["output_proj"]["kernel"])[1:] == ("tensor", "fsdp")
    # Per-device shards really are 1/8 of the MLP kernel on this (fsdp 2 x tensor 4) mesh.
    leaf = runner.state.params["blocks"]["mlp"]["layer1"]["kernel"].get_value()
    shard = leaf.addressable_shards[0].data.shape
    assert shard[1] * 2 == leaf.shape[1] and shard[2] * 4 == leaf.shape[2]
    # The compiled program communicates over the tensor axis (Megatron all-reduce / reduce-scatter).
    hlo = compiled.as_text()
    assert "all-reduce" in hlo or "reduce-scatter" in hlo


def test_grad_accumulation_matches_large_batch(shared_batches):
    # k=4 micro-batches of 4 == one step on the 16 samples (same noise per sample), on a sharded mesh.
    big = {
        k: np.concatenate([np.asarray(shared_batches[0][k]), np.asarray(shared_batches[1][k])])
        for k in shared_batches[0]
    }
    big = _with_noise(big)
    lat = 32 // 8
    big["_epsilon"] = np.random.default_rng(1).standard_normal((16, 16, 9, lat, lat)).astype(np.float32)
    # A real learning rate from the first step (no warm-up), so the update is visible.
    sched = {"scheduler.warm_up_steps": (0, 0), "optimizer.lr": 1e-3}

    c1 = tiny_config(**{"dataloader_train.global_batch_size": 16, **sched})
    r1 = StepRunner(c1, mesh_for(c1, (2, 2, 2)), big)
    init = flat_params(r1.state)
    r1.run(big)

    c4 = tiny_config(**{"dataloader_train.global_batch_size": 4, "trainer.grad_accum_iter": 4, **sched})
    micro = [{k: v[i * 4 : (i + 1) * 4] for k, v in big.items()} for i in range(4)]
    r4 = StepRunner(c4, mesh_for(c4, (2, 2, 2)), micro[0])
    for i, mb in enumerate(micro):
        m = r4.run(mb)
        assert int(m["optimizer_step"]) == (1 if i == 3 else 0)
    # Adam's first step is ~lr*sign(g), so compare the moments (they hold the averaged, clipped gradient).
    mom1 = jax.device_get(r1.state.opt_state.inner_opt_state[1][0])
    mom4 = jax.device_get(r4.state.opt_state.inner_opt_state[1][0])
    for a, b in zip(
        jax.tree.leaves(mom1.mu) + jax.tree.leaves(mom1.nu), jax.tree.leaves(mom4.mu) + jax.tree.leaves(mom4.nu)
    ):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    p1, p4 = flat_params(r1.state), flat_params(r4.state)
    # Adam divides by sqrt(v) + eps: where |g| is near eps the update amplifies float noise, so a few
    # elements may differ by a fraction of the step (lr = 1e-3); all but 0.1% agree to 1e-6.
    for k in p1:
        np.testing.assert_allclose(p4[k], p1[k], rtol=1e-5, atol=2e-5, err_msg=str(k))
        assert np.mean(np.abs(p4[k] - p1[k]) > 1e-6) < 1e-3, k
    assert all(not np.allclose(init[k], p1[k]) for k in p1)


def test_nan_batch_is_skipped_in_step(shared_batches):
    c = tiny_config(**{"dataloader_train.global_batch_size": 8})
    runner = StepRunner(c, mesh_for(c, (2, 2, 2)), shared_batches[0])
    runner.run(shared_batches[0])
    before = flat_params(runner.state)
    opt_before = jax.device_get(runner.state.opt_state)
    bad = dict(shared_batches[1])
    actions = np.asarray(bad["actions"]).copy()
    actions[0, 0, 0] = np.nan
    bad["actions"] = actions
    m = runner.run(bad)
    assert not bool(m["finite"]) and int(m["nonfinite_steps"]) == 1 and int(m["optimizer_step"]) == 1
    after = flat_params(runner.state)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    opt_after = jax.device_get(runner.state.opt_state)
    # Everything but MultiSteps' skip bookkeeping (the count of non-finite values) is unchanged.
    for field in (f for f in opt_before._fields if f != "skip_state"):
        for a, b in zip(jax.tree.leaves(getattr(opt_before, field)), jax.tree.leaves(getattr(opt_after, field))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m = runner.run(shared_batches[1])  # training continues
    assert bool(m["finite"]) and int(m["optimizer_step"]) == 2
