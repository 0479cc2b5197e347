"""Request batching: observations arriving within a short window run as one jitted policy call.

Connection threads ``submit`` prepared observations and block on their own future; one worker
thread takes the first waiting request and collects more until ``max_batch`` are there, or no new one
arrived for ``window_s`` (each arrival re-opens the window), or ``max_wait_s`` passed since the first
one; then it runs ``policy.run`` once and hands each row's result to its own future, so replies never
cross between clients. Re-opening the window matters under load: the replies of one batch go out one
after the other, so the clients' next requests come back spread over more than a few milliseconds,
and a window counted from the first of them alone split them into partial batches (each of which
costs a whole ``max_batch`` call). Every call runs at the policy's fixed ``batch_size`` (padded), so a request's
result does not depend on what it was batched with. A failing call fails only the requests in it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np


class Stats:
    """Latencies and batch sizes since the last report; one console line per ``every`` requests."""

    def __init__(self, every: int, log: Callable[[str], None]):
        self.every, self.log = int(every), log
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.batches: list[int] = []
        self.errors = 0
        self.total = 0
        self.t0 = time.perf_counter()

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches.append(size)

    def request(self, seconds: float, ok: bool = True) -> None:
        with self.lock:
            self.total += 1
            self.errors += not ok
            self.latencies.append(seconds)
            if self.every <= 0 or len(self.latencies) < self.every:
                return
            lat, batches, errors, t0 = np.asarray(self.latencies), self.batches, self.errors, self.t0
            self.latencies, self.batches, self.errors, self.t0 = [], [], 0, time.perf_counter()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        self.log(
            f"[serve] {self.total} requests: {len(lat) / elapsed:.2f} req/s, latency p50 "
            f"{np.percentile(lat, 50) * 1e3:.1f} ms p99 {np.percentile(lat, 99) * 1e3:.1f} ms, mean batch "
            f"{np.mean(batches) if batches else 0:.2f}, errors {errors}"
        )


def max_wait(window: float, given: float | None = None) -> float:
    """The bound on a batch's first request's wait: ``given``, by default 4 windows (any unit)."""
    return 4 * float(window) if given is None else float(given)


class Batcher:
    """One worker thread running ``run`` on batches of submitted items (see the module docstring).

    ``max_wait_s`` (default ``4 * window_s``) bounds how long the first request of a batch waits.
    """

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int,
        window_s: float,
        stats: Stats,
        max_wait_s: float | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        max_wait_s = max_wait(window_s, max_wait_s)
        if window_s < 0 or max_wait_s < 0:
            raise ValueError(f"window_s and max_wait_s must be >= 0, got {window_s} and {max_wait_s}")
        self.run, self.max_batch, self.window_s, self.stats = run, int(max_batch), float(window_s), stats
        self.max_wait_s = max(max_wait_s, self.window_s)
        self.queue: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.in_flight = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
        self.thread.start()

    def submit(self, item: Any) -> Any:
        """Run ``item`` in the next batch and return its result (raises what the policy call raised)."""
        fut: Future = Future()
        with self.lock:
            if self.closed.is_set():
                raise RuntimeError("the server is shutting down")
            self.in_flight += 1
        self.queue.put((item, fut))
        try:
            return fut.result()
        finally:
            with self.lock:
                self.in_flight -= 1

    def _take(self) -> list[tuple[Any, Future]]:
        first = self.queue.get()
        if first is None:
            return []
        batch = [first]
        cap = time.perf_counter() + self.max_wait_s
        deadline = min(time.perf_counter() + self.window_s, cap)
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:  # past the deadline, requests already queued still join
                nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)  # keep the stop marker for the loop
                break
            batch.append(nxt)
            deadline = min(time.perf_counter() + self.window_s, cap)  # each arrival re-opens the window
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self.stats.batch(len(batch))
            try:
                results = self.run([item for item, _ in batch])
            except BaseException as e:  # the error goes to every waiting client
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)

    def drain(self, timeout: float = 60.0) -> bool:
        """Refuse new requests and wait until those submitted are answered; whether they all were."""
        with self.lock:
            self.closed.set()
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.in_flight

    def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued, then stop the worker."""
        self.drain(timeout)
        self.queue.put(None)
        self.thread.join(timeout)
