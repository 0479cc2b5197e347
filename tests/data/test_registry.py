"""The source registry (``data/registry.py``): one ``make_source`` for every ``dataset.kind``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cosmos_policy_jax.data.episodes import EpisodeOptions
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.libero import LiberoSource, libero_instruction
from cosmos_policy_jax.data.registry import list_instructions, make_source
from tests.fixture_utils import load_fixture


def test_from_config_and_make_source(libero):
    from configs.cosmos_policy import get_config

    paths, kwargs = libero
    cfg = get_config("libero").dataloader_train.dataset
    with cfg.unlocked():
        cfg.update(paths)
        cfg.update({k: v for k, v in kwargs.items() if k in cfg})
        cfg.text_dim = 1024
    with pytest.raises(DataError, match="text_dim"):
        make_source(cfg)
    with cfg.unlocked():
        cfg.text_dim = load_fixture("libero_rollout_samples.safetensors")[0]["sample30.t5_text_embeddings"].shape[-1]
    src = make_source(cfg, seed=5)
    assert isinstance(src, LiberoSource) and src.options.seed == 5 and src.options.chunk_size == kwargs["chunk_size"]
    direct = LiberoSource(EpisodeOptions(**paths, **kwargs))
    assert len(src) == len(direct)
    assert np.array_equal(src[1]["actions"], direct[1]["actions"])
    with cfg.unlocked():
        cfg.kind = "nope"
    with pytest.raises(DataError, match=r"dataset\.kind 'nope' has no source; choose one of libero, .*synthetic"):
        make_source(cfg)


def test_make_source_expands_paths_and_applies_overrides(libero, monkeypatch):
    paths, kwargs = libero
    root = os.path.dirname(paths["data_dir"])
    monkeypatch.setenv("ROLLOUTS_ROOT", root)
    cfg = {k: v.replace(root, "${ROLLOUTS_ROOT}") for k, v in paths.items()}
    cfg.update(kind="libero", **kwargs)
    src = make_source(cfg, seed=2, chunk_size=3, use_image_aug=False)
    assert src.options.data_dir == paths["data_dir"] and src.options.rollout_data_dir == paths["rollout_data_dir"]
    assert (src.options.chunk_size, src.options.use_image_aug, src.options.seed) == (3, False, 2)
    assert src[0]["actions"].shape[0] == 3
    monkeypatch.delenv("ROLLOUTS_ROOT")
    with pytest.raises(DataError, match=r"dataset\.data_dir: environment variable\(s\) ROLLOUTS_ROOT not set"):
        make_source(cfg)


def test_synthetic_kind_needs_no_files_and_takes_the_model_layout():
    from configs.cosmos_policy import get_config

    c = get_config("tiny")
    ds = c.dataloader_train.dataset
    assert ds.kind == "synthetic"
    src = make_source(ds, seed=0, layout=c.model.latent_layout, state_t=c.model.state_t)
    assert src.layout == dict(c.model.latent_layout) and src.state_t == c.model.state_t


def test_list_instructions(libero):
    paths, _ = libero
    info = load_fixture("libero_rollout_samples.safetensors")[1]
    got = list_instructions("libero", paths["data_dir"], paths["rollout_data_dir"])
    assert got == sorted(info["commands"])
    assert libero_instruction("/x/KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5") == "turn on the stove"
    assert libero_instruction("/x/pick_up_the_book_demo.hdf5") == "pick up the book"
