"""The training entry point: dry run, override errors, exit codes (subprocesses, no devices)."""

import os
import subprocess
import sys
import time

import numpy as np
import yaml

from cosmos_policy_jax.training.metrics import deterministic_row, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, env_extra=None, timeout=120):
    env = dict(os.environ)
    # A backend that does not exist: any device initialisation would fail the command.
    env["JAX_PLATFORMS"] = "no_such_backend"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_libero_dryrun_is_fast_and_writes_reference_values(tmp_path):
    start = time.monotonic()
    out = _run("--config=configs/cosmos_policy.py:libero", "--dryrun", f"--config.job.path_local={tmp_path}")
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert elapsed < 30
    path = tmp_path / "config.yaml"
    assert str(path) in out.stdout
    cfg = yaml.safe_load(path.read_text())
    assert cfg["model"]["net"]["model_channels"] == 2048 and cfg["model"]["net"]["num_blocks"] == 28
    assert cfg["model"]["state_t"] == 9 and cfg["model"]["scaling"] == "rectified_flow"
    assert cfg["model"]["loss_scale"] == 10.0 and cfg["model"]["sde"]["hybrid"] is True
    assert cfg["optimizer"]["lr"] == 1e-4 and cfg["optimizer"]["b2"] == 0.99 and cfg["optimizer"]["weight_decay"] == 0.1
    assert cfg["scheduler"]["name"] == "lambdalinear" and cfg["dataloader_train"]["batch_size"] == 30
    assert cfg["checkpoint"]["save_iter"] == 1000 and cfg["model"]["precision"] == "bfloat16"


def test_override_is_applied_and_listed(tmp_path):
    out = _run(
        "--config=configs/cosmos_policy.py:libero",
        "--dryrun",
        f"--config.job.path_local={tmp_path}",
        "--config.trainer.max_iter=10000",
    )
    assert out.returncode == 0, out.stderr
    assert "config.trainer.max_iter=10000" in out.stdout
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["max_iter"] == 10000


def test_typo_in_override_fails_naming_the_key(tmp_path):
    out = _run(
        "--config=configs/cosmos_policy.py:libero", f"--config.job.path_local={tmp_path}", "--config.trainer.max_itr=5"
    )
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "trainer.max_itr" in err[0] and "max_iter" in err[0]
    assert not (tmp_path / "config.yaml").exists()


def test_wrong_type_and_bad_value_fail(tmp_path):
    out = _run("--config=configs/cosmos_policy.py:libero", "--dryrun", "--config.trainer.max_iter=abc")
    assert out.returncode != 0 and "max_iter" in out.stderr
    out = _run(
        "--config=configs/cosmos_policy.py:libero",
        "--dryrun",
        f"--config.job.path_local={tmp_path}",
        "--config.dataloader_train.batch_size=-4",
    )
    assert out.returncode != 0 and "dataloader_train.batch_size" in out.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_cpu_training_uses_onednn_by_default(tmp_path):
    # The entry point's CPU default (cosmos_policy_jax/xla_env.py): oneDNN kernels, announced, no cache
    # warnings, and still deterministic (two identical runs log identical rows, as exact resume needs).
    env = {k: v for k, v in os.environ.items() if k not in ("COSMOS_POLICY_CPU_ONEDNN", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    rows = []
    for run in range(2):
        job = tmp_path / f"run{run}"
        out = subprocess.run(
            [
                sys.executable, "-m", "cosmos_policy_jax.train", "--config=configs/cosmos_policy.py:tiny",
                f"--config.job.path_local={job}", "--config.trainer.max_iter=3", "--config.trainer.logging_iter=1",
            ],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert "CPU kernels: oneDNN" in out.stdout, out.stdout[-2000:]
        assert "Error writing persistent compilation cache" not in out.stderr
        rows.append([deterministic_row(r) for r in read_metrics(str(job))])
    assert len(rows[0]) == 3 and all(np.isfinite(r["loss"]) for r in rows[0])
    assert rows[0] == rows[1]


def test_missing_pretrained_vae_fails_fast_without_touching_the_job(tmp_path):
    # The acceptance: no weight files, input files checked before any backend or model.
    empty = tmp_path / "ckpts"
    empty.mkdir()
    job = tmp_path / "job"
    start = time.monotonic()
    out = _run(
        "--config=configs/cosmos_policy.py:libero,synthetic",
        "--config.checkpoint.load_path=",
        "--config.trainer.max_iter=1",
        f"--config.job.path_local={job}",
        env_extra={"BASE_CHECKPOINTS_DIR": str(empty)},
    )
    assert out.returncode == 2 and time.monotonic() - start < 30
    err = out.stderr.strip().splitlines()
    tokenizer = f"{empty}/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth"
    assert len(err) == 1 and err[0].startswith("error:") and tokenizer in err[0], out.stderr
    assert "hf download nvidia/Cosmos-Predict2-2B-Video2World tokenizer/tokenizer.pth" in err[0]
    assert not job.exists()


def test_missing_config_file_is_one_line(tmp_path):
    out = _run("--config=configs/no_such_file.py:demo", "--dryrun", f"--config.job.path_local={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --config: config file not found: configs/no_such_file.py"]


def test_configs_found_from_another_directory(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "no_such_backend", "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.train", "--config=configs/cosmos_policy.py:demo", "--dryrun",
         f"--config.job.path_local={tmp_path / 'job'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "job" / "config.yaml").exists()


def test_unset_variable_in_job_path_is_one_line(tmp_path):
    out = _run("--config=configs/cosmos_policy.py:tiny", "--config.job.path_local=${H14_UNSET_VAR}/job", "--dryrun")
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "job.path_local" in err[0] and "H14_UNSET_VAR" in err[0]


def _started_job(tmp_path):
    """A job directory as a run leaves it: config.yaml (written by a dry run) and one checkpoint step."""
    job = tmp_path / "job"
    out = _run("--config=configs/cosmos_policy.py:tiny", "--dryrun", f"--config.job.path_local={job}")
    assert out.returncode == 0, out.stderr
    (job / "checkpoints" / "4").mkdir(parents=True)
    return job


def test_restart_prints_changed_keys_and_stops_on_shape_changes(tmp_path):
    job = _started_job(tmp_path)
    base = ("--config=configs/cosmos_policy.py:tiny", f"--config.job.path_local={job}")
    out = _run(*base, "--dryrun", "--config.optimizer.lr=0.5")
    assert out.returncode == 0
    assert "optimizer.lr: 0.0001 -> 0.5" in out.stdout
    out = _run(*base, "--config.dataloader_train.batch_size=3")
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "dataloader_train.batch_size: 2 -> 3" in err[0] and "allow_config_drift" in err[0]
    # Allowed explicitly: the check passes and the run goes on (here to the missing backend).
    out = _run(*base, "--config.dataloader_train.batch_size=3", "--config.trainer.allow_config_drift=True")
    assert "allow_config_drift" not in out.stderr and "dataloader_train.batch_size: 2 -> 3" in out.stdout


def test_eval_help_lists_flags_and_missing_config_is_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "no_such_backend"}
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    for flag in ("--checkpoint", "--config", "--episodes", "--policy", "--task_suite"):
        assert flag in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/nope.py:demo", "--policy=random"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "nope.py" in out.stderr


def test_eval_names_a_missing_pretrained_vae(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "no_such_backend", "BASE_CHECKPOINTS_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/cosmos_policy.py:libero",
         f"--checkpoint={tmp_path}/model.pt", f"--output={tmp_path / 'out'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path}/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth" in err[0], out.stderr
    assert "hf download" in err[0]
