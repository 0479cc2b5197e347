"""Epoch structure: how many demo / success-rollout / failure-rollout samples one epoch holds.

Indices of an epoch are laid out ``[demos | success rollouts | failure rollouts]``; inside a range the
offset is taken modulo the category's real number of steps (oversampling by wrap-around).
"""

from __future__ import annotations

import dataclasses

import numpy as np

CATEGORIES = ("demo", "success_rollout", "failure_rollout")


@dataclasses.dataclass(frozen=True)
class EpochStructure:
    num_demo_steps: int
    num_success_rollout_steps: int
    num_failure_rollout_steps: int
    adjusted_demo_count: int
    adjusted_success_rollout_count: int
    adjusted_failure_rollout_count: int

    @property
    def epoch_length(self) -> int:
        return self.adjusted_demo_count + self.adjusted_success_rollout_count + self.adjusted_failure_rollout_count

    def locate(self, index: int) -> tuple[str, int, int]:
        """``(category, offset in the category's range, step index after wrap-around)`` of an epoch index."""
        if not 0 <= index < self.epoch_length:
            raise IndexError(f"sample index {index} out of range for an epoch of {self.epoch_length} samples")
        d, s = self.adjusted_demo_count, self.adjusted_success_rollout_count
        if index < d:
            # The reference wraps the global index (equal to the offset, the demo range starts at 0).
            return "demo", index, index % self.num_demo_steps
        if index < d + s:
            offset = index - d
            return "success_rollout", offset, offset % self.num_success_rollout_steps
        offset = index - d - s
        return "failure_rollout", offset, offset % self.num_failure_rollout_steps


def calculate_epoch_structure(
    num_demo_steps: int,
    num_success_rollout_steps: int,
    num_failure_rollout_steps: int,
    demonstration_sampling_prob: float,
    success_rollout_sampling_prob: float,
) -> EpochStructure:
    """Counts per category that realise the sampling probabilities, with the reference's exact rounding.

    Every count is computed in float64 left to right and truncated with ``int()`` (so ``45*0.7/0.3``
    gives 104, not 105). Edge rules: no success steps or p_success 0 -> successes dropped and p_success
    treated as 0 from then on; else no failure steps or p_success 1 -> failures dropped, p_success
    treated as 1; no demo steps or p_demo 0 -> no demos; p_demo 1 -> no rollouts; no rollouts at all ->
    demos only.
    """
    d, s, f = int(num_demo_steps), int(num_success_rollout_steps), int(num_failure_rollout_steps)
    p_d, p_s = float(demonstration_sampling_prob), float(success_rollout_sampling_prob)
    for name, p in (("demonstration_sampling_prob", p_d), ("success_rollout_sampling_prob", p_s)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if min(d, s, f) < 0:
        raise ValueError(f"step counts must be non-negative, got demo={d} success={s} failure={f}")

    if s + f == 0:
        return EpochStructure(d, s, f, d, 0, 0)

    if p_s == 0 or s == 0:
        n_s, n_f, p_s = 0, f, 0.0
    elif p_s == 1 or f == 0:
        n_s, n_f, p_s = s, 0, 1.0
    else:
        s_new = int(f * p_s / (1 - p_s))
        f_new = int(s * (1 - p_s) / p_s)
        n_s, n_f = (s_new, f) if s < s_new else (s, f_new)

    if p_d == 0 or d == 0:
        n_d = 0
    elif p_d == 1:
        n_d, n_s, n_f = d, 0, 0
    else:
        r = n_s + n_f
        d_new = int(r * p_d / (1 - p_d))
        r_new = int(d * (1 - p_d) / p_d)
        if d < d_new:
            n_d = d_new
        else:
            n_d = d
            n_s = int(r_new * p_s)
            n_f = int(r_new * (1 - p_s))
    return EpochStructure(d, s, f, n_d, n_s, n_f)


class StepIndex:
    """Maps a step number (0..total-1, episodes in load order) to ``(episode, step inside the episode)``."""

    def __init__(self, episode_lengths: list[int] | np.ndarray):
        lengths = np.asarray(episode_lengths, dtype=np.int64).reshape(-1)
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.total = int(self._starts[-1])

    def __call__(self, step: int) -> tuple[int, int]:
        if not 0 <= step < self.total:
            raise IndexError(f"step {step} out of range for {self.total} steps")
        episode = int(np.searchsorted(self._starts, step, side="right")) - 1
        return episode, int(step - self._starts[episode])
