"""Demo task: simulator (expert succeeds, random fails, batched stepping) and the LIBERO-format generator."""

import concurrent.futures
import glob
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data import demo_gen, demo_sim, pipeline
from cosmos_policy_jax.data.sources import LiberoSource
from cosmos_policy_jax.data.t5 import load_t5_embeddings


def _rollout(env, policy, seed):
    env.reset(seed)
    done, info = False, {}
    while not done:
        _, _, done, info = env.step(policy(env))
    return info


def test_expert_succeeds_and_random_rarely_does():
    env = demo_sim.DemoReachEnv()
    rng = np.random.default_rng(0)
    seeds = range(100, 140)
    expert = [_rollout(env, demo_sim.DemoReachEnv.expert_action, s) for s in seeds]
    speed = env.config.max_speed
    random = [_rollout(env, lambda e: rng.uniform(-speed, speed, 2), s) for s in seeds]
    still = [_rollout(env, lambda e: np.zeros(7), s) for s in seeds]  # a "mean action" policy
    assert sum(i["success"] for i in expert) >= 38
    assert sum(i["success"] for i in random) <= 4
    assert sum(i["success"] for i in still) == 0
    assert all(i["steps"] == env.config.max_steps for i in still)


def test_reset_is_deterministic_and_observation_is_informative():
    cfg = demo_sim.DemoReachConfig(image_size=32)
    env = demo_sim.DemoReachEnv(cfg)
    a, b = env.reset(7), demo_sim.DemoReachEnv(cfg).reset(7)
    np.testing.assert_array_equal(a["primary_image"], b["primary_image"])
    assert a["instruction"] == b["instruction"] == f"reach the {env.state.target_color} target"
    assert a["primary_image"].shape == a["wrist_image"].shape == (32, 32, 3) and a["primary_image"].dtype == np.uint8
    np.testing.assert_allclose(a["proprio"], env.state.agent, atol=1e-6)
    # The target's colour is at its position in the top view; the wrist view is centred on the (white) agent.
    x, y = env.state.target_position
    half = cfg.primary_half_width
    col, row = int((x / half + 1) / 2 * 32), int((1 - y / half) / 2 * 32)
    np.testing.assert_array_equal(a["primary_image"][row, col], demo_sim.COLORS[env.state.target_color])
    np.testing.assert_array_equal(a["wrist_image"][16, 16], demo_sim.AGENT_COLOR)
    other = env.reset(8)
    assert not np.array_equal(other["primary_image"], a["primary_image"])


def test_vec_env_matches_single_envs():
    vec = demo_sim.DemoReachVecEnv(3)
    singles = [demo_sim.DemoReachEnv() for _ in range(3)]
    obs = vec.reset([1, 2, 3], colors=["red", None, "blue"])
    for env, s, c in zip(singles, [1, 2, 3], ["red", None, "blue"]):
        env.reset(s, color=c)
    assert obs["instruction"][0] == "reach the red target" and obs["primary_image"].shape == (3, 32, 32, 3)
    for _ in range(60):
        was_done = vec.done.copy()
        actions = np.stack([e.expert_action() if not d else np.zeros(2) for e, d in zip(singles, was_done)])
        obs, _, done, _ = vec.step(actions)
        for i, env in enumerate(singles):
            if not was_done[i]:
                _, _, single_done, _ = env.step(actions[i])
                assert single_done == done[i]
            np.testing.assert_array_equal(obs["proprio"][i], env.state.agent.astype(np.float32))
        if done.all():
            break
    assert vec.success.all()
    with pytest.raises(RuntimeError, match="episode is over"):
        singles[0].step(np.zeros(2))


SMALL = dict(num_episodes=8, num_rollouts=8, image_size=16, action_dim=7, proprio_dim=9, text_len=8, text_dim=16)


