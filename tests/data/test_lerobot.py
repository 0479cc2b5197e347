"""The LeRobot source against datasets written by the real ``lerobot`` package (v3.0 and v2.1 fixtures).

``tests/fixtures/make_lerobot_fixtures.py`` wrote ``lerobot_v30`` (lerobot 0.4.4) and ``lerobot_v21``
(lerobot 0.3.3) from the values stored in ``lerobot_expected.npz``. Parquet values must come back
bit-exact; frames went through lerobot's AV1 encoder (crf 30, yuv420p), so they are compared within
the codec's error: per-frame mean absolute error <= 4 grey levels (measured: <= 3.1), any pixel <= 64
(measured 47, chroma subsampling at the blob's edge), and each decoded frame nearer to its own
original than to the neighbouring frames (the right frame, not an off-by-one).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from cosmos_policy_jax.data import t5 as t5_lib
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.lerobot import (
    LeRobotDataset,
    LeRobotOptions,
    LeRobotSource,
    list_instructions,
    read_episodes,
)
from cosmos_policy_jax.data.returns import monte_carlo_returns
from cosmos_policy_jax.demo import text_stub
from cosmos_policy_jax.layouts import full_layout
from tests.fixture_utils import fixture_dir

VERSIONS = {"v30": "v3.0", "v21": "v2.1", "v30_multifile": "v3.0"}
CAMS = {"primary": "observation.images.top", "wrist": "observation.images.wrist"}
KEYS = dict(state_key="observation.state", action_key="action", success_key="next.success")


def fixture_root(which: str) -> str:
    return os.path.join(fixture_dir(), f"lerobot_{which}")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(fixture_dir(), "lerobot_expected.npz")) as f:
        return dict(f)


def copy_dataset(which: str, tmp_path) -> str:
    root = str(tmp_path / f"ds_{which}")
    shutil.copytree(fixture_root(which), root)
    return root


def write_embeddings(tmp_path, tasks, text_len=8, text_dim=16) -> str:
    emb = text_stub.stub_embeddings(sorted(set(tasks)), text_len=text_len, text_dim=text_dim)
    path = str(tmp_path / "t5.pkl")
    t5_lib.save_t5_embeddings({k: v[None] for k, v in emb.items()}, path)
    return path


def make_source(root: str, emb: str, **kw) -> LeRobotSource:
    args = dict(chunk_size=4, final_image_size=32, use_image_aug=False, cameras=CAMS, **KEYS)
    args.update(kw)
    return LeRobotSource(LeRobotOptions(data_dir=root, t5_text_embeddings_path=emb, **args))


@pytest.mark.parametrize("which", sorted(VERSIONS))
def test_metadata_and_parquet_values_bit_exact(which, expected):
    ds = LeRobotDataset(fixture_root(which))
    assert ds.version == VERSIONS[which]
    eps = read_episodes(fixture_root(which), CAMS, **KEYS)
    n = len(expected["tasks"])
    assert len(eps) == n
    for i, ep in enumerate(eps):
        assert ep.actions.dtype == np.float32 and ep.proprio.dtype == np.float32
        assert ep.actions.tobytes() == expected[f"action/{i}"].tobytes()
        assert ep.proprio.tobytes() == expected[f"state/{i}"].tobytes()
        assert ep.num_steps == len(expected[f"action/{i}"])
        assert ep.command == str(expected["tasks"][i])
        assert ep.success == bool(expected["success"][i])
    assert list_instructions(fixture_root(which)) == sorted(set(expected["tasks"].tolist()))


@pytest.mark.parametrize("which", sorted(VERSIONS))
def test_frames_within_codec_error(which, expected, tmp_path):
    emb = write_embeddings(tmp_path, expected["tasks"].tolist())
    src = make_source(copy_dataset(which, tmp_path), emb)  # a copy: the source writes statistics there
    worst_mean, worst_max = 0.0, 0.0
    for j in range(len(expected["tasks"])):
        ep = next(e for e in src.demos + src.rollouts if e.label == f"episode {j}")
        for role, key in CAMS.items():
            ref = expected[f"frames/{key}/{j}"].astype(np.int16)
            for t in range(ep.num_steps):
                got = src._frame(ep, role, t).astype(np.int16)
                assert got.shape == ref[t].shape
                err = np.abs(got - ref[t])
                worst_mean, worst_max = max(worst_mean, err.mean()), max(worst_max, err.max())
                for other in (t - 1, t + 1):
                    if 0 <= other < ep.num_steps and np.abs(ref[other] - ref[t]).mean() > 8:
                        assert err.mean() < np.abs(got - ref[other]).mean(), (which, key, j, t, other)
    src.close()
    assert worst_mean <= 4.0, worst_mean
    assert worst_max <= 64, worst_max


@pytest.mark.parametrize("which", sorted(VERSIONS))
def test_source_samples_failures_as_rollouts(which, expected, tmp_path):
    emb = write_embeddings(tmp_path, expected["tasks"].tolist())
    src = make_source(copy_dataset(which, tmp_path), emb)
    lengths = [len(expected[f"action/{j}"]) for j in range(len(expected["tasks"]))]
    failed = [j for j, ok in enumerate(expected["success"]) if not ok]
    assert [ep.label for ep in src.rollouts] == [f"episode {j}" for j in failed]
    assert src._demo_steps.total == sum(n for j, n in enumerate(lengths) if j not in failed)
    assert src.layout == full_layout("libero") and src.state_t == 9
    for ep in src.demos:
        np.testing.assert_array_equal(ep.returns, monte_carlo_returns(ep.num_steps, 1.0, src.options.gamma))
    for ep in src.rollouts:
        np.testing.assert_array_equal(ep.returns, monte_carlo_returns(ep.num_steps, 0.0, src.options.gamma))
    rollout_ix = [i for i in range(len(src)) if src.describe(i)["category"] != "demo"]
    assert rollout_ix, "the failed episode must be sampled as a rollout"
    s = src.get(rollout_ix[0], epoch=0)
    assert s["rollout_data_mask"] == 1 and s["rollout_data_success_mask"] == 0
    assert s["video"].shape == (3, src.num_frames, 32, 32) and s["video"].dtype == np.uint8
    again = pickle.loads(pickle.dumps(src)).get(rollout_ix[0], epoch=0)  # what a worker process sees
    for key, value in s.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(again[key]), err_msg=key)
    src.close()


def test_pipeline_sharded_and_resumable(expected, tmp_path):
    from cosmos_policy_jax.data.pipeline import build_pipeline
    from cosmos_policy_jax.data.registry import make_source as make_source_for_config

    emb = write_embeddings(tmp_path, expected["tasks"].tolist())
    cfg = dict(
        kind="lerobot",
        data_dir=copy_dataset("v30", tmp_path),
        t5_text_embeddings_path=emb,
        chunk_size=4,
        final_image_size=32,
        use_image_aug=True,
        lerobot=dict(cameras=CAMS, **KEYS),
    )
    src = make_source_for_config(cfg, seed=3)
    assert isinstance(src, LeRobotSource)
    ranks = [
        build_pipeline(
            src, batch_size_per_process=2, dp_rank=r, dp_size=2, shuffle=True, seed=3, prefetch_buffer_size=0
        )
        for r in range(2)
    ]
    keys = [set(next(it)["__key__"].tolist()) for it in ranks]
    assert not keys[0] & keys[1]
    it = ranks[0]
    second = next(it)
    state = it.get_state()
    third = next(it)
    resumed = build_pipeline(
        src, batch_size_per_process=2, dp_rank=0, dp_size=2, shuffle=True, seed=3, prefetch_buffer_size=0
    )
    resumed.set_state(state)
    again = next(resumed)
    for key in third:
        np.testing.assert_array_equal(third[key], again[key], err_msg=key)
    assert not np.array_equal(second["__key__"], third["__key__"]) or len(src) <= 4
    for x in (*ranks, resumed):
        x.close()


# ------------------------------------------------------------------ bad data


def _edit_json(path, fn):
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_missing_camera_key(tmp_path):
    with pytest.raises(DataError, match=r"meta/info\.json: no feature 'observation\.images\.side'.*cameras\.wrist"):
        read_episodes(fixture_root("v30"), {**CAMS, "wrist": "observation.images.side"}, **KEYS)


def test_unknown_format_version(tmp_path):
    root = copy_dataset("v21", tmp_path)
    _edit_json(os.path.join(root, "meta/info.json"), lambda d: d.update(codebase_version="v1.6"))
    with pytest.raises(DataError, match=r"meta/info\.json: codebase_version 'v1\.6' is not supported"):
        LeRobotDataset(root)


def test_mismatched_lengths(tmp_path):
    root = copy_dataset("v21", tmp_path)
    path = os.path.join(root, "meta/episodes.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    rows[1]["length"] += 2
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(
        DataError, match=r"episode_000001\.parquet: episode 1 has 9 rows but its metadata says length 11"
    ):
        read_episodes(root, CAMS, **KEYS, check_videos=False)
    with pytest.raises(DataError, match=r"episode_000001\.mp4: video has no frame at .*observation\.images\.top"):
        read_episodes(root, CAMS, **KEYS)


@pytest.mark.parametrize("which,rel", [
    ("v30", "videos/observation.images.wrist/chunk-000/file-000.mp4"),
    ("v21", "videos/chunk-000/observation.images.wrist/episode_000002.mp4"),
])  # fmt: skip
def test_truncated_video(which, rel, tmp_path):
    root = copy_dataset(which, tmp_path)
    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_episodes(root, CAMS, **KEYS)
    msg = str(e.value)
    assert "\n" not in msg and rel in msg and "observation.images.wrist" in msg


@pytest.mark.slow  # two CLI subprocesses (each imports the config stack): ~10 s idle, more on a loaded CPU
def test_stats_cli_exit_codes(tmp_path, expected):
    import subprocess
    import sys

    root = copy_dataset("v30", tmp_path)
    base = [
        sys.executable, "-m", "cosmos_policy_jax.data.stats", "--config=configs/cosmos_policy.py:lerobot",
        f"--config.dataloader_train.dataset.data_dir={root}",
        "--config.dataloader_train.dataset.lerobot.cameras.primary=observation.images.top",
        "--config.dataloader_train.dataset.lerobot.success_key=next.success",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ok = subprocess.run([*base, "--config.dataloader_train.dataset.lerobot.cameras.wrist=observation.images.wrist"],
                        cwd=repo, env=env, capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    with open(os.path.join(root, "dataset_statistics.json")) as f:
        stats = json.load(f)
    demos = [j for j, s in enumerate(expected["success"]) if s]
    acts = np.concatenate([expected[f"action/{j}"] for j in demos])
    np.testing.assert_array_equal(np.asarray(stats["actions_max"]), acts.max(0).astype(np.float64))
    np.testing.assert_array_equal(np.asarray(stats["actions_mean"]), acts.mean(0).astype(np.float64))
    bad = subprocess.run([*base, "--config.dataloader_train.dataset.lerobot.cameras.wrist=observation.images.nope"],
                         cwd=repo, env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "observation.images.nope" in lines[-1] and "info.json" in lines[-1]


@pytest.mark.parametrize("which", sorted(VERSIONS))
def test_t5_tool_lists_the_dataset_task_strings(which, expected, capsys):
    assert t5_lib.main(["list", f"--from_dataset={fixture_root(which)}"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(set(expected["tasks"].tolist()))
