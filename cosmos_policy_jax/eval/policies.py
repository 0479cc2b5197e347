"""Policies for closed-loop evaluation: the trained model and two baselines, behind one call signature.

``policy(PolicyInput, seed=S) -> PolicyOutput``: a batch of M preprocessed observations in, one
un-normalised action chunk per observation out (plus the predicted value where the policy has one).

* the trained model: ``policy.api.CosmosPolicy`` (``load_policy``), called with preprocessed images;
* ``ServerPolicy``: the same model behind ``python -m cosmos_policy_jax.serve`` (``--policy=server``);
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


class ServerPolicy:
    """A policy served by ``python -m cosmos_policy_jax.serve`` (openpi protocol), queried row by row.

    Each of the M rows goes over its own websocket connection, all at once, so the server batches
    them. Images are sent already preprocessed (``preprocessed: True``: the server skips its own
    chain) and instructions as text: ``embed`` hands the rollout a row index into the instructions
    seen so far instead of an embedding (the server holds the embeddings).
    """

    def __init__(self, address: str, *, api_key: str | None = None, timeout_s: float = 600.0):
        from cosmos_policy_jax.eval.errors import EvalInputError

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise EvalInputError(f"--server must be HOST:PORT, got {address!r}")
        self.uri, self.api_key, self.timeout_s = f"ws://{host}:{port}", api_key, timeout_s
        self.instructions: list[str] = []
        self.connections: list[Any] = []
        self.metadata = self._connect()[1]

    def _connect(self) -> tuple[Any, dict]:
        from websockets.sync.client import connect

        from cosmos_policy_jax.eval.errors import EvalInputError
        from cosmos_policy_jax.serve import wire

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            conn = connect(self.uri, compression=None, max_size=None, additional_headers=headers, open_timeout=30)
        except Exception as e:  # refused, DNS, handshake (401) errors
            raise EvalInputError(f"cannot reach the policy server at {self.uri}: {e}") from e
        metadata = wire.unpackb(conn.recv(timeout=self.timeout_s))
        self.connections.append(conn)
        return conn, metadata

    def report(self) -> dict[str, Any]:
        m = self.metadata
        return {k: m.get(k) for k in ("weights", "num_denoising_steps", "layout", "chunk_size", "action_dim")}

    def embed(self, text: str) -> np.ndarray:
        if text not in self.instructions:
            self.instructions.append(text)
        return np.full((1, 1), self.instructions.index(text), np.float32)

    def _query(self, i: int, obs: dict) -> dict:
        from cosmos_policy_jax.serve import wire

        conn = self.connections[i]
        conn.send(wire.packb(obs))
        reply = conn.recv(timeout=self.timeout_s)
        if isinstance(reply, str):
            raise RuntimeError(f"policy server {self.uri}: {reply}")
        return wire.unpackb(reply)

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        from concurrent.futures import ThreadPoolExecutor

        m = batch.batch_size
        while len(self.connections) < m:
            self._connect()
        rows = [
            {**{k: np.ascontiguousarray(v[i]) for k, v in batch.images.items()},
             "proprio": np.asarray(batch.proprio[i], np.float32),
             "instruction": self.instructions[int(np.asarray(batch.embedding[i]).reshape(-1)[0])],
             "seed": int(seed), "preprocessed": True}
            for i in range(m)
        ]  # fmt: skip
        with ThreadPoolExecutor(m) as pool:
            out = list(pool.map(self._query, range(m), rows))
        value = np.array([o["value"] for o in out], np.float64) if "value" in out[0] else None
        return PolicyOutput(actions=np.stack([o["actions"] for o in out]).astype(np.float64), value=value)

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
