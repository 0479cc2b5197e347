"""Pipeline: DistributedSampler-style sharding, per-epoch reshuffle, drop_last, exact resume (0 and 1 workers)."""

import json

import numpy as np
import pytest

from cosmos_policy_jax.data import pipeline
from cosmos_policy_jax.data.errors import DataError


class IndexSource:
    """Samples that record which (index, epoch) produced them; picklable for grain workers."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def get(self, index, epoch=0):
        rng = np.random.default_rng([self.seed, epoch, index])
        return {
            "index": index,
            "epoch": epoch,
            "x": rng.standard_normal(3).astype(np.float32),
            "name": f"s{index}",
        }


@pytest.mark.parametrize("dp_size", [2, 4, 8])
@pytest.mark.parametrize("n", [37, 64])
def test_shards_disjoint_and_cover_epoch(dp_size, n):
    shards = [pipeline.epoch_indices(n, 3, dp_rank=r, dp_size=dp_size, shuffle=True) for r in range(dp_size)]
    per_rank = -(-n // dp_size)
    assert all(len(s) == per_rank for s in shards)
    everything = np.concatenate(shards)
    # Every sample appears; only the wrap-around padding repeats some, and exactly the first ones of the order.
    assert set(everything.tolist()) == set(range(n))
    pad = per_rank * dp_size - n
    order = pipeline.epoch_order(n, 3, shuffle=True)
    counts = np.bincount(everything, minlength=n)
    assert sorted(np.nonzero(counts == 2)[0].tolist()) == sorted(order[:pad].tolist())
    assert counts.max() <= 2 and (counts == 2).sum() == pad
    # Rank r takes positions r::dp_size of the (padded) order.
    padded = np.concatenate([order, order[:pad]])
    for r, s in enumerate(shards):
        np.testing.assert_array_equal(s, padded[r::dp_size])


def test_epochs_reshuffle_and_processes_agree():
    n = 100
    orders = [pipeline.epoch_order(n, e, shuffle=True, seed=0) for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(n)) for o in orders)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # Same epoch computed independently (as on two processes) is the same order; another seed differs.
    np.testing.assert_array_equal(orders[1], pipeline.epoch_order(n, 1, shuffle=True, seed=0))
    assert not np.array_equal(orders[1], pipeline.epoch_order(n, 1, shuffle=True, seed=1))
    np.testing.assert_array_equal(pipeline.epoch_order(n, 5, shuffle=False), np.arange(n))


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_follow_the_plan_and_drop_last():
    n, dp, b = 45, 2, 4  # 23 per rank -> 5 full batches per epoch, the partial 6th dropped
    src = IndexSource(n)
    it = pipeline.build_pipeline(src, batch_size_per_process=b, dp_rank=1, dp_size=dp, shuffle=True, num_epochs=2)
    batches = list(it)
    assert len(batches) == 2 * 5
    for k, batch in enumerate(batches):
        epoch, j = divmod(k, 5)
        want = pipeline.epoch_indices(n, epoch, dp_rank=1, dp_size=dp, shuffle=True)[j * b : (j + 1) * b]
        np.testing.assert_array_equal(batch["index"], want)
        np.testing.assert_array_equal(batch["epoch"], np.full(b, epoch))
        assert batch["index"].dtype == np.int64 and batch["x"].shape == (b, 3) and batch["x"].dtype == np.float32
        np.testing.assert_array_equal(batch["x"][0], src.get(int(want[0]), epoch)["x"])
        assert batch["name"].tolist() == [f"s{i}" for i in want]
    keep = pipeline.build_pipeline(
        src, batch_size_per_process=b, dp_rank=1, dp_size=dp, shuffle=True, num_epochs=1, drop_last=False
    )
    sizes = [len(x["index"]) for x in keep]
    assert sizes == [4, 4, 4, 4, 4, 3]


def test_global_batch_independent_of_process_split():
    """4 devices: one process feeding 4, two feeding 2, four feeding 1 give the same global batches."""
    src, b = IndexSource(50), 3

    def global_batches(procs):
        spp = 4 // procs
        its = [
            pipeline.build_pipeline(
                src,
                batch_size_per_process=b * spp,
                dp_rank=r,
                dp_size=procs,
                shards_per_process=spp,
                shuffle=True,
                num_epochs=2,
            )
            for r in range(procs)
        ]
        return [np.concatenate([x["index"] for x in group]) for group in zip(*its)]

    one, two, four = global_batches(1), global_batches(2), global_batches(4)
    assert len(one) == 2 * (13 // 3)
    for a, c, d in zip(one, two, four):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)


def _resume_check(num_workers):
    src = IndexSource(30)
    kw = dict(batch_size_per_process=4, dp_rank=0, dp_size=2, shuffle=True, num_workers=num_workers)
    ref = pipeline.build_pipeline(src, **kw)
    want = _take(ref, 9)  # 15 per rank -> 3 batches per epoch: crosses two epoch boundaries
    ref.close()
    it = pipeline.build_pipeline(src, **kw)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    assert state["next_batch"] == 5 and state["epoch"] == 1 and state["batch_in_epoch"] == 2
    it.close()
    resumed = pipeline.build_pipeline(src, **kw)
    resumed.set_state(state)
    got = _take(resumed, 4)
    resumed.close()
    for a, g in zip(want[5:], got):
        np.testing.assert_array_equal(a["index"], g["index"])
        np.testing.assert_array_equal(a["x"], g["x"])


def test_resume_continues_with_the_exact_next_batch():
    _resume_check(num_workers=0)


def test_resume_with_a_worker_process():
    _resume_check(num_workers=1)


def test_set_state_rejects_another_setup():
    src = IndexSource(30)
    it = pipeline.build_pipeline(src, batch_size_per_process=4, dp_rank=0, dp_size=2, shuffle=True)
    state = it.get_state()
    other = pipeline.build_pipeline(src, batch_size_per_process=2, dp_rank=0, dp_size=2, shuffle=True)
    with pytest.raises(ValueError, match="batch_per_shard"):
        other.set_state(state)
    with pytest.raises(ValueError, match="next_batch"):
        it.set_state({"epoch": 3})


def test_bad_sizes_are_clear_errors():
    with pytest.raises(DataError, match="fewer than one batch"):
        pipeline.build_pipeline(IndexSource(5), batch_size_per_process=4, dp_rank=0, dp_size=2, shuffle=True)
    with pytest.raises(ValueError, match="multiple of shards_per_process"):
        pipeline.build_pipeline(
            IndexSource(50), batch_size_per_process=3, dp_rank=0, dp_size=1, shards_per_process=2, shuffle=True
        )
    with pytest.raises(ValueError, match="global_batch_size"):
        pipeline.per_device_batch_size({"global_batch_size": 10, "batch_size": 2}, 4)
    assert pipeline.per_device_batch_size({"global_batch_size": 12, "batch_size": 2}, 4) == 3


def test_collate_rejects_mismatched_keys():
    with pytest.raises(DataError, match="'b'"):
        pipeline.collate([{"a": 1, "b": 2}, {"a": 3}])


def test_grain_checkpoint_handler_round_trip(tmp_path):
    """The iterator also works with grain's orbax handler (one JSON file per process)."""
    import grain
    from etils import epath

    kw = dict(batch_size_per_process=4, dp_rank=0, dp_size=1, shuffle=True)
    ref = pipeline.build_pipeline(IndexSource(30), **kw)
    want = _take(ref, 4)[-1]
    it = pipeline.build_pipeline(IndexSource(30), **kw)
    _take(it, 3)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=it)
    restored = handler.restore(epath.Path(tmp_path), item=pipeline.build_pipeline(IndexSource(30), **kw))
    np.testing.assert_array_equal(next(restored)["index"], want["index"])
