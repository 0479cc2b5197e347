"""The grain input pipeline: per-epoch shuffled, data-parallel sharded host batches (numpy only, no jax).

Index order reproduces the reference's ``DistributedSampler`` + ``DataLoader(drop_last=True)``
with one data-parallel *device* playing the role of one GPU rank:

* epoch ``e`` is a permutation of ``range(len(source))`` drawn from ``(seed, e)`` (the same on
  every process; a new order every epoch; ``shuffle=False`` keeps ``range(len)``), padded by
  wrap-around to a multiple of the data-parallel world size ``W``;
* device rank ``g`` takes positions ``g::W`` and cuts them into batches of ``b`` rows, dropping the
  last partial batch of the epoch (``drop_last``);
* a process that feeds ``k`` consecutive devices (ranks ``dp_rank*k .. dp_rank*k + k-1``, see
  ``global_batch.pipeline_for_mesh``) loads their ``k`` per-device batches and concatenates them:
  its host batch has ``k*b`` rows. ``W = dp_size * k``.

So the global batch is the same whatever the number of processes: only the device count and the
per-device batch matter (the property the multi-process equivalence test relies on). The
permutation comes from numpy, not ``torch.randperm``: the order differs from the reference's, the
semantics do not. Each sample is ``source.get(index, epoch)``: its randomness is a function of
``(seed, epoch, index)`` only, so neither the worker count nor a restart changes a batch.

One grain element is one host batch (as one PyTorch worker builds one whole batch), so grain worker
processes (``mp_prefetch``) each assemble whole batches and the output order is deterministic.

Checkpointing: ``PipelineIterator.get_state()`` is a small JSON dict (the next batch number plus the
sizes it depends on), identical on every process and independent of the number of workers. Save it
as an orbax JSON item (``ocp.args.JsonSave(it.get_state())``); grain's own
``grain.checkpoint.CheckpointHandler`` also works since the iterator is a ``grain.DatasetIterator``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from cosmos_policy_jax.data import workers
from cosmos_policy_jax.data.errors import DataError

STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Index plan (pure)
# ---------------------------------------------------------------------------------------------


def epoch_order(num_samples: int, epoch: int, *, shuffle: bool, seed: int = 0) -> np.ndarray:
    """Sample order of one epoch: a permutation drawn from ``(seed, epoch)``, or ``range`` without shuffle."""
    if shuffle:
        return np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)
    return np.arange(num_samples)


def epoch_indices(
    num_samples: int, epoch: int, *, dp_rank: int, dp_size: int, shuffle: bool, seed: int = 0
) -> np.ndarray:
    """Indices data-parallel rank ``dp_rank`` of ``dp_size`` reads in ``epoch`` (``DistributedSampler``)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
    order = epoch_order(num_samples, epoch, shuffle=shuffle, seed=seed)
    per_rank = math.ceil(num_samples / dp_size)
    total = per_rank * dp_size
    if total > num_samples:  # wrap around (repeating the list if it is shorter than the padding)
        order = np.concatenate([order, np.resize(order, total - num_samples)])
    return order[dp_rank:total:dp_size]


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which sample indices make host batch ``k`` of one process (a pure function of the fields)."""

    num_samples: int
    dp_rank: int  # this process's data-parallel rank (see module docstring)
    dp_size: int  # number of distinct process batches
    shards_per_process: int  # data-parallel devices this process feeds
    batch_per_shard: int  # rows per device batch
    shuffle: bool
    seed: int
    drop_last: bool

    def __post_init__(self):
        if self.num_samples < 1:
            raise DataError(f"the dataset is empty (len {self.num_samples})")
        if self.dp_size < 1 or not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={self.dp_rank}, dp_size={self.dp_size}")
        if self.shards_per_process < 1 or self.batch_per_shard < 1:
            raise ValueError(
                f"shards_per_process and the per-device batch must be >= 1, got {self.shards_per_process}, "
                f"{self.batch_per_shard}"
            )
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the dataset has {self.num_samples} samples: fewer than one batch of {self.batch_per_shard} per "
                f"data-parallel device ({self.world_size} devices) with drop_last"
            )

    @property
    def world_size(self) -> int:
        return self.dp_size * self.shards_per_process

    @property
    def samples_per_shard(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        n, b = self.samples_per_shard, self.batch_per_shard
        return n // b if self.drop_last else math.ceil(n / b)

    def shard_indices(self, epoch: int) -> np.ndarray:
        """``(shards_per_process, samples_per_shard)``: the epoch's indices of each local device."""
        first = self.dp_rank * self.shards_per_process
        return np.stack(
            [
                epoch_indices(
                    self.num_samples,
                    epoch,
                    dp_rank=first + s,
                    dp_size=self.world_size,
                    shuffle=self.shuffle,
                    seed=self.seed,
                )
                for s in range(self.shards_per_process)
            ]
        )

    def locate(self, batch: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of host batch number ``batch``."""
        return divmod(int(batch), self.batches_per_epoch)

    def batch_indices(self, batch: int, shard_indices: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """(epoch, sample indices) of host batch ``batch``: the local devices' rows, concatenated."""
        epoch, j = self.locate(batch)
        if shard_indices is None:
            shard_indices = self.shard_indices(epoch)
        b = self.batch_per_shard
        return epoch, shard_indices[:, j * b : (j + 1) * b].reshape(-1)


# ---------------------------------------------------------------------------------------------
# grain graph
# ---------------------------------------------------------------------------------------------


class _PlanDataset(grain.MapDataset):
    """Element ``i`` = ``{"epoch", "indices"}`` of host batch ``start + i``."""

    def __init__(self, plan: BatchPlan, start: int, stop: int):
        super().__init__([])
        self._plan, self._start, self._stop = plan, start, stop
        self._cache: dict[int, np.ndarray] = {}  # per-process memo of the current epoch's shard indices

    def __len__(self) -> int:
        return self._stop - self._start

    def __str__(self) -> str:
        return f"_PlanDataset(start={self._start}, stop={self._stop})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, _ = self._plan.locate(self._start + index)
        shard = self._cache.get(epoch)
        if shard is None:
            shard = self._plan.shard_indices(epoch)
            self._cache = {epoch: shard}
        epoch, indices = self._plan.batch_indices(self._start + index, shard)
        return {"epoch": epoch, "indices": indices}


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack sample dicts into a batch dict (Python ints -> int64, floats -> float64, like torch)."""
    keys = list(samples[0])
    out: dict[str, np.ndarray] = {}
    for key in keys:
        try:
            values = [s[key] for s in samples]
        except KeyError:
            raise DataError(f"samples of one batch have different keys: {key!r} is missing from some") from None
        first = values[0]
        if isinstance(first, bool | int):
            out[key] = np.asarray(values, np.int64)
        elif isinstance(first, float):
            out[key] = np.asarray(values, np.float64)
        elif isinstance(first, str):
            out[key] = np.asarray(values, dtype=np.str_)
        else:
            try:
                out[key] = np.stack([np.asarray(v) for v in values])
            except ValueError as e:
                raise DataError(f"cannot batch key {key!r}: {e}") from None
    return out


class _LoadBatch(grain.transforms.Map):
    def __init__(self, source: Any):
        self._source = source

    def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
        epoch = int(element["epoch"])
        return collate([self._source.get(int(i), epoch) for i in element["indices"]])


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app (tests, notebooks, scripts)
    # they are unparsed and the first access raises. Marking them parsed keeps the defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class PipelineIterator(grain.DatasetIterator):
    """Host batches (``dict[str, np.ndarray]``, leading batch dim) with JSON ``get_state``/``set_state``.

    The underlying grain iterator (and its worker processes) is created lazily on the first
    ``__next__`` after construction or ``set_state``, so restoring a state costs nothing until used.
    """

    def __init__(
        self,
        source: Any,
        plan: BatchPlan,
        *,
        num_workers: int = 0,
        prefetch_buffer_size: int = 2,
        num_batches: int | None = None,
    ):
        super().__init__()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_buffer_size < 0:
            raise ValueError(f"prefetch_buffer_size must be >= 0, got {prefetch_buffer_size}")
        self.source = source
        self.plan = plan
        self.num_workers = int(num_workers)
        self.prefetch_buffer_size = int(prefetch_buffer_size)
        self.num_batches = num_batches
        self._next = 0
        self._it: Any = None

    # -- iteration

    def _build(self) -> Any:
        stop = self.num_batches if self.num_batches is not None else sys.maxsize
        ds = _PlanDataset(self.plan, self._next, max(stop, self._next)).map(_LoadBatch(self.source))
        # One reader thread keeps `prefetch_buffer_size` batches ready (per worker, if any).
        threads = 1 if self.prefetch_buffer_size > 0 else 0
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self.prefetch_buffer_size)
        )
        if self.num_workers > 0:
            _ensure_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.num_workers, per_worker_buffer_size=max(1, self.prefetch_buffer_size)
                ),
                # Workers end with this process, whatever kills it (their shared memory goes with them).
                worker_init_fn=functools.partial(workers.exit_with_parent, os.getpid()),
            )
        return iter(it_ds)

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        if self.num_batches is not None and self._next >= self.num_batches:
            raise StopIteration
        if self._it is None:
            with workers.starting_data_workers():  # grain starts its worker processes on the first batch
                self._it = self._build()
                batch = next(self._it)
        else:
            batch = next(self._it)
        self._next += 1
        return batch

    def start_prefetch(self) -> None:
        with workers.starting_data_workers():
            if self._it is None and (self.num_batches is None or self._next < self.num_batches):
                self._it = self._build()
            if self._it is not None and hasattr(self._it, "start_prefetch"):
                self._it.start_prefetch()

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None
        self._closed = True

    # -- position

    @property
    def next_batch(self) -> int:
        """Number of host batches handed out so far (= the next batch's number)."""
        return self._next

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self.plan.locate(self._next)[0]

    # -- checkpointing

    def _fingerprint(self) -> dict[str, Any]:
        p = self.plan
        return {
            "num_samples": p.num_samples,
            "world_size": p.world_size,
            "batch_per_shard": p.batch_per_shard,
            "shuffle": p.shuffle,
            "seed": p.seed,
            "drop_last": p.drop_last,
        }

    def get_state(self) -> dict[str, Any]:
        epoch, in_epoch = self.plan.locate(self._next)
        return {
            "version": STATE_VERSION,
            "next_batch": self._next,
            "epoch": epoch,
            "batch_in_epoch": in_epoch,
            **self._fingerprint(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue after the batch recorded in ``state``; the sizes it depends on must match."""
        if not isinstance(state, Mapping) or "next_batch" not in state:
            raise ValueError(f"not a data iterator state (no 'next_batch'): {state!r:.200}")
        for key, want in self._fingerprint().items():
            if key in state and state[key] != want:
                raise ValueError(
                    f"data iterator state has {key}={state[key]!r} but this pipeline has {want!r}; the saved data "
                    f"order does not apply (restart the data order or restore with the same data/batch/devices)"
                )
        nxt = int(state["next_batch"])
        if nxt < 0:
            raise ValueError(f"data iterator state: next_batch must be >= 0, got {nxt}")
        if self._it is not None:
            self._it.close()
            self._it = None
        self._next = nxt


def build_pipeline(
    source: Any,
    *,
    batch_size_per_process: int,
    dp_rank: int,
    dp_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    prefetch_buffer_size: int = 2,
    drop_last: bool = True,
    num_epochs: int | None = None,
    shards_per_process: int = 1,
) -> PipelineIterator:
    """Iterator of host batches for process ``dp_rank`` of ``dp_size`` (see the module docstring).

    ``shards_per_process`` = data-parallel devices fed by this process (default 1: one process per
    rank, exactly the reference's ``DistributedSampler(num_replicas=dp_size, rank=dp_rank)``);
    ``batch_size_per_process`` must be a multiple of it. ``num_epochs=None`` repeats forever.
    """
    if batch_size_per_process < 1 or batch_size_per_process % shards_per_process:
        raise ValueError(
            f"batch_size_per_process={batch_size_per_process} must be a positive multiple of "
            f"shards_per_process={shards_per_process}"
        )
    plan = BatchPlan(
        num_samples=len(source),
        dp_rank=int(dp_rank),
        dp_size=int(dp_size),
        shards_per_process=int(shards_per_process),
        batch_per_shard=batch_size_per_process // shards_per_process,
        shuffle=bool(shuffle),
        seed=int(seed),
        drop_last=bool(drop_last),
    )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    num_batches = None if num_epochs is None else num_epochs * plan.batches_per_epoch
    return PipelineIterator(
        source, plan, num_workers=num_workers, prefetch_buffer_size=prefetch_buffer_size, num_batches=num_batches
    )


def per_device_batch_size(loader_cfg: Any, num_dp_devices: int, *, section: str = "dataloader_train") -> int:
    """Rows per data-parallel device: ``global_batch_size / devices`` if set, else ``batch_size``."""
    gbs = loader_cfg.get("global_batch_size") if hasattr(loader_cfg, "get") else None
    if gbs is not None:
        if gbs < 1 or gbs % num_dp_devices:
            raise ValueError(
                f"{section}.global_batch_size: {gbs} is not a positive multiple of the data-parallel size "
                f"{num_dp_devices} (data x fsdp)"
            )
        return gbs // num_dp_devices
    if loader_cfg.batch_size < 1:
        raise ValueError(f"{section}.batch_size: must be >= 1, got {loader_cfg.batch_size}")
    return int(loader_cfg.batch_size)


def build_pipeline_from_config(
    loader_cfg: Any,
    *,
    dp_rank: int,
    dp_size: int,
    shards_per_process: int = 1,
    source: Any = None,
    num_epochs: int | None = None,
    layout: Mapping[str, int] | None = None,
    state_t: int | None = None,
    section: str = "dataloader_train",
) -> PipelineIterator:
    """``build_pipeline`` from a ``dataloader_train``/``dataloader_val`` section (source built if not given)."""
    b = per_device_batch_size(loader_cfg, dp_size * shards_per_process, section=section)
    if source is None:
        from cosmos_policy_jax.data.registry import make_source  # the readers (h5py, PIL) only when needed

        source = make_source(loader_cfg.dataset, seed=int(loader_cfg.seed), layout=layout, state_t=state_t)
    return build_pipeline(
        source,
        batch_size_per_process=b * shards_per_process,
        dp_rank=dp_rank,
        dp_size=dp_size,
        shards_per_process=shards_per_process,
        shuffle=bool(loader_cfg.shuffle),
        seed=int(loader_cfg.seed),
        num_workers=int(loader_cfg.num_workers),
        prefetch_buffer_size=int(loader_cfg.prefetch_buffer_size),
        drop_last=bool(loader_cfg.drop_last),
        num_epochs=num_epochs,
    )