def _dataset_digest(root):
    """Hash of every HDF5 dataset's bytes and attributes (file names included), not of file metadata."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**", "*.hdf5"), recursive=True)):
        h.update(os.path.relpath(path, root).encode())
        with h5py.File(path, "r") as f:
            for key, value in sorted(f.attrs.items()):
                h.update(f"{key}={value}".encode())

            def visit(name, obj, h=h):
                if isinstance(obj, h5py.Dataset):
                    h.update(name.encode())
                    for item in np.atleast_1d(obj[()]):
                        h.update(np.asarray(item).tobytes())

            f.visititems(visit)
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path):
    m1 = demo_gen.generate_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    m2 = demo_gen.generate_demo_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    demo_gen.generate_demo_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    assert m1 == m2
    assert _dataset_digest(tmp_path / "a") == _dataset_digest(tmp_path / "b")
    assert _dataset_digest(tmp_path / "a") != _dataset_digest(tmp_path / "c")
    t1 = load_t5_embeddings(tmp_path / "a" / "success_only" / "t5_embeddings.pkl")
    t2 = load_t5_embeddings(tmp_path / "b" / "success_only" / "t5_embeddings.pkl")
    assert sorted(t1) == sorted(m1["instructions"])
    for k in t1:
        np.testing.assert_array_equal(t1[k], t2[k])


def _demo_cfg(root, **over):
    c = get_config("demo").dataloader_train.dataset
    with c.unlocked():
        c.data_dir = os.path.join(root, "success_only")
        c.rollout_data_dir = os.path.join(root, "all_episodes")
        c.t5_text_embeddings_path = os.path.join(root, "success_only", "t5_embeddings.pkl")
        c.demo_num_episodes, c.demo_num_rollouts = 8, 8
        c.final_image_size, c.text_len, c.text_dim = 16, 8, 16
        # LIBERO-sized vectors, to exercise the padding of the 2-D actions/proprio.
        c.action_dim, c.proprio_dim = 7, 9
        for k, v in over.items():
            c[k] = v
    return c


@pytest.mark.parametrize("jpeg", [False, True])
def test_dataset_reads_with_the_libero_source(tmp_path, jpeg):
    root = str(tmp_path / "demo_reach")
    cfg = _demo_cfg(root)
    demo_gen.ensure_demo_dataset(cfg, jpeg=jpeg)
    src = LiberoSource.from_config(cfg)
    assert src.instructions == sorted(f"reach the {c} target" for c in demo_sim.COLORS)
    assert len(src.rollouts) == 8 and 0 < len(src._success_ids) < 8  # successes and failures
    cats = {src.describe(i)["category"] for i in range(len(src))}
    assert cats == {"demo", "success_rollout", "failure_rollout"}
    s = src.get(len(src) - 1, 0)
    assert s["video"].shape == (3, 33, 16, 16) and s["video"][:, 9].any()
    assert s["actions"].shape == (cfg.chunk_size, 7) and np.isfinite(s["actions"]).all()
    assert s["proprio"].shape == (9,) and s["t5_text_embeddings"].shape == (8, 16)
    # Padded action dims repeat the velocity: normalised dims 2, 4, 6 equal dim 0.
    np.testing.assert_array_equal(s["actions"][:, 2], s["actions"][:, 0])
    with h5py.File(glob.glob(os.path.join(root, "success_only", "demo_reach", "*.hdf5"))[0]) as f:
        key = "obs/agentview_rgb_jpeg" if jpeg else "obs/agentview_rgb"
        assert key in f["data/demo_0"]


def test_ensure_is_idempotent_concurrent_and_checks_params(tmp_path):
    root = str(tmp_path / "demo_reach")
    cfg = _demo_cfg(root)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: demo_gen.ensure_demo_dataset(cfg), range(2)))
    assert roots == [root, root]
    assert sorted(os.listdir(tmp_path)) == ["demo_reach"]  # no temporary directories left behind
    assert os.path.exists(os.path.join(root, "success_only", "dataset_statistics.json"))
    before = _dataset_digest(root)
    assert demo_gen.ensure_demo_dataset(cfg) == root and _dataset_digest(root) == before
    with pytest.raises(ValueError, match="num_episodes=8 but the config asks for 12"):
        demo_gen.ensure_demo_dataset(_demo_cfg(root, demo_num_episodes=12))
    with pytest.raises(ValueError, match="rollout_data_dir"):
        demo_gen.ensure_demo_dataset(_demo_cfg(root, rollout_data_dir=str(tmp_path / "elsewhere")))
    os.makedirs(tmp_path / "half" / "success_only")
    with pytest.raises(ValueError, match="not a finished demo dataset"):
        demo_gen.ensure_demo_dataset(_demo_cfg(str(tmp_path / "half")))


def test_make_source_for_demo_feeds_the_pipeline(tmp_path):
    cfg = _demo_cfg(str(tmp_path / "demo_reach"))
    src = pipeline.make_source_for(cfg, seed=0)
    it = pipeline.build_pipeline(src, batch_size_per_process=4, dp_rank=0, dp_size=1, shuffle=True)
    batch = next(it)
    assert batch["video"].shape == (4, 3, 33, 16, 16) and batch["actions"].shape == (4, cfg.chunk_size, 7)


_GENERATE = """
import sys
from tests.data.test_demo import _demo_cfg
from cosmos_policy_jax.data import demo_gen
demo_gen.ensure_demo_dataset(_demo_cfg(sys.argv[1], demo_num_episodes=400, demo_num_rollouts=400))
"""


def test_interrupted_generation_is_cleaned_up_on_the_next_start(tmp_path):
    """SIGKILL during the first generation leaves a hidden temporary directory; the next start removes
    it (its owner is dead) and keeps the one of a generation that is still running."""
    root = tmp_path / "demo_reach"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _GENERATE, str(root)], env=env, cwd=env["PYTHONPATH"])
    try:
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".demo_reach.tmp-")]:
            assert proc.poll() is None and time.monotonic() < deadline, "the generation did not start"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    (abandoned,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".demo_reach.tmp-")]
    live = tmp_path / f".demo_reach.tmp-{socket.gethostname()}-{os.getpid()}-abcd1234"  # this process: alive
    live.mkdir()
    demo_gen.ensure_demo_dataset(_demo_cfg(str(root)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "demo_reach"]), abandoned
