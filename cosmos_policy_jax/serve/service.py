"""What both protocols share: observation in, result out, errors as (status, one-line message), API keys."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.policy.api import CosmosPolicy, ObservationError
from cosmos_policy_jax.serve.batching import Batcher, Stats

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """A request answered with an error: HTTP-like ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


def check_api_key(header: str | None, key: str | None) -> bool:
    """``Authorization: Api-Key <key>`` (openpi-client's header) matches ``key`` (always true without a key)."""
    if not key:
        return True
    prefix = "Api-Key "
    if not header or not header.startswith(prefix):
        return False
    return hmac.compare_digest(header[len(prefix) :].strip().encode(), key.encode())


class PolicyService:
    """A policy behind a batcher: ``infer(observation dict) -> result dict`` or ``RequestError``."""

    def __init__(
        self,
        policy: CosmosPolicy,
        *,
        max_batch: int,
        window_s: float,
        log_every: int,
        log=print,
        run: Any = None,
        max_wait_s: float | None = None,
    ):
        """``run``: what answers a batch of prepared rows (default ``policy.run``; a planner's ``run``).
        ``window_s``, ``max_wait_s``: the batching window and its bound (``batching.Batcher``)."""
        self.policy = policy
        self.stats = Stats(log_every, log)
        self.batcher_run = run or policy.run
        self.batcher = Batcher(
            self.batcher_run, max_batch=max_batch, window_s=window_s, max_wait_s=max_wait_s, stats=self.stats
        )
        self.metadata = policy.metadata

    def infer(self, observation: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        ok = False
        try:
            if not isinstance(observation, Mapping):
                raise RequestError(
                    400, f"the request must be a map of observation keys, got {type(observation).__name__}"
                )
            try:
                row = self.policy.prepare(observation)
            except ObservationError as e:
                raise RequestError(400, str(e)) from e
            try:
                result = self.batcher.submit(row)
            except RuntimeError as e:
                raise RequestError(503, str(e)) from e
            except Exception as e:  # a failed model call: the request's fault is unknown, the server's state is fine
                raise RequestError(500, f"policy call failed: {type(e).__name__}: {first_line(e, 200)}") from e
            if not np.all(np.isfinite(result["actions"])):
                raise RequestError(500, "the policy produced non-finite actions")
            ok = True
            return result
        finally:
            self.stats.request(time.perf_counter() - t0, ok)

    def close(self) -> None:
        self.batcher.close()
