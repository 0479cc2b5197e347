"""Policies for closed-loop evaluation: the trained model and two baselines, behind one call signature.

``policy(PolicyInput, seed=S) -> PolicyOutput``: a batch of M preprocessed observations in, one
un-normalised action chunk per observation out (plus the predicted value where the policy has one).

* ``ModelPolicy``: the Cosmos Policy network through ``policy.inference.generate_actions``, compiled
  once for the batch shape.
* ``RandomPolicy``: every action drawn uniformly, per dimension, in the dataset's [min, max].
* ``MeanActionPolicy``: the dataset's mean action, every step (un-normalised units).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass
class PolicyInput:
    images: dict[str, np.ndarray]  # latent-layout image slot -> (M, S, S, 3) uint8, preprocessed
    proprio: np.ndarray  # (M, P) raw (un-normalised) proprio
    embedding: np.ndarray  # (M, L, D) float32 instruction embeddings

    @property
    def batch_size(self) -> int:
        return int(self.proprio.shape[0])


@dataclasses.dataclass
class PolicyOutput:
    actions: np.ndarray  # (M, chunk, action_dim), un-normalised
    value: np.ndarray | None = None  # (M,) predicted value in [0, 1]
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Policy(Protocol):
    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput: ...


def _stat(stats: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in stats:
        raise KeyError(f"dataset statistics have no {key!r} entry")
    return np.asarray(stats[key], np.float64)


class RandomPolicy:
    """Uniform random actions in the dataset's per-dimension [actions_min, actions_max].

    Draws come from ``(seed, call number)`` so a run is reproducible and successive queries differ.
    """

    def __init__(self, stats: dict[str, np.ndarray], chunk_size: int):
        self.lo, self.hi = _stat(stats, "actions_min"), _stat(stats, "actions_max")
        self.chunk_size = int(chunk_size)
        self.calls = 0

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        rng = np.random.default_rng([int(seed), self.calls])
        self.calls += 1
        shape = (batch.batch_size, self.chunk_size, self.lo.shape[0])
        return PolicyOutput(actions=rng.uniform(self.lo, self.hi, size=shape))


class MeanActionPolicy:
    """The dataset's mean action (``actions_mean``), at every step of every episode."""

    def __init__(self, stats: dict[str, np.ndarray], chunk_size: int):
        self.mean = _stat(stats, "actions_mean")
        self.chunk_size = int(chunk_size)

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        del seed
        actions = np.broadcast_to(self.mean, (batch.batch_size, self.chunk_size, self.mean.shape[0])).copy()
        return PolicyOutput(actions=actions)
