"""LIBERO closed loop through the evaluation command (needs the optional LIBERO extra; skipped without it).

Run in the LIBERO environment (docs/evaluation.md):
    MUJOCO_GL=egl .venv-libero/bin/python -m pytest tests/eval/test_libero.py -m libero -q -s
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cosmos_policy_jax.data import statistics, t5
from cosmos_policy_jax.eval import libero_env

AVAILABLE, WHY = libero_env.libero_available()
pytestmark = [pytest.mark.libero, pytest.mark.skipif(not AVAILABLE, reason=f"LIBERO extra absent: {WHY}")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = "libero_spatial"


def _stats(tmp_path) -> str:
    # Roughly LIBERO's ranges: 6-DoF deltas in [-0.94, 0.94], gripper -1/+1; proprio in metres/quaternion.
    a_lo = np.array([-0.9375, -0.9375, -0.9375, -0.36, -0.375, -0.375, -1.0])
    p_lo = np.array([-0.01, -0.05, -0.5, -0.4, 0.0, -1, -1, -1, -1])
    p_hi = np.array([0.05, 0.01, 0.2, 0.4, 1.4, 1, 1, 1, 1])
    stats = {
        "actions_min": a_lo,
        "actions_max": -a_lo,
        "actions_mean": np.zeros(7),
        "actions_std": np.ones(7),
        "actions_median": np.zeros(7),
        "proprio_min": p_lo,
        "proprio_max": p_hi,
        "proprio_mean": np.zeros(9),
        "proprio_std": np.ones(9),
        "proprio_median": np.zeros(9),
    }
    path = str(tmp_path / "libero_dataset_statistics.json")
    statistics.save_statistics(stats, path)
    return path


def _run(args, tmp_path, timeout=900):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "cosmos_policy_jax.eval", *args, f"--compilation_cache={tmp_path / 'xla'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_libero_env_protocol():
    info = libero_env.suite_info(SUITE)
    assert len(info.task_names) == 10 and min(info.num_init_states) >= 50
    episodes = libero_env.libero_episodes(info, [3], 2)
    assert [(e.task_id, e.trial) for e in episodes] == [(3, 0), (3, 1)]
    env = libero_env.LiberoVecEnv(1, SUITE, max_steps=3)
    try:
        obs = env.reset([episodes[0]])
        assert obs.images["current_image"].shape == (1, 256, 256, 3)
        assert obs.images["current_wrist_image"].dtype == np.uint8
        assert obs.proprio.shape == (1, 9) and np.isfinite(obs.proprio).all()
        np.testing.assert_allclose(np.linalg.norm(obs.proprio[0, 5:]), 1.0, atol=1e-4)  # unit quaternion
        assert env.instructions() == [info.instructions[3]]
        noop = np.array([libero_env.NOOP_ACTION])
        for k in range(3):
            obs, done, success = env.step(noop)
            assert done[0] == (k == 2) and not success[0]
        assert env.steps[0] == 3
    finally:
        env.close()


def test_one_libero_episode_through_the_command(tmp_path):
    out = tmp_path / "out"
    _run(
        [
            "--config=configs/cosmos_policy.py:libero",
            "--policy=random",
            f"--task_suite={SUITE}",
            "--task_ids=0",
            "--trials_per_task=1",
            "--max_steps=4",
            f"--stats={_stats(tmp_path)}",
            "--save_videos=1",
            f"--output={out}",
        ],
        tmp_path,
    )
    report = json.loads((out / "results.json").read_text())
    assert report["summary"]["episodes"] == 1
    assert report["episodes"][0]["length"] == 4
    assert report["settings"]["settle_steps"] == 10 and report["settings"]["max_steps"] == 4
    assert report["settings"]["image_preprocessing"] == {
        "image_size": 224,
        "flip": True,
        "jpeg_quality": 95,
        "center_crop": True,
    }
    assert report["timing"]["env_steps"] == 4 and report["timing"]["env_steps_per_s"] > 0
    assert any(v.endswith(".gif") for v in report["videos"])


@pytest.mark.slow
def test_tiny_model_in_libero_through_the_command(tmp_path):
    """A randomly initialised tiny policy, its instruction embeddings from a T5-format pickle."""
    import jax
    from flax import nnx

    from configs.cosmos_policy import get_config
    from cosmos_policy_jax.convert.dit import export_dit
    from cosmos_policy_jax.demo import text_stub
    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT

    config = get_config("libero,tiny")
    ds = config.dataloader_train.dataset
    cfg = DiTConfig.from_config(config.model.net)
    with jax.default_device(jax.devices("cpu")[0]):
        params = nnx.state(MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    ckpt = tmp_path / "net.safetensors"
    export_dit(params, cfg, str(ckpt))
    info = libero_env.suite_info(SUITE)
    emb = {
        s: text_stub.encode_instruction(s, text_len=ds.text_len, text_dim=ds.text_dim)[None] for s in info.instructions
    }
    t5.save_t5_embeddings(emb, str(tmp_path / "t5.pkl"))
    out = tmp_path / "out"
    _run(
        [
            "--config=configs/cosmos_policy.py:libero,tiny",
            f"--checkpoint={ckpt}",
            f"--task_suite={SUITE}",
            "--task_ids=1",
            "--trials_per_task=1",
            "--max_steps=3",
            "--num_steps=2",
            f"--stats={_stats(tmp_path)}",
            f"--t5={tmp_path / 't5.pkl'}",
            f"--output={out}",
        ],
        tmp_path,
    )
    report = json.loads((out / "results.json").read_text())
    ep = report["episodes"][0]
    assert ep["task_id"] == 1 and ep["length"] == 3
    assert report["timing"]["policy_calls"] == 1
    assert report["settings"]["image_preprocessing"]["image_size"] == 32
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(rows[0]["values"]) == 1 and 0.0 <= rows[0]["values"][0] <= 1.0


def test_process_envs_match_in_process_envs():
    """Same trials, same random actions: one process per environment gives the same frames and outcomes."""
    from cosmos_policy_jax.eval import policies, preprocess, rollout

    info = libero_env.suite_info(SUITE)
    episodes = libero_env.libero_episodes(info, [2], 2)
    stats = {"actions_min": -0.5 * np.ones(7), "actions_max": 0.5 * np.ones(7)}
    spec = preprocess.ImagePreprocessing(image_size=64, flip=True, jpeg_quality=95, center_crop=True)
    runs = []
    for cls in (libero_env.LiberoVecEnv, libero_env.ProcessLiberoVecEnv):
        env = cls(2, SUITE, max_steps=3)
        try:
            results, timing = rollout.run_episodes(
                env,
                policies.RandomPolicy(stats, 4),
                episodes,
                num_open_loop_steps=2,
                embed=lambda t: np.zeros((1, 1)),
                image_spec=spec,
                record=lambda s: True,
                seed=5,
            )
        finally:
            env.close()
        runs.append(results)
        print(cls.__name__, timing.summary(2))
    for a, b in zip(*runs):
        assert (a.success, a.length) == (b.success, b.length) == (False, 3)
        for key in a.frames:
            np.testing.assert_array_equal(a.frames[key][-1], b.frames[key][-1])
        assert not np.array_equal(a.frames["current_image"][0], a.frames["current_image"][-1])  # the robot moved
