"""Planning settings: the reference's advertised-but-broken combinations are rejected with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cosmos_policy_jax.planning.config import PlanningConfig
from tests.eval.test_rollout import REPO, _stats_file


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(value_ensemble_aggregation_scheme="gamma_weighted_average"), "value_ensemble_aggregation_scheme"),
        (dict(future_state_ensemble_aggregation_scheme="median"), "future_state_ensemble_aggregation_scheme"),
        (dict(search_depth_value_aggregation_scheme="max"), "search_depth_value_aggregation_scheme"),
        (dict(ar_value_prediction=True), "needs --ar_future_prediction"),
        (dict(ar_qvalue_prediction=True, search_depth=2, ar_future_prediction=True), "ar_qvalue_prediction"),
        (dict(search_depth=2), "needs --ar_future_prediction"),
        (dict(num_queries_best_of_n=0), "num_queries_best_of_n"),
    ],
)
def test_bad_settings_raise_naming_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlanningConfig(**kwargs)


def test_ensemble_sizes_and_plain_query():
    p = PlanningConfig()
    assert p.plain and p.future_members == 1 and p.value_members == 1
    q = PlanningConfig(
        num_queries_best_of_n=8,
        ar_future_prediction=True,
        ar_value_prediction=True,
        use_ensemble_future_state_predictions=True,
        use_ensemble_value_predictions=True,
        future_state_ensemble_aggregation_scheme="first",
    )
    assert not q.plain and (q.future_members, q.value_members) == (3, 5)


def test_eval_cli_rejects_a_bad_planning_flag_with_exit_2(tmp_path):
    env = {**os.environ, "COSMOS_POLICY_DATA_ROOT": str(tmp_path / "data"), "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable, "-m", "cosmos_policy_jax.eval", "--config=configs/cosmos_policy.py:demo", "--policy=random",
        f"--stats={_stats_file(tmp_path)}", "--num_queries_best_of_n=4", "--ar_value_prediction",
    ]  # fmt: skip
    bad = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --ar_value_prediction scores a predicted future state: it needs --ar_future_prediction"
    )
