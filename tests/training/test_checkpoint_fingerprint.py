"""The trainer's checkpoint fingerprint, checked wherever parameters are loaded from an orbax checkpoint:
the weight loader (``eval``, ``serve`` and the trainer's ``checkpoint.load_path``) refuses a checkpoint
whose arrays changed."""

from __future__ import annotations

import os
import shutil

import jax
import pytest

from cosmos_policy_jax.training import checkpoint as ckpt_lib
from cosmos_policy_jax.training import weights
from tests.training.test_weights import _assert_same, _save_train_state, tiny  # noqa: F401 - tiny is a fixture


def _damaged_job(tmp_path, params) -> str:
    """A job whose checkpoint 7 holds other (finite) parameter values than its fingerprint says."""
    good, other = str(tmp_path / "job"), str(tmp_path / "other")
    _save_train_state(good, params, None)
    _save_train_state(other, jax.tree.map(lambda x: x + 0.5, params), None)
    state = os.path.join(good, "checkpoints", "7", ckpt_lib.STATE)
    shutil.rmtree(state)
    shutil.copytree(os.path.join(other, "checkpoints", "7", ckpt_lib.STATE), state)
    return good


def test_eval_loader_refuses_a_checkpoint_that_differs_from_its_fingerprint(tiny, tmp_path):  # noqa: F811
    _, defs, params = tiny
    job = _damaged_job(tmp_path, params)
    step = os.path.join(job, "checkpoints", "7")
    with pytest.raises(
        ckpt_lib.CorruptCheckpointError, match=rf"checkpoint {step}: \d+ array\(s\) differ from the fingerprint"
    ):
        weights.load_dit(job, defs.dit_abstract_params)


def test_intact_checkpoint_passes_and_restore_params_checks_too(tiny, tmp_path):  # noqa: F811
    _, defs, params = tiny
    _save_train_state(str(tmp_path / "ok"), params, None)
    _assert_same(weights.load_dit(str(tmp_path / "ok"), defs.dit_abstract_params).params, params)
    ok = ckpt_lib.Checkpointer(str(tmp_path / "ok" / "checkpoints"), read_only=True)
    _assert_same(ok.restore_params(7, defs.dit_abstract_params), params)  # the trainer's load_path route
    job = _damaged_job(tmp_path, params)
    ck = ckpt_lib.Checkpointer(os.path.join(job, "checkpoints"), read_only=True)
    with pytest.raises(ckpt_lib.CorruptCheckpointError, match="differ from the fingerprint written at save time"):
        ck.restore_params(7, defs.dit_abstract_params)
