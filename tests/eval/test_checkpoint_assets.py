"""Self-contained checkpoints without a model: the assets saved with a checkpoint/export, read back and checked."""

import json
import os

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax import config_lib
from cosmos_policy_jax.common import files
from cosmos_policy_jax.data import statistics, t5
from cosmos_policy_jax.eval import loading
from cosmos_policy_jax.training import assets


@pytest.fixture
def job(tmp_path):
    """A demo config whose data dir holds statistics and a T5 file, and a job dir with assets + export manifest."""
    data = tmp_path / "data"
    data.mkdir()
    stats = {f"{g}_{n}": np.arange(2, dtype=np.float64) + i for i, (g, n) in enumerate(
        (g, n) for g in ("actions", "proprio") for n in ("min", "max", "mean", "std", "median"))}  # fmt: skip
    statistics.save_statistics(stats, data / "dataset_statistics.json")
    t5.save_t5_embeddings({"go left": np.ones((1, 4, 3), np.float32)}, data / "t5.pkl")
    config = get_config("demo")
    config.dataloader_train.dataset.data_dir = str(data)
    config.dataloader_train.dataset.t5_text_embeddings_path = str(data / "t5.pkl")
    job_dir = tmp_path / "job"
    saved = assets.build_policy_assets(config, str(job_dir))
    export = job_dir / "export"
    export.mkdir(parents=True)
    (export / "net.safetensors").write_bytes(b"")  # the weights are not read here
    assets.write_export_manifest(config_lib.to_plain_dict(config), saved, str(job_dir), str(export))
    return config, job_dir, data, stats, saved


def test_assets_carry_statistics_and_a_hashed_copy_of_the_embeddings(job):
    config, job_dir, data, stats, saved = job
    assert saved["t5_embeddings"]["file"] == os.path.join("assets", "t5_embeddings.pkl")
    assert saved["t5_embeddings"]["sha256"] == files.sha256_of(str(data / "t5.pkl"))
    got = loading.load_checkpoint_assets(str(job_dir / "export" / "net.safetensors"))
    for k, v in stats.items():
        np.testing.assert_array_equal(got.stats[k], v)
    assert got.t5_path == str(job_dir / "export" / "t5_embeddings.pkl")
    assert got.config["dataloader_train"]["dataset"]["chunk_size"] == config.dataloader_train.dataset.chunk_size
    # The export folder alone is enough: the data directory can go.
    os.remove(data / "t5.pkl")
    assert loading.load_checkpoint_assets(str(job_dir / "export" / "net.safetensors")).t5_path


def test_a_changed_embeddings_file_is_a_one_line_error(job):
    _, job_dir, _, _, _ = job
    copy = job_dir / "export" / "t5_embeddings.pkl"
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(loading.EvalInputError, match="changed since training") as e:
        loading.load_checkpoint_assets(str(job_dir / "export" / "net.safetensors"))
    assert "\n" not in str(e.value)


def test_config_disagreement_names_every_key(job):
    _, job_dir, *_ = job
    manifest = json.loads((job_dir / "export" / "policy.json").read_text())
    other = get_config("demo")
    other.dataloader_train.dataset.action_dim = 7
    other.dataloader_train.dataset.final_image_size = 64
    with pytest.raises(loading.EvalInputError, match=r"action_dim: checkpoint 2 vs config 7.*final_image_size") as e:
        loading.check_config_agrees(manifest["config"], other, "policy.json")
    assert "\n" not in str(e.value)
    loading.check_config_agrees(manifest["config"], get_config("demo"), "policy.json")  # the same: no error
