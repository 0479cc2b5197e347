"""Monte-Carlo value targets for sparse terminal rewards."""

from __future__ import annotations

import numpy as np


def monte_carlo_returns(num_steps: int, terminal_reward: float, gamma: float) -> np.ndarray:
    """Discounted return of every step of an episode with a single reward at its last step, in [-1, 1].

    The reward vector is zero except ``r[T-1] = terminal_reward``; ``G[k] = r[k] + gamma * G[k+1]`` is
    accumulated backwards in float32 (the reference's arithmetic, bit for bit), then mapped to [-1, 1]
    with ``2 G / terminal - 1`` (``2 G - 1`` when the terminal reward is 0, so failures give -1).
    Returns a float32 array of shape ``(num_steps,)``.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    rewards = np.zeros(num_steps, dtype=np.float32)
    rewards[-1] = terminal_reward
    out = np.empty(num_steps, dtype=np.float32)
    g32 = np.float32(gamma)
    acc = np.float32(0.0)
    for k in range(num_steps - 1, -1, -1):
        acc = np.float32(rewards[k] + g32 * acc)
        out[k] = acc
    two, one = np.float32(2.0), np.float32(1.0)
    if terminal_reward > 0:
        return (two * out) / np.float32(terminal_reward) - one
    return two * out - one
