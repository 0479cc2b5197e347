"""Host batch -> global ``jax.Array`` batch, and a thread that does it ahead of the training step.

The only data module that imports jax (worker processes never do). A host batch holds this
process's rows (``pipeline.PipelineIterator``); ``make_global_batch`` assembles the global arrays
with ``jax.make_array_from_process_local_data``, the leading dim sharded over ``("data", "fsdp")``
and the rest replicated (``parallel.rules.batch_sharding``).

Kept keys (``MODEL_KEYS``): what the policy's training step reads (``video``, ``actions``,
``proprio``, ``future_proprio``, ``value_function_return``, ``t5_text_embeddings``,
``padding_mask`` and the four sample-type masks). Dropped: strings, the latent indices (the layout
is static, from the config), bookkeeping (``__key__``, ``global_rollout_idx``, ``fps``,
``image_size``, ``t5_text_mask``) and the unused ``next_*`` entries. ``keys=`` selects others.
Host dtypes are narrowed before transfer: float64 -> float32, int64 -> int32 (JAX's default
precision; the reference casts all batch floats to bf16 anyway).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from cosmos_policy_jax.data import pipeline
from cosmos_policy_jax.parallel.rules import batch_sharding, data_parallel_size, process_data_parallel_info

MODEL_KEYS = (
    "video",
    "actions",
    "proprio",
    "future_proprio",
    "value_function_return",
    "t5_text_embeddings",
    "padding_mask",
    "rollout_data_mask",
    "rollout_data_success_mask",
    "world_model_sample_mask",
    "value_function_sample_mask",
)


class DataLoaderTimeout(TimeoutError):
    """No batch arrived from the data loader within the configured timeout."""


def host_model_batch(host_batch: Mapping[str, np.ndarray], keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The numeric entries of ``host_batch`` named in ``keys`` (``MODEL_KEYS``; missing ones skipped), narrowed."""
    wanted = MODEL_KEYS if keys is None else tuple(keys)
    out = {}
    for key in wanted:
        if key not in host_batch:
            continue
        v = np.asarray(host_batch[key])
        if v.dtype.kind not in "biuf":
            continue  # strings / objects never go to devices
        if v.ndim == 0:
            raise ValueError(f"batch entry {key!r} has no batch dimension (shape {v.shape})")
        if v.dtype == np.float64:
            v = v.astype(np.float32)
        elif v.dtype == np.int64:
            v = v.astype(np.int32)
        out[key] = v
    return out


def make_global_batch(
    host_batch: Mapping[str, np.ndarray], mesh: Mesh, *, keys: Iterable[str] | None = None
) -> dict[str, jax.Array]:
    """Global arrays of the model's batch entries, batch dim sharded over ``("data", "fsdp")``."""
    _, dp_procs = process_data_parallel_info(mesh)
    n_dev = data_parallel_size(mesh)
    out = {}
    for key, v in host_model_batch(host_batch, keys).items():
        global_rows = v.shape[0] * dp_procs
        if global_rows % n_dev:
            raise ValueError(
                f"batch entry {key!r}: {v.shape[0]} rows per process x {dp_procs} process groups = {global_rows} is "
                f"not divisible by the {n_dev} data-parallel devices"
            )
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, (global_rows, *v.shape[1:]))
    return out


def pipeline_for_mesh(loader_cfg: Any, mesh: Mesh, **kwargs: Any) -> pipeline.PipelineIterator:
    """``pipeline.build_pipeline_from_config`` with this process's data-parallel rank/devices from ``mesh``."""
    dp_rank, dp_procs = process_data_parallel_info(mesh)
    return pipeline.build_pipeline_from_config(
        loader_cfg,
        dp_rank=dp_rank,
        dp_size=dp_procs,
        shards_per_process=data_parallel_size(mesh) // dp_procs,
        **kwargs,
    )


_END = object()


class DevicePrefetcher:
    """Pulls host batches on a thread and turns them into global arrays ahead of the step.

    ``next()`` raises ``DataLoaderTimeout`` if no batch arrives within ``timeout`` seconds (a stuck
    worker or file system never hangs the trainer silently), re-raises any loader error, and raises
    ``StopIteration`` at the end of a finite pipeline. ``get_state()`` is the host iterator's state
    after the last batch handed out (not after the ones prefetched), so it is what to checkpoint.
    ``close()`` stops the thread and closes the host iterator (grain then ends its workers).
    """

    def __init__(
        self,
        host_iter: Iterator[Mapping[str, np.ndarray]],
        mesh: Mesh | None,
        *,
        timeout: float,
        buffer_size: int = 2,
        keys: Iterable[str] | None = None,
        name: str = "dataloader_train",
    ):
        if timeout <= 0:
            raise ValueError(f"{name}.timeout must be > 0 seconds, got {timeout}")
        self._host = host_iter
        self._mesh = mesh
        self._timeout = float(timeout)
        self._keys = None if keys is None else tuple(keys)
        self._name = name
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(buffer_size)))
        self._stop = threading.Event()
        self._finished = False
        self._state = host_iter.get_state() if hasattr(host_iter, "get_state") else None
        self._thread = threading.Thread(target=self._run, name=f"{name}-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    host = next(self._host)
                except StopIteration:
                    self._put((_END, None))
                    return
                state = self._host.get_state() if hasattr(self._host, "get_state") else None
                batch = make_global_batch(host, self._mesh, keys=self._keys) if self._mesh is not None else host
                if not self._put((batch, state)):
                    return
        except BaseException as e:  # forwarded to the consumer thread
            if not self._stop.is_set():
                self._put((e, None))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._finished:
            raise StopIteration
        try:
            item, state = self._queue.get(timeout=self._timeout)
        except queue.Empty:
            raise DataLoaderTimeout(
                f"no batch from the data loader within {self._timeout:g} s ({self._name}.timeout); a worker or the "
                f"file system may be stuck"
            ) from None
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        self._state = state
        return item

    def get_state(self) -> Any:
        return self._state

    def close(self, join_timeout: float = 5.0) -> None:
        self._stop.set()
        if hasattr(self._host, "close"):
            # Closing a broken loader must not mask the error that brought us here.
            with contextlib.suppress(Exception):
                self._host.close()
        self._thread.join(timeout=join_timeout)

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
