"""Comparing a requested config with a job's or a checkpoint's saved one (restart drift, eval)."""

import os
import subprocess
import sys

import pytest

from configs import cosmos_policy
from cosmos_policy_jax import config_drift, config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _saved_job(tmp_path, arg: str):
    """A job directory as training leaves it: config.yaml, a checkpoint step and the export."""
    c = cosmos_policy.get_config(arg)
    config_lib.resolve(c)
    job = tmp_path / "job"
    (job / "checkpoints" / "10" / "state").mkdir(parents=True)
    (job / "export").mkdir()
    (job / "export" / "net.safetensors").write_bytes(b"")
    config_lib.save_yaml(c, str(job / "config.yaml"))
    return job


def test_diff_and_which_changes_block():
    a, b = cosmos_policy.get_config("tiny"), cosmos_policy.get_config("tiny")
    b.optimizer.lr = 0.5
    b.model.net.attention_impl = "xla"
    b.dataloader_train.batch_size = 3
    b.model.latent_layout.value = -1
    changes = config_drift.diff(a, b)
    assert [k for k, _, _ in changes] == [
        "dataloader_train.batch_size", "model.latent_layout.value", "model.net.attention_impl", "optimizer.lr",
    ]  # fmt: skip
    blocking = [k for k, _, _ in config_drift.shape_or_data_changes(changes)]
    assert blocking == ["dataloader_train.batch_size", "model.latent_layout.value"]
    # A key only one side has (another code version) is printed but never blocks.
    saved = config_lib.to_plain_dict(a)
    del saved["model"]["tokenizer"]["random_init"]
    only = config_drift.diff(saved, a)
    assert only == [("model.tokenizer.random_init", config_drift.ABSENT, True)]
    assert config_drift.shape_or_data_changes(only) == []


def test_saved_config_found_from_every_checkpoint_form(tmp_path):
    job = _saved_job(tmp_path, "tiny")
    for path in (job, job / "checkpoints", job / "checkpoints" / "10", job / "export" / "net.safetensors"):
        saved, where = config_drift.saved_config_for(str(path))
        assert where == str(job / "config.yaml") and saved["model"]["state_t"] == 9
    foreign = tmp_path / "elsewhere" / "model.pt"
    foreign.parent.mkdir()
    foreign.write_bytes(b"")
    assert config_drift.saved_config_for(str(foreign)) == (None, "")
    assert config_drift.check_checkpoint_matches(str(foreign), cosmos_policy.get_config("demo")) == ""


def test_checkpoint_with_other_action_size_and_chunk_is_refused(tmp_path):
    job = _saved_job(tmp_path, "tiny")
    c = cosmos_policy.get_config("tiny")
    config_lib.resolve(c)
    assert config_drift.check_checkpoint_matches(str(job), c).endswith("config.yaml")
    with pytest.raises(config_lib.ConfigError) as err:
        config_drift.check_checkpoint_matches(str(job), cosmos_policy.get_config("demo"))
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("dataloader_train.dataset.action_dim: 7 -> 2", "dataloader_train.dataset.chunk_size: 16 -> 8"):
        assert part in msg


def test_eval_stops_on_a_checkpoint_trained_with_other_sizes(tmp_path):
    job = _saved_job(tmp_path, "tiny")
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/cosmos_policy.py:demo",
         f"--checkpoint={job}", f"--output={tmp_path / 'out'}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint") and "action_dim: 7 -> 2" in err[0]


def test_a_planning_checkpoint_trained_with_other_sizes_is_refused(tmp_path):
    from cosmos_policy_jax.planning.config import PlanningConfig
    from cosmos_policy_jax.planning.policy import planning_policy_from_model

    policy_job, planning_job = _saved_job(tmp_path / "p", "demo"), _saved_job(tmp_path / "w", "tiny")
    c = cosmos_policy.get_config("demo")
    config_lib.resolve(c)
    with pytest.raises(config_lib.ConfigError, match=r"^planning checkpoint .*action_dim: 7 -> 2"):
        planning_policy_from_model(c, None, {}, {}, PlanningConfig(), str(planning_job))
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/cosmos_policy.py:demo",
         f"--checkpoint={policy_job}", f"--planning_checkpoint={planning_job}", f"--output={tmp_path / 'out'}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: planning checkpoint") and "action_dim: 7 -> 2" in err[0]
