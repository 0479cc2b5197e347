"""The model set-up (training/setup.py): the abstract skeleton matches what is materialised, the initial
DiT weights follow checkpoint.load_path with the training config's EMA option, the VAE follows
model.tokenizer, and the jitted step on the fixture weights gives the reference's loss."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from cosmos_policy_jax.config_lib import ConfigError, set_field
from cosmos_policy_jax.training import setup
from cosmos_policy_jax.training.step import EPSILON_KEY, SIGMA_KEY
from tests.fixture_utils import fixture_path, load_fixture
from tests.training.helpers import mesh_for, tiny_config
from tests.training.test_weights import _assert_same, _ema_of, _save_train_state


@pytest.fixture(scope="module")
def tiny_model():
    c = tiny_config()
    return setup.build(config_dict.FrozenConfigDict(c), mesh_for(c, (1, 1, 1)))


def _with(model, **overrides):
    """The same model with other checkpoint/tokenizer settings (nothing re-derived: only those are read)."""
    c = model.config.as_configdict()
    for dotted, value in overrides.items():
        set_field(c, dotted.replace("__", "."), value)
    return setup.ModelSetup(
        config_dict.FrozenConfigDict(c), model.mesh, model.defs, model.tx, model.schedule, model.state_shardings
    )


def _shapes(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), tree)


def test_abstract_matches_what_is_materialised(tiny_model):
    abstract = tiny_model.abstract()
    assert _shapes(abstract.state) == _shapes(tiny_model.init_state())
    assert _shapes(abstract.vae) == _shapes(tiny_model.vae_params())
    assert _shapes(abstract.rest) == _shapes(tiny_model.dit_rest())
    assert jax.tree.structure(abstract.state) == jax.tree.structure(tiny_model.state_shardings)


def test_initial_params_follow_load_path_and_the_ema_option(tiny_model, tmp_path, capsys):
    assert _with(tiny_model, checkpoint__load_path="").initial_params() is None
    assert "DiT: random initialisation" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint.load_path does not exist: {tmp_path}/nope")):
        _with(tiny_model, checkpoint__load_path=str(tmp_path / "nope")).initial_params()
    params = tiny_model.init_state().params
    _save_train_state(str(tmp_path), params, _ema_of(params))
    ema = _with(tiny_model, checkpoint__load_path=str(tmp_path), checkpoint__load_ema_to_reg=True)
    _assert_same(ema.initial_params(), _ema_of(params))
    assert "ema_params" in capsys.readouterr().out
    raw = _with(tiny_model, checkpoint__load_path=str(tmp_path), checkpoint__load_ema_to_reg=False)
    _assert_same(raw.initial_params(), params)
    _assert_same(raw.init_state(raw.initial_params()).params, params)


def test_vae_without_a_file_needs_random_init(tiny_model):
    model = _with(tiny_model, model__tokenizer__load_path="", model__tokenizer__random_init=False)
    with pytest.raises(ConfigError, match=r"model\.tokenizer\.load_path: empty"):
        model.vae_params()


def test_fixture_weights_via_load_path_give_the_fixture_loss(tmp_path, capsys):
    """dit_checkpoint_net.pt initialises the network through checkpoint.load_path (logged), and the
    first training loss on the fixture batch, sigma and noise equals the reference's."""
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
