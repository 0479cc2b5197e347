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
    "libero,synthetic,random_weights",
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
        "model.net.model_channels",
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
    assert any("not found" in p and str(tmp_path) in p for p in problems)


def test_yaml_round_trip_is_plain(tmp_path):
    import yaml

    c = cosmos_policy.get_config("libero")
    config_lib.resolve(c)
    path = config_lib.save_yaml(config_dict.FrozenConfigDict(c), str(tmp_path / "config.yaml"))
    with open(path) as f:
        loaded = yaml.safe_load(f)
    assert loaded["model"]["net"]["num_blocks"] == 28
    assert loaded["parallel"]["logical_axis_rules"][0] == ["batch", ["data", "fsdp"]]


# -- the VAE: pretrained by default, random only when asked ---------------------------------------


def test_production_configs_load_the_pretrained_vae(tmp_path, monkeypatch):
    monkeypatch.setenv("BASE_CHECKPOINTS_DIR", str(tmp_path))
    for arg in (
        "libero,synthetic",
        "robocasa,synthetic",
        "aloha,synthetic",
        "libero,fp32,synthetic",
        "lerobot,synthetic",
    ):
        c = cosmos_policy.get_config(arg)
        unresolved = config_lib.resolve(c)
        tok = c.model.tokenizer
        assert not tok.random_init
        assert tok.load_path == f"{tmp_path}/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth"
        c.checkpoint.load_path = ""
        problems = _problems(c, unresolved=unresolved)
        assert problems == [
            f"model.tokenizer.load_path: not found: {tok.load_path}; download it with: hf download "
            f"nvidia/Cosmos-Predict2-2B-Video2World tokenizer/tokenizer.pth --local-dir "
            f"{tmp_path}/Cosmos-Predict2-2B-Video2World"
        ]
    for arg in ("demo", "tiny", "bench", "libero,tiny", "libero,synthetic,random_weights"):
        c = cosmos_policy.get_config(arg)
        assert c.model.tokenizer.random_init and c.model.tokenizer.load_path == "" and c.checkpoint.load_path == ""


def test_vae_needs_a_file_or_an_explicit_random_init():
    c = cosmos_policy.get_config("tiny")
    c.model.tokenizer.random_init = False
    assert any("random_init=True" in p for p in _problems(c, check_paths=False))
    c.model.tokenizer.random_init = True
    c.model.tokenizer.load_path = "/some/tokenizer.pth"
    assert any("needs model.tokenizer.load_path=''" in p for p in _problems(c, check_paths=False))


# -- one source of truth per limit: validate's verdict is the typed configs' --------------------


def _builds(config) -> bool:
    from cosmos_policy_jax.models.dit import DiTConfig
    from cosmos_policy_jax.policy.config import PolicyConfig

    try:
        DiTConfig.from_config(config.model.net)
        PolicyConfig.from_config(config)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize(
    "key, value, accepted",
    [
        ("model.net.num_heads", 16, False),  # head dim 8: was accepted by validate, refused by DiTConfig
        ("model.net.num_heads", 8, True),  # head dim 16
        ("model.num_conditional_frames", 9, True),  # == state_t: the layout allows it
        ("model.precision", "float16", False),  # was accepted by validate, refused by PolicyConfig
        ("model.latent_layout.current_proprio", -1, True),  # optional in the layout
    ],
)
def test_reconciled_limits_agree_with_the_typed_configs(key, value, accepted):
    c = cosmos_policy.get_config("tiny")
    config_lib.set_field(c, key, value)
    assert _builds(c) is accepted
    if accepted:
        config_lib.validate(c, check_paths=False)
    else:
        problems = _problems(c, check_paths=False)
        assert len(problems) == 1 and key.rsplit(".", 1)[-1] in problems[0], problems


def test_compression_factors_must_match_the_vae_shape():
    c = cosmos_policy.get_config("tiny")
    c.model.tokenizer.spatial_compression = 16
    assert _problems(c, check_paths=False) == [
        "model.tokenizer.spatial_compression: must be 8 (from dim_mult/temperal_downsample), got 16"
    ]


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("optimizer.weight_decay", -0.1, "optimizer.weight_decay: must be >= 0"),
        ("optimizer.lr", float("inf"), "optimizer.lr: must be a finite number"),
        ("optimizer.lr", float("nan"), "optimizer.lr: must be a finite number"),
        ("trainer.seed", 2**40, "trainer.seed: must be an integer in [0, 2147483647]"),
        ("trainer.max_iter", 2**70, "trainer.max_iter: integer"),
        ("trainer.max_iter", 2**31, "trainer.max_iter: max_iter x grad_accum_iter"),
        ("dataloader_train.batch_size", 2**64, "dataloader_train.batch_size: integer"),
        ("dataloader_val.dataset.kind", "nope", "dataloader_val.dataset.kind: must be one of ('libero',"),
    ],
)
def test_values_outside_their_meaning_are_one_problem(key, value, expect):
    c = cosmos_policy.get_config("tiny")
    config_lib.set_field(c, key, value)
    problems = _problems(c, check_paths=False)
    assert len(problems) == 1 and problems[0].startswith(expect), problems


