"""``eval --save_rollouts``: episodes written in the reference's rollout layout and read back by the
dataset reader (``data/libero.py``), checked against an independent replay of the environment."""

from __future__ import annotations

import os

import numpy as np

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.demo import dataset as demo_dataset
from cosmos_policy_jax.demo import env as demo_env
from cosmos_policy_jax.demo import generate
from cosmos_policy_jax.eval import main
from tests.eval.test_rollout import _stats_file


def test_eval_writes_rollouts_the_dataset_reader_parses(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", str(tmp_path / "data"))
    out = tmp_path / "rollouts" / "all_episodes"
    config = get_config("demo")
    opts = main.EvalOptions(
        policy="random",
        episodes=3,
        num_envs=2,
        max_steps=5,
        seed=4,
        stats=_stats_file(tmp_path),
        output=str(tmp_path / "out"),
        save_rollouts=str(out),
    )
    report = main.evaluate(config, opts, log=lambda *a: None)
    files = sorted(os.listdir(out))
    assert len(files) == 3 and all(f.startswith("episode_data--suite=demo_reach--") for f in files)
    for ep in report["episodes"]:
        assert any(f"--ep={ep['index']}--success={ep['success']}--random.hdf5" in f for f in files)

    ds = config.dataloader_train.dataset
    root = str(tmp_path / "demo")  # a small demo dataset for the reader's demonstrations
    generate.generate_demo_dataset(
        root, num_episodes=4, num_rollouts=0, image_size=int(ds.final_image_size), action_dim=int(ds.action_dim),
        proprio_dim=int(ds.proprio_dim), text_len=int(ds.text_len), text_dim=int(ds.text_dim),
        sim_config=demo_env.sim_config_from_manifest(demo_dataset.demo_root(ds), int(ds.final_image_size)),
    )  # fmt: skip
    src = LiberoSource.from_config(
        dict(
            data_dir=os.path.join(root, "success_only"),
            rollout_data_dir=str(out),
            t5_text_embeddings_path=os.path.join(root, "success_only", "t5_embeddings.pkl"),
        ),
        chunk_size=int(ds.chunk_size),
        final_image_size=int(ds.final_image_size),
        use_image_aug=False,
        normalize_actions=False,
        normalize_proprio=False,
        action_dim=int(ds.action_dim),
        proprio_dim=int(ds.proprio_dim),
    )
    try:
        assert len(src.rollouts) == 3
        by_index = {int(os.path.basename(r.path).split("--ep=")[1].split("--")[0]): r for r in src.rollouts}
        specs = demo_env.demo_episodes(opts.episodes, opts.seed)
        sim = demo_env.sim_config_from_manifest(demo_dataset.demo_root(ds), int(ds.final_image_size))
        for ep in report["episodes"]:
            r = by_index[ep["index"]]
            assert r.num_steps == ep["length"] and r.success == ep["success"]
            assert r.actions.shape == (ep["length"], int(ds.action_dim))
            # Replay the written actions in a fresh environment: the stored observations must match.
            env = demo_env.DemoVecEnv(1, sim, int(ds.proprio_dim))
            obs = env.reset([specs[ep["index"]]])
            assert r.command == env.instructions()[0]
            for k in range(r.num_steps):
                # float32 storage of float64 actions: positions agree to ~1e-7 after a few steps.
                np.testing.assert_allclose(r.proprio[k], obs.proprio[0], rtol=1e-5, atol=1e-5)
                if k == 0:
                    np.testing.assert_array_equal(src._frame(r, "primary", k), obs.images["current_image"][0])
                obs, _, success = env.step(r.actions[k][None].astype(np.float64))
            assert bool(success[0]) == ep["success"]
    finally:
        src.close()
