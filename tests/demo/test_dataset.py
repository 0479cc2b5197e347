"""The demo dataset behind a config (``demo/dataset.py``): generated once and atomically, checked against
the config, read by the real LIBERO reader, routed through the source registry."""

import concurrent.futures
import glob
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
from cosmos_policy_jax.data import pipeline
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.data.registry import make_source
from cosmos_policy_jax.demo import dataset
from cosmos_policy_jax.demo import sim as demo_sim
from tests.demo.test_generate import dataset_digest


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
    dataset.ensure_demo_dataset(cfg, jpeg=jpeg)
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
        roots = list(pool.map(lambda _: dataset.ensure_demo_dataset(cfg), range(2)))
    assert roots == [root, root]
    assert sorted(os.listdir(tmp_path)) == ["demo_reach"]  # no temporary directories left behind
    assert os.path.exists(os.path.join(root, "success_only", "dataset_statistics.json"))
    before = dataset_digest(root)
    assert dataset.ensure_demo_dataset(cfg) == root and dataset_digest(root) == before
    with pytest.raises(ValueError, match="num_episodes=8 but the config asks for 12"):
        dataset.ensure_demo_dataset(_demo_cfg(root, demo_num_episodes=12))
    with pytest.raises(ValueError, match="rollout_data_dir"):
        dataset.ensure_demo_dataset(_demo_cfg(root, rollout_data_dir=str(tmp_path / "elsewhere")))
    os.makedirs(tmp_path / "half" / "success_only")
    with pytest.raises(ValueError, match="not a finished demo dataset"):
        dataset.ensure_demo_dataset(_demo_cfg(str(tmp_path / "half")))


def test_make_source_for_demo_feeds_the_pipeline(tmp_path):
    cfg = _demo_cfg(str(tmp_path / "demo_reach"))
    src = make_source(cfg, seed=0)
    assert isinstance(src, LiberoSource)
    it = pipeline.build_pipeline(src, batch_size_per_process=4, dp_rank=0, dp_size=1, shuffle=True)
    batch = next(it)
    assert batch["video"].shape == (4, 3, 33, 16, 16) and batch["actions"].shape == (4, cfg.chunk_size, 7)


_GENERATE = """
import sys
from tests.demo.test_dataset import _demo_cfg
from cosmos_policy_jax.demo import dataset
dataset.ensure_demo_dataset(_demo_cfg(sys.argv[1], demo_num_episodes=400, demo_num_rollouts=400))
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
    dataset.ensure_demo_dataset(_demo_cfg(str(root)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "demo_reach"]), abandoned
