"""Batched closed-loop rollouts: chunk execution order, waves, and the demo simulator through the CLI code path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data import statistics
from cosmos_policy_jax.eval import main, policies, preprocess, rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_PREP = preprocess.ImagePreprocessing(image_size=8, jpeg_quality=None, center_crop=False)


class CountingEnv:
    """Slot i's episode lasts ``lengths[spec.index]`` steps; records every action it executes."""

    def __init__(self, num_envs, lengths, succeed_at=None):
        self.num_envs = num_envs
        self.lengths = lengths
        self.succeed_at = succeed_at or {}
        self.executed = {}
        self.specs = [None] * num_envs
        self.steps = np.zeros(num_envs, int)

    def _obs(self):
        img = np.zeros((self.num_envs, 8, 8, 3), np.uint8)
        img[:, 0, 0, 0] = self.steps  # lets a test check that observations follow the steps
        return rollout.Observation(images={"current_image": img}, proprio=self.steps[:, None].astype(float))

    def reset(self, episodes):
        self.specs = list(episodes)
        self.steps[:] = 0
        for s in episodes:
            if s is not None:
                self.executed[s.index] = []
        return self._obs()

    def step(self, actions):
        done = np.ones(self.num_envs, bool)
        success = np.zeros(self.num_envs, bool)
        for i, s in enumerate(self.specs):
            if s is None or self.steps[i] >= self.lengths[s.index]:
                continue
            self.executed[s.index].append(actions[i].copy())
            self.steps[i] += 1
            done[i] = self.steps[i] >= self.lengths[s.index]
            success[i] = self.succeed_at.get(s.index) == self.steps[i]
            done[i] |= success[i]
        return self._obs(), done, success

    def instructions(self):
        return [f"task {s.task}" if s is not None else "" for s in self.specs]

    def close(self):
        pass


class ChunkPolicy:
    """Action [call, step-in-chunk, slot, proprio] so the executed sequence shows where each action came from."""

    def __init__(self, chunk):
        self.chunk = chunk
        self.calls = 0
        self.batches = []

    def __call__(self, batch, *, seed):
        self.batches.append(batch)
        m = batch.batch_size
        a = np.zeros((m, self.chunk, 4))
        a[..., 0] = self.calls
        a[..., 1] = np.arange(self.chunk)[None]
        a[..., 2] = np.arange(m)[:, None]
        a[..., 3] = batch.proprio[:, :1]
        self.calls += 1
        return policies.PolicyOutput(actions=a, value=np.full(m, 0.25 * self.calls))


def _specs(n):
    return [rollout.EpisodeSpec(index=i, task=str(i % 2)) for i in range(n)]


