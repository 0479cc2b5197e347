"""Host batch -> global jax.Array on 8 fake CPU devices; the device prefetcher (order, state, timeout, errors)."""

import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from cosmos_policy_jax.data import global_batch, pipeline
from cosmos_policy_jax.parallel.rules import MESH_AXES


def _mesh(shape):
    return Mesh(np.asarray(jax.devices()[:8]).reshape(shape), MESH_AXES)


def _host_batch(rows):
    rng = np.random.default_rng(0)
    return {
        "video": rng.integers(0, 256, size=(rows, 3, 5, 4, 4), dtype=np.uint8),
        "actions": rng.standard_normal((rows, 2, 3)),  # float64 -> float32
        "rollout_data_mask": np.arange(rows, dtype=np.int64) % 2,  # int64 -> int32
        "value_function_return": rng.standard_normal(rows).astype(np.float32),
        "__key__": np.arange(rows),  # not a model key: dropped
        "instruction": np.asarray([f"t{i}" for i in range(rows)]),  # string: dropped
    }


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_global_batch_shape_sharding_contents(shape):
    mesh = _mesh(shape)
    rows = 8
    host = _host_batch(rows)
    out = global_batch.make_global_batch(host, mesh)
    assert set(out) == {"video", "actions", "rollout_data_mask", "value_function_return"}
    n_shards = shape[0] * shape[1]
    for key, arr in out.items():
        src = host[key]
        assert arr.shape == src.shape
        assert arr.sharding.spec == PartitionSpec(("data", "fsdp"), *([None] * (src.ndim - 1)))
        want_dtype = {np.float64: np.float32, np.int64: np.int32}.get(src.dtype.type, src.dtype.type)
        assert arr.dtype == want_dtype
        np.testing.assert_array_equal(np.asarray(arr), src.astype(want_dtype))
        # Each device holds the rows of its (data, fsdp) coordinate; tensor-axis peers hold the same rows.
        per = rows // n_shards
        for shard in arr.addressable_shards:
            d, f, _ = (int(i) for i in np.argwhere(np.asarray(mesh.devices) == shard.device)[0])
            k = d * shape[1] + f
            np.testing.assert_array_equal(np.asarray(shard.data), src[k * per : (k + 1) * per].astype(want_dtype))


def test_global_batch_rejects_indivisible_rows_and_selects_keys():
    mesh = _mesh((8, 1, 1))
    with pytest.raises(ValueError, match=r"'actions'.*not divisible by the 8"):
        global_batch.make_global_batch({"actions": np.zeros((6, 2))}, mesh)
    out = global_batch.make_global_batch(_host_batch(8), mesh, keys=["__key__", "instruction"])
    assert set(out) == {"__key__"} and out["__key__"].dtype == np.int32


class _Source:
    def __init__(self, n, block_at=None, fail_at=None):
        self.n, self.block_at, self.fail_at = n, block_at, fail_at
        self.release = threading.Event()

    def __len__(self):
        return self.n

    def get(self, index, epoch=0):
        if index == self.block_at:
            self.release.wait(30)  # a stuck file system
        if index == self.fail_at:
            raise OSError(f"cannot read sample {index}")
        return {"actions": np.full((2,), index, np.float32), "rollout_data_mask": index % 2}


def test_prefetcher_yields_global_batches_in_order_and_tracks_state():
    mesh = _mesh((2, 2, 2))
    host = pipeline.build_pipeline(
        _Source(40), batch_size_per_process=8, dp_rank=0, dp_size=1, shards_per_process=4, shuffle=True, num_epochs=1
    )
    ref = list(
        pipeline.build_pipeline(
            _Source(40),
            batch_size_per_process=8,
            dp_rank=0,
            dp_size=1,
            shards_per_process=4,
            shuffle=True,
            num_epochs=1,
        )
    )
    with global_batch.DevicePrefetcher(host, mesh, timeout=30, buffer_size=2) as pf:
        first = next(pf)
        time.sleep(0.2)  # let the thread run ahead; the state must still say one batch was consumed
        assert pf.get_state()["next_batch"] == 1
        got = [first, *pf]
    assert len(got) == len(ref) == 5
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g["actions"]), r["actions"])
        assert g["actions"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
    assert pf.get_state()["next_batch"] == 5


def test_prefetcher_times_out_instead_of_hanging():
    src = _Source(40, block_at=None)
    host = pipeline.build_pipeline(src, batch_size_per_process=8, dp_rank=0, dp_size=1, shuffle=False)
    src.block_at = 9  # the second batch (indices 8..15) blocks
    pf = global_batch.DevicePrefetcher(host, _mesh((8, 1, 1)), timeout=1.0, name="dataloader_train")
    next(pf)
    t0 = time.monotonic()
    with pytest.raises(global_batch.DataLoaderTimeout, match=r"within 1 s \(dataloader_train.timeout\)"):
        next(pf)
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    pf.close(join_timeout=0.5)
    assert time.monotonic() - t0 < 5
    src.release.set()


def test_prefetcher_forwards_loader_errors():
    host = pipeline.build_pipeline(
        _Source(40, fail_at=12), batch_size_per_process=8, dp_rank=0, dp_size=1, shuffle=False
    )
    with global_batch.DevicePrefetcher(host, _mesh((8, 1, 1)), timeout=30) as pf:
        next(pf)
        with pytest.raises(OSError, match="cannot read sample 12"):
            next(pf)


def test_pipeline_for_mesh_uses_all_local_devices():
    cfg = {
        "dataset": {"kind": "synthetic", "final_image_size": 16, "chunk_size": 4, "text_len": 4, "text_dim": 8},
        "batch_size": 2,
        "global_batch_size": None,
        "num_workers": 0,
        "prefetch_buffer_size": 1,
        "shuffle": True,
        "seed": 0,
        "drop_last": True,
    }

    class Cfg(dict):
        __getattr__ = dict.__getitem__

    it = global_batch.pipeline_for_mesh(Cfg(cfg), _mesh((2, 2, 2)))
    assert it.plan.world_size == 4 and it.plan.shards_per_process == 4 and it.plan.batch_per_shard == 2
    out = global_batch.make_global_batch(next(it), _mesh((2, 2, 2)))
    assert out["video"].shape == (8, 3, 33, 16, 16)
    it.close()
