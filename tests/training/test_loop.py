"""The training loop end to end on the tiny config: exact resume, restore on another mesh,
fixture weights through checkpoint.load_path."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from ml_collections import config_dict
from safetensors.numpy import load_file

from cosmos_policy_jax.training import loop
from tests.fixture_utils import fixture_path, load_fixture
from tests.training.helpers import mesh_for, tiny_config


def _run(tmp, max_iter: int, shape=(8, 1, 1), **overrides) -> int:
    c = tiny_config(
        tmp,
        **{
            "trainer.max_iter": max_iter,
            "trainer.logging_iter": 1,
            "checkpoint.save_iter": 2,
            "dataloader_train.global_batch_size": 8,
            **overrides,
        },
    )
    mesh = mesh_for(c, shape)
    return loop.run(config_dict.FrozenConfigDict(c), mesh)


def _rows(job):
    return [loop.deterministic_row(r) for r in loop.read_metrics(str(job))]


@pytest.mark.slow
def test_resume_gives_identical_params_and_metrics(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert _run(full, 4) == 0
    assert _run(split, 2) == 0
    assert sorted(os.listdir(split / "checkpoints")) == ["2"]
    assert _run(split, 4) == 0  # same command, more iterations: resumes from iteration 2
    a = load_file(str(full / "export" / "net.safetensors"))
    b = load_file(str(split / "export" / "net.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rows_full, rows_split = _rows(full), _rows(split)
    assert [r["iteration"] for r in rows_split] == [1, 2, 3, 4]
    assert rows_full == rows_split
    # The parameters moved during training (the comparison above is not between two initialisations).
    init_loss, last_loss = rows_full[0]["loss"], rows_full[-1]["loss"]
    assert np.isfinite(init_loss) and np.isfinite(last_loss)


@pytest.mark.slow
def test_checkpoint_from_one_mesh_restores_on_another(tmp_path):
    assert _run(tmp_path, 2, shape=(8, 1, 1)) == 0
    assert _run(tmp_path, 3, shape=(2, 2, 2)) == 0
    rows = loop.read_metrics(str(tmp_path))
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert np.isfinite(rows[-1]["loss"]) and rows[-1]["optimizer_step"] == 3
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]


def test_fixture_weights_via_load_path_give_the_fixture_loss(tmp_path, capsys):
    """dit_checkpoint_net.pt initialises the network through checkpoint.load_path (logged), and the
    first training loss on the fixture batch, sigma and noise equals the reference's."""
    from cosmos_policy_jax.config_lib import set_field
    from cosmos_policy_jax.training import setup
    from cosmos_policy_jax.training.step import EPSILON_KEY, SIGMA_KEY

    step, info = load_fixture("policy_train_step.safetensors")
    _, vae_info = load_fixture("vae_state_dict.safetensors")
    net_info = info["net"]
    c = tiny_config(tmp_path)
    for key in ("model_channels", "num_blocks", "num_heads", "adaln_lora_dim", "crossattn_emb_channels", "mlp_ratio"):
        set_field(c, f"model.net.{key}", net_info[key])
    for key in ("rope_h_extrapolation_ratio", "rope_w_extrapolation_ratio", "rope_t_extrapolation_ratio"):
        set_field(c, f"model.net.{key}", float(net_info[key]))
    vc = vae_info["config"]
    c.model.tokenizer.dim = vc["dim"]
    c.model.tokenizer.num_res_blocks = vc["num_res_blocks"]
    c.model.tokenizer.dim_mult = tuple(vc["dim_mult"])
    c.model.tokenizer.temperal_downsample = tuple(vc["temperal_downsample"])
    c.model.tokenizer.load_path = str(fixture_path("vae_tokenizer.pth"))
    c.checkpoint.load_path = str(fixture_path("dit_checkpoint_net.pt"))
    c.model.state_t = info["model_config"]["state_t"]
    c.model.num_conditional_frames = info["model_config"]["min_num_conditional_frames"]
    for slot in c.model.latent_layout:
        key = f"batch.{slot}_latent_idx"
        c.model.latent_layout[slot] = int(step[key][0]) if key in step else -1
    c.model.loss_scale = float(info["model_config"]["loss_scale"])
    mesh = mesh_for(c, (1, 1, 1))

    model = setup.build(config_dict.FrozenConfigDict(c), mesh)
    params = model.initial_params()
    out = capsys.readouterr().out
    assert "dit_checkpoint_net.pt" in out and "loaded" in out and "ignored" in out
    state = model.init_state(params)
    vae, rest = model.vae_params(), model.dit_rest()
    batch = {k[len("batch.") :]: v for k, v in step.items() if k.startswith("batch.")}
    batch = {k: v for k, v in batch.items() if not k.endswith("_latent_idx") and v.dtype.kind in "biuf"}
    batch = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in batch.items()}
    batch[SIGMA_KEY] = step["sigma"]
    batch[EPSILON_KEY] = step["epsilon"]
    fn = model.jit_step(batch)
    with jax.set_mesh(mesh):
        _, metrics = fn(state, batch, vae, rest)
    metrics = jax.device_get(metrics)
    np.testing.assert_allclose(float(metrics["loss"]), float(step["loss"]), rtol=1e-4)
    np.testing.assert_allclose(
        float(metrics["demo_sample_action_l1_loss"]), float(step["loss.demo_sample_action_l1_loss"]), rtol=1e-4
    )