def test_first_open_loop_actions_of_each_chunk_are_executed_in_order():
    env = CountingEnv(2, lengths={0: 7, 1: 5})
    pol = ChunkPolicy(chunk=4)
    results, timing = rollout.run_episodes(
        env, pol, _specs(2), num_open_loop_steps=3, embed=lambda t: np.ones((2, 3)), image_spec=NO_PREP
    )
    assert [r.length for r in results] == [7, 5]
    ex0 = np.array(env.executed[0])
    # Queries at steps 0, 3, 6; within a chunk the actions 0, 1, 2 (never 3) run in order.
    np.testing.assert_array_equal(ex0[:, 0], [0, 0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(ex0[:, 1], [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(ex0[:, 2], 0)
    # The policy saw the observation at the query step (proprio = steps taken so far).
    np.testing.assert_array_equal(ex0[:, 3], [0, 0, 0, 3, 3, 3, 6])
    np.testing.assert_array_equal(np.array(env.executed[1])[:, 2], 1)
    assert timing.policy_calls == 3 and timing.env_steps == 12
    # Values are recorded only while an episode runs (slot 1 ended before the third query).
    assert results[0].values == [0.25, 0.5, 0.75] and results[1].values == [0.25, 0.5]
    assert pol.batches[0].embedding.shape == (2, 2, 3)


def test_waves_keep_the_batch_shape_and_results_in_episode_order():
    lengths = {0: 2, 1: 4, 2: 3, 3: 1, 4: 2}
    env = CountingEnv(2, lengths=lengths, succeed_at={1: 4, 4: 1})
    pol = ChunkPolicy(chunk=2)
    results, _ = rollout.run_episodes(
        env, pol, _specs(5), num_open_loop_steps=2, embed=lambda t: np.zeros((1, 1)), image_spec=NO_PREP
    )
    assert [r.spec.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.length for r in results] == [2, 4, 3, 1, 1]
    assert [r.success for r in results] == [False, True, False, False, True]
    assert all(b.batch_size == 2 for b in pol.batches)
    # Last wave: episode 4 alone; the idle slot's row is a copy of the active one.
    np.testing.assert_array_equal(pol.batches[-1].proprio[0], pol.batches[-1].proprio[1])
    summary = rollout.summarize(results)
    assert summary["episodes"] == 5 and summary["successes"] == 2 and summary["success_rate"] == pytest.approx(0.4)
    assert summary["per_task"]["0"]["episodes"] == 3


def _stats_file(tmp_path, action_dim=None, proprio_dim=None, speed=0.06):
    ds = get_config("demo").dataloader_train.dataset
    action_dim = ds.action_dim if action_dim is None else action_dim
    proprio_dim = ds.proprio_dim if proprio_dim is None else proprio_dim
    stats = {
        "actions_min": np.full(action_dim, -speed),
        "actions_max": np.full(action_dim, speed),
        "actions_mean": np.zeros(action_dim),
        "actions_std": np.full(action_dim, speed / 2),
        "actions_median": np.zeros(action_dim),
        "proprio_min": -np.ones(proprio_dim),
        "proprio_max": np.ones(proprio_dim),
        "proprio_mean": np.zeros(proprio_dim),
        "proprio_std": np.ones(proprio_dim),
        "proprio_median": np.zeros(proprio_dim),
    }
    path = str(tmp_path / "dataset_statistics.json")
    statistics.save_statistics(stats, path)
    return path


def test_random_policy_closed_loop_in_the_demo_through_the_cli_code_path(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", str(tmp_path / "data"))
    opts = main.EvalOptions(
        policy="random",
        episodes=3,
        num_envs=2,
        max_steps=6,
        save_videos=1,
        stats=_stats_file(tmp_path),
        output=str(tmp_path / "out"),
    )
    report = main.evaluate(get_config("demo"), opts, log=lambda *a: None)
    assert report["summary"]["episodes"] == 3
    assert all(1 <= e["length"] <= 6 for e in report["episodes"])
    assert report["timing"]["policy_calls"] == 2  # two waves, chunk 8 >= 6 steps: one query each
    assert report["timing"]["env_steps"] == sum(e["length"] for e in report["episodes"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"] == report["summary"]
    lines = (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    assert sorted(os.listdir(tmp_path / "out" / "videos"))[0].startswith("ep0000_red_")
    assert report["settings"]["image_preprocessing"] == {
        "image_size": 32,
        "flip": False,
        "jpeg_quality": None,
        "center_crop": False,
    }


def test_cli_runs_a_baseline_and_rejects_bad_input_with_one_line(tmp_path):
    env = {**os.environ, "COSMOS_POLICY_DATA_ROOT": str(tmp_path / "data"), "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/cosmos_policy.py:demo"]
    ok = subprocess.run(
        [
            *base,
            "--policy=mean_action",
            "--episodes=2",
            "--max_steps=3",
            f"--stats={_stats_file(tmp_path)}",
            f"--output={tmp_path / 'o'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "success rate 0.000 (0/2)" in ok.stdout
    bad = subprocess.run([*base, "--policy=model"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --checkpoint is required")
    typo = subprocess.run(
        [*base, "--config.model.nope=1", "--policy=random"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1].startswith("error: bad command line")


@pytest.mark.slow
def test_model_policy_end_to_end_on_the_demo(tmp_path, monkeypatch):
    """A randomly initialised demo-size DiT exported like the trainer does, evaluated through the CLI code path."""
    from flax import nnx

    from cosmos_policy_jax.convert.dit import export_dit
    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT

    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", str(tmp_path / "data"))
    config = get_config("demo")
    cfg = DiTConfig.from_config(config.model.net)
    ckpt = tmp_path / "job" / "export" / "net.safetensors"
    ckpt.parent.mkdir(parents=True)
    export_dit(nnx.state(MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(3)), nnx.Param), cfg, str(ckpt))
    opts = main.EvalOptions(
        checkpoint=str(tmp_path / "job"),  # a job directory without checkpoints/: its export is used
        episodes=3,
        num_envs=2,
        max_steps=4,
        num_steps=2,
        stats=_stats_file(tmp_path),
        output=str(tmp_path / "out"),
    )
    report = main.evaluate(config, opts, log=lambda *a: None)
    assert report["summary"]["episodes"] == 3
    assert report["timing"]["policy_calls"] == 2
    # The job dir resolved to its export; no policy.json says it holds EMA weights, so they are the raw ones.
    assert report["settings"]["weights"].startswith(f"{ckpt} (raw weights): ")
    assert report["settings"]["num_denoising_steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()]
    assert all(len(r["values"]) == 1 and 0.0 <= r["values"][0] <= 1.0 for r in rows)
    assert all(1 <= r["length"] <= 4 for r in rows)
