"""Epoch structure, step maps and Monte-Carlo returns (fixture cases are in tests/parity)."""

from __future__ import annotations

import numpy as np
import pytest

from cosmos_policy_jax.data.epoch import StepIndex, calculate_epoch_structure
from cosmos_policy_jax.data.returns import monte_carlo_returns


def _counts(*args):
    e = calculate_epoch_structure(*args)
    return e.adjusted_demo_count, e.adjusted_success_rollout_count, e.adjusted_failure_rollout_count


def test_balanced_mix():
    # p_s = 0.5: both rollout counts become max(s, f); p_d = 0.5: demos then match the rollouts.
    assert _counts(40, 24, 36, 0.5, 0.5) == (72, 36, 36)
    # Many demos: rollouts are scaled up to the demo count, split by p_s.
    assert _counts(1000, 10, 30, 0.5, 0.5) == (1000, 500, 500)


def test_float_truncation_like_python_int():
    # s_new = int(45 * 0.7 / 0.3) = int(104.99999999999999) = 104, not round(105).
    assert _counts(0, 10, 45, 0.0, 0.7) == (0, 104, 45)
    # int(450 * (1 - 0.9)) = int(44.99999999999999) = 44 in the demo-balance branch.
    assert _counts(450, 1, 1, 0.5, 0.9) == (450, 405, 44)


def test_edge_rules():
    assert _counts(10, 0, 5, 0.5, 0.5) == (10, 0, 10)  # no successes: p_s -> 0, failures fill r_new
    assert _counts(10, 5, 0, 0.5, 0.5) == (10, 10, 0)  # no failures: p_s -> 1
    assert _counts(10, 5, 7, 1.0, 0.5) == (10, 0, 0)  # p_d = 1 drops rollouts
    assert _counts(10, 5, 7, 0.0, 0.5) == (0, 7, 7)  # p_d = 0: rollouts only
    assert _counts(0, 5, 7, 0.5, 0.5) == (0, 7, 7)  # no demos
    assert _counts(10, 0, 0, 0.3, 0.5) == (10, 0, 0)  # no rollouts at all
    with pytest.raises(ValueError, match="demonstration_sampling_prob"):
        calculate_epoch_structure(1, 1, 1, 1.5, 0.5)


def test_locate_wraps_inside_each_range():
    e = calculate_epoch_structure(40, 24, 36, 0.5, 0.5)
    assert e.epoch_length == 144
    assert e.locate(0) == ("demo", 0, 0)
    assert e.locate(57) == ("demo", 57, 17)
    assert e.locate(72) == ("success_rollout", 0, 0)
    assert e.locate(103) == ("success_rollout", 31, 7)
    assert e.locate(143) == ("failure_rollout", 35, 35)
    with pytest.raises(IndexError):
        e.locate(144)


def test_step_index():
    idx = StepIndex([3, 0, 2, 4])
    assert idx.total == 9
    got = [idx(s) for s in range(9)]
    assert got == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (3, 3)]
    with pytest.raises(IndexError):
        idx(9)


@pytest.mark.parametrize("gamma", [0.99, 0.998])
def test_returns_success(gamma):
    n = 37
    g = monte_carlo_returns(n, 1.0, gamma)
    assert g.dtype == np.float32 and g.shape == (n,)
    closed = 2 * gamma ** (n - 1 - np.arange(n)) - 1
    # The float32 recursion (the reference's arithmetic, float32(gamma) included) drifts from the
    # float64 closed form by about one float32 eps per step.
    np.testing.assert_allclose(g, closed, rtol=0, atol=2 * n * np.finfo(np.float32).eps)
    assert g[-1] == 1.0 and np.all(np.diff(g) > 0)


def test_returns_failure_and_score():
    assert np.array_equal(monte_carlo_returns(5, 0.0, 0.99), -np.ones(5, np.float32))
    half = monte_carlo_returns(4, 0.5, 0.9)
    np.testing.assert_allclose(half, 2 * 0.9 ** np.arange(3, -1, -1) - 1, atol=1e-6)
