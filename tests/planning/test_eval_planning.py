"""Best-of-N planning through the evaluation's code path (random-weight demo model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.cosmos_policy import get_config
from cosmos_policy_jax.eval import main
from cosmos_policy_jax.planning.config import PlanningConfig
from tests.eval.test_rollout import _stats_file


@pytest.mark.slow
def test_best_of_n_in_eval_with_a_planning_checkpoint(tmp_path, monkeypatch):
    from flax import nnx

    from cosmos_policy_jax.convert.dit import export_dit
    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT

    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", str(tmp_path / "data"))
    config = get_config("demo")
    cfg = DiTConfig.from_config(config.model.net)
    paths = []
    for name, seed in (("policy", 3), ("planner", 4)):
        ckpt = tmp_path / name / "export" / "net.safetensors"
        ckpt.parent.mkdir(parents=True)
        export_dit(nnx.state(MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(seed)), nnx.Param), cfg, str(ckpt))
        paths.append(str(tmp_path / name))
    pcfg = PlanningConfig(
        num_queries_best_of_n=3,
        ar_future_prediction=True,
        ar_value_prediction=True,
        num_denoising_steps_action=2,
        mask_current_state_action_for_value_prediction=True,
    )
    opts = main.EvalOptions(
        checkpoint=paths[0],
        planning_checkpoint=paths[1],
        planning=pcfg,
        episodes=2,
        num_envs=2,
        max_steps=3,
        stats=_stats_file(tmp_path),
        output=str(tmp_path / "out"),
    )
    report = main.evaluate(config, opts, log=lambda *a: None)
    settings = report["settings"]
    assert settings["planning"]["num_queries_best_of_n"] == 3
    assert settings["planning_checkpoint"] == paths[1]
    rows = [json.loads(x) for x in (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["values"]) == 1 and 0.0 <= r["values"][0] <= 1.0 for r in rows)

    # The policy object behind it returns, per observation, the chunk of its best-valued query.
    from cosmos_policy_jax.eval.policies import PolicyInput
    from cosmos_policy_jax.planning.policy import build_planning_policy

    with open(opts.stats) as f:
        stats = {k: np.asarray(v) for k, v in json.load(f).items()}
    policy, _ = build_planning_policy(config, paths[0], stats, pcfg, planning_checkpoint=paths[1])
    rng = np.random.default_rng(0)
    batch = PolicyInput(
        images={
            s: rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for s in ("current_wrist_image", "current_image")
        },
        proprio=rng.uniform(-0.5, 0.5, (2, 2)),
        embedding=rng.standard_normal(
            (2, int(config.dataloader_train.dataset.text_len), int(config.dataloader_train.dataset.text_dim))
        ).astype(np.float32),
    )
    res = policy.plan(batch, seed=5)
    out = policy(batch, seed=5)
    for m in range(2):
        q = int(np.argmax(res.all_values[m]))
        assert res.selected_query[m] == q
        np.testing.assert_array_equal(res.actions_normalized[m], res.all_actions_normalized[m, q])
    np.testing.assert_allclose(out.value, res.value)