def test_demo_format_is_one_the_demo_source_reads():
    config_lib.validate(cosmos_policy.get_config("demo,lerobot"), check_paths=False)
    c = cosmos_policy.get_config("demo")
    config_lib.validate(c, check_paths=False)
    c.dataloader_train.dataset.demo_format = "lerobt"
    assert _problems(c, check_paths=False) == [
        "dataloader_train.dataset.demo_format: must be one of ('hdf5', 'lerobot'), got 'lerobt'"
    ]


def test_unset_variables_in_the_job_path(monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_H14", raising=False)
    c = cosmos_policy.get_config("tiny")
    c.job.path_local = "${NO_SUCH_VAR_H14}/job"
    problems = _problems(c, unresolved=config_lib.resolve(c), check_paths=False)
    assert problems == ["job.path_local: environment variable(s) NO_SUCH_VAR_H14 not set (${NO_SUCH_VAR_H14}/job)"]


# -- every shipped config key is read by code ---------------------------------------------------

# Keys no package code reads by name, each with the reason it stays. Empty: every key is live.
DEAD_KEY_ALLOWLIST: dict[str, str] = {}


def _shipped_keys() -> set[str]:
    import itertools

    keys = set()
    for base in cosmos_policy.BASES:
        for n in range(len(cosmos_policy.MODIFIERS) + 1):
            for mods in itertools.combinations(cosmos_policy.MODIFIERS, n):
                try:
                    c = cosmos_policy.get_config(",".join((base, *mods)))
                except ValueError:  # a modifier that does not apply to this base (e.g. lerobot)
                    continue
                keys |= {k for k, _ in config_lib.leaves(c)}
    return keys


def test_every_shipped_config_key_is_read_by_code():
    import pathlib
    import re

    pkg = pathlib.Path(config_lib.__file__).parent
    text = "\n".join(p.read_text() for p in pkg.rglob("*.py"))
    dead = []
    for key in sorted(_shipped_keys()):
        name = key.rsplit(".", 1)[-1]
        # Read as an attribute, an item/string key (from_config key lists), or a typed config's field.
        if not re.search(rf"(\.{name}\b|[\"']{name}[\"']|^\s+{name}:\s)", text, re.M):
            dead.append(key)
    assert sorted(set(dead) - set(DEAD_KEY_ALLOWLIST)) == []
    assert set(DEAD_KEY_ALLOWLIST) <= set(dead), "allowlisted keys that are now read: drop them from the list"
    for gone in ("profile_steps", "skip_nonfinite_updates", "force_finite", "load_training_state", "strict_resume",
                 "save_on_preemption", "layout_name"):  # fmt: skip
        assert not any(k.endswith("." + gone) for k in _shipped_keys())


def test_formerly_undeclared_keys_are_overridable():
    c = cosmos_policy.get_config("tiny")
    c.lock()
    c.trainer.peak_tflops = 100.0
    c.checkpoint.export_on_end = False
    c.trainer.allow_config_drift = True


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("model.state_t", 1, "model.state_t"),
        ("model.num_conditional_frames", 0, "model.num_conditional_frames"),
        ("model.sde.p_std", -1.0, "model.sde.p_std"),
        ("model.tokenizer.dim_mult", (1, 2), "model.tokenizer.temperal_downsample"),
        ("model.latent_layout.action", -1, "model.latent_layout.action"),
        ("model.net.attention_impl", "flash", "model.net.attention_impl"),
    ],
)
def test_typed_config_errors_name_their_key(key, value, named):
    c = cosmos_policy.get_config("tiny")
    config_lib.set_field(c, key, value)
    problems = _problems(c, check_paths=False)
    assert len(problems) == 1 and problems[0].startswith(named), problems


def test_keys_read_with_get_are_declared():
    # A key read with `.get(...)` but not declared cannot be set from the command line (locked config).
    import pathlib
    import re

    pkg = pathlib.Path(config_lib.__file__).parent
    text = "\n".join(p.read_text() for p in pkg.rglob("*.py"))
    found = re.findall(r"config\.([a-z_.]+)\.get\(\s*\"([a-z_]+)\"", text)
    assert found, "the pattern no longer matches anything: update this test"
    declared = _shipped_keys()
    missing = [f"{section}.{key}" for section, key in found if f"{section}.{key}" not in declared]
    assert missing == []
