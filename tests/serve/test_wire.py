"""Wire formats and the batcher, without a model: round trips, refused payloads, batching and isolation."""

import threading
import time

import msgpack
import numpy as np
import pytest

from cosmos_policy_jax.serve import wire
from cosmos_policy_jax.serve.batching import Batcher, Stats
from cosmos_policy_jax.serve.service import check_api_key


def test_msgpack_numpy_round_trip_matches_openpi_client():
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy")
    obs = {"img": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "p": np.float32(1.5), "s": "text", "n": [1, 2]}
    ours = wire.unpackb(msgpack_numpy.packb(obs))
    np.testing.assert_array_equal(ours["img"], obs["img"])
    assert ours["p"] == np.float32(1.5) and ours["s"] == "text" and ours["n"] == [1, 2]
    theirs = msgpack_numpy.unpackb(wire.packb({"actions": np.ones((3, 2), np.float32)}))
    np.testing.assert_array_equal(theirs["actions"], np.ones((3, 2), np.float32))


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xc1", "not a msgpack"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "not allowed"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1]}), "needs 4 bytes"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "shape"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nope", b"shape": [0]}), "dtype"),
    ],
)
def test_msgpack_refuses_unsafe_or_inconsistent_arrays(payload, match):
    with pytest.raises(wire.WireError, match=match):
        wire.unpackb(payload)


def test_json_numpy_round_trip_matches_the_json_numpy_package():
    json_numpy = pytest.importorskip("json_numpy")
    x = np.linspace(0, 1, 6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_array_equal(wire.json_loads(json_numpy.dumps({"x": x}))["x"], x)
    np.testing.assert_array_equal(json_numpy.loads(wire.json_dumps({"x": x}))["x"], x)
    with pytest.raises(wire.WireError, match="base64"):
        wire.json_loads('{"__numpy__": "***", "dtype": "<f8", "shape": [1]}')
    with pytest.raises(wire.WireError, match="not valid JSON"):
        wire.json_loads(b"\xff{")


def test_api_key_header():
    assert check_api_key(None, None) and check_api_key("anything", "")
    assert check_api_key("Api-Key abc", "abc")
    assert not check_api_key(None, "abc") and not check_api_key("Api-Key abd", "abc")
    assert not check_api_key("Bearer abc", "abc")


def test_batcher_groups_concurrent_requests_and_keeps_replies_apart():
    calls = []

    def run(items):
        calls.append(list(items))
        time.sleep(0.02)
        return [i * 10 for i in items]

    batcher = Batcher(run, max_batch=4, window_s=0.2, stats=Stats(0, print))
    out = {}
    barrier = threading.Barrier(6)

    def client(i):
        barrier.wait()
        out[i] = batcher.submit(i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    batcher.close()
    assert out == {i: i * 10 for i in range(6)}
    assert max(len(c) for c in calls) == 4 and sum(len(c) for c in calls) == 6
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(1)


def test_a_failing_call_fails_only_its_requests():
    def run(items):
        if -1 in items:
            raise ValueError("boom")
        return items

    batcher = Batcher(run, max_batch=1, window_s=0.0, stats=Stats(0, print))
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(-1)
    assert batcher.submit(3) == 3
    batcher.close()


def _staggered(batcher, n, gap_s):
    """Submit 0..n-1 from their own threads, ``gap_s`` apart; the answers by item."""
    out = {}
    threads = []
    for i in range(n):
        threads.append(threading.Thread(target=lambda i=i: out.__setitem__(i, batcher.submit(i))))
        threads[-1].start()
        time.sleep(gap_s)
    for t in threads:
        t.join(10)
    batcher.close()
    return out


def test_each_arrival_reopens_the_batching_window():
    # Arrivals 0.1 s apart span 0.5 s, more than the 0.3 s window: a window counted from the first request
    # alone would split them, re-opened at each arrival it keeps them in one call.
    calls = []
    batcher = Batcher(lambda items: calls.append(list(items)) or items, max_batch=8, window_s=0.3, max_wait_s=5.0,
                      stats=Stats(0, print))  # fmt: skip
    assert _staggered(batcher, 6, 0.1) == {i: i for i in range(6)}
    assert calls == [list(range(6))]


def test_the_batching_wait_is_bounded():
    calls = []
    batcher = Batcher(lambda items: calls.append(list(items)) or items, max_batch=8, window_s=0.3, max_wait_s=0.25,
                      stats=Stats(0, print))  # fmt: skip
    assert _staggered(batcher, 6, 0.1) == {i: i for i in range(6)}
    # The first call closes 0.25 s after the first request: arrivals at 0.3 s and later are not in it.
    assert len(calls) >= 2 and len(calls[0]) <= 3 and sum(map(len, calls)) == 6
    assert [i for c in calls for i in c] == list(range(6))
