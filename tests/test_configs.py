"""Every documented config arg loads, validates and keeps the reference's effective values."""

import math

import pytest
from ml_collections import config_dict

from configs import cosmos_policy
from cosmos_policy_jax import config_lib

ARGS = [
    "libero",
    "robocasa",
    "aloha",
    "demo",
    "tiny",
    "bench",
    "libero,tiny",
    "robocasa,tiny",
    "aloha,tiny,fp32",
    "libero,synthetic",
]


@pytest.mark.parametrize("arg", ARGS)
def test_every_config_validates_statically(arg):
    config = cosmos_policy.get_config(arg)
    config_lib.resolve(config)
    config_lib.validate(config, check_paths=False)
    # The sections the reference trainer has are all present.
    for section in ("job", "trainer", "model", "optimizer", "scheduler", "dataloader_train", "dataloader_val"):
        assert section in config
    for section in ("checkpoint", "parallel"):
        assert section in config
    for sub in ("net", "tokenizer", "sde"):
        assert sub in config.model


def test_unknown_arg_and_modifier_raise():
    with pytest.raises(ValueError, match="unknown config arg"):
        cosmos_policy.get_config("liberoo")
    with pytest.raises(ValueError, match="modifier"):
        cosmos_policy.get_config("libero,huge")


def test_libero_matches_reference_section_1_4():
    c = cosmos_policy.get_config("libero")
    m = c.model
    assert (m.state_t, m.state_ch, m.num_conditional_frames) == (9, 16, 4)
    assert m.scaling == "rectified_flow" and m.sigma_data == 1.0 and m.loss_scale == 10.0
    assert m.sde.hybrid and math.isclose(m.sde.p_mean, math.log(4)) and m.sde.p_std == 1.2
    assert (m.sde.uniform_lower, m.sde.uniform_upper, m.sde.lognormal_prob) == (1.0, 85.0, 0.7)
    assert m.precision == "bfloat16" and m.net.dtype == "bfloat16" and m.tokenizer.dtype == "bfloat16"
    assert (m.net.model_channels, m.net.num_blocks, m.net.num_heads, m.net.adaln_lora_dim) == (2048, 28, 16, 256)
    assert (m.net.rope_h_extrapolation_ratio, m.net.rope_t_extrapolation_ratio) == (3.0, 1.0)
    assert not m.ema.enabled
    o = c.optimizer
    assert (o.lr, o.b1, o.b2, o.weight_decay, o.eps, o.clip_norm) == (1e-4, 0.9, 0.99, 0.1, 1e-8, 1.0)
    s = c.scheduler
    assert s.name == "lambdalinear" and s.cycle_lengths[0] == 30000 and s.warm_up_steps == (1000, 0)
    assert s.f_start == (1e-6, 0.06) and s.f_max == (1.0, 0.06) and s.f_min == (0.3, 0.06)
    assert c.dataloader_train.batch_size == 30 and c.checkpoint.save_iter == 1000
    assert c.trainer.grad_accum_iter == 1 and c.trainer.logging_iter == 5 and not c.trainer.run_validation
    ds = c.dataloader_train.dataset
    assert (ds.chunk_size, ds.final_image_size, ds.gamma) == (16, 224, 0.99)
    assert (ds.demonstration_sampling_prob, ds.success_rollout_sampling_prob) == (0.5, 0.5)
    assert dict(m.latent_layout)["action"] == 4 and dict(m.latent_layout)["value"] == 8


def test_eleven_frame_layouts():
    for arg, extra in (("robocasa", "current_image2"), ("aloha", "current_wrist_image2")):
        c = cosmos_policy.get_config(arg)
        assert c.model.state_t == 11 and c.model.num_conditional_frames == 5
        layout = {k: v for k, v in c.model.latent_layout.items() if v != -1}
        assert layout[extra] != -1
        assert sorted(layout.values()) == list(range(1, 11))  # frame 0 is the blank frame


def _problems(config, **kw):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config, **kw)
    return err.value.problems


def test_validate_names_each_bad_key():
    c = cosmos_policy.get_config("tiny")
    config_lib.resolve(c)
    c.dataloader_train.batch_size = -1
    c.trainer.grad_accum_iter = 0
    c.model.net.num_heads = 3
    c.model.latent_layout.value = 42
    problems = _problems(c, check_paths=False)
    joined = "\n".join(problems)
    for key in (
        "dataloader_train.batch_size",
        "trainer.grad_accum_iter",
        "model.net.num_heads",
        "model.latent_layout.value",
    ):
        assert key in joined


def test_validate_device_dependent_checks():
    c = cosmos_policy.get_config("tiny")
    config_lib.resolve(c)
    c.parallel.data, c.parallel.fsdp, c.parallel.tensor = 2, 2, 3
    assert any("device count" in p for p in _problems(c, num_devices=8, check_paths=False))
    c = cosmos_policy.get_config("tiny")
    config_lib.resolve(c)
    c.dataloader_train.global_batch_size = 6
    problems = _problems(c, mesh_shape={"data": 4, "fsdp": 1, "tensor": 2}, check_paths=False)
    assert any("dataloader_train.global_batch_size" in p and "divisible" in p for p in problems)


def test_validate_missing_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("BASE_DATASETS_DIR", raising=False)
    c = cosmos_policy.get_config("libero")
    unresolved = config_lib.resolve(c)
    problems = _problems(c, unresolved=unresolved)
    assert any("dataloader_train.dataset.data_dir" in p and "BASE_DATASETS_DIR" in p for p in problems)
    monkeypatch.setenv("BASE_DATASETS_DIR", str(tmp_path))
    c = cosmos_policy.get_config("libero")
    unresolved = config_lib.resolve(c)
    problems = _problems(c, unresolved=unresolved)
    assert any("does not exist" in p and str(tmp_path) in p for p in problems)


def test_yaml_round_trip_is_plain(tmp_path):
    import yaml

    c = cosmos_policy.get_config("libero")
    config_lib.resolve(c)
    path = config_lib.save_yaml(config_dict.FrozenConfigDict(c), str(tmp_path / "config.yaml"))
    with open(path) as f:
        loaded = yaml.safe_load(f)
    assert loaded["model"]["net"]["num_blocks"] == 28
    assert loaded["parallel"]["logical_axis_rules"][0] == ["batch", ["data", "fsdp"]]
