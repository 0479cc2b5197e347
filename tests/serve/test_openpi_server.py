"""The openpi websocket server, queried with the real ``openpi-client`` package.

Served actions equal ``load_policy(...).infer`` in-process for the same observation and seed, also
with several clients at once (batched); every bad request gets an error text frame and the next valid
request on the same connection is answered; SIGTERM exits 0.
"""

import json
import threading

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.serve.conftest import MAX_BATCH, ServerProcess, observation

openpi_client = pytest.importorskip("openpi_client.websocket_client_policy")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained_job):
    srv = ServerProcess(trained_job, "--protocol=openpi")
    yield srv
    code, output = srv.stop()
    assert code == 0, output[-2000:]
    assert "[serve] stopped after" in output


def test_openpi_client_gets_the_in_process_actions(server, local):
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert meta["cameras"] == local.cameras and meta["chunk_size"] == local.chunk
    rng = np.random.default_rng(0)
    for seed in (0, 7):
        obs = {**observation(rng, local.cameras, size=48), "seed": seed}  # 48 px: the server resizes
        got = client.infer(obs)
        want = local.infer(obs)
        np.testing.assert_array_equal(got["actions"], want["actions"])
        np.testing.assert_array_equal(got["value"], want["value"])
    # openpi LIBERO-style keys are understood too.
    obs = observation(rng, local.cameras)
    aliased = {"observation/image": obs["current_image"], "observation/wrist_image": obs["current_wrist_image"],
               "observation/state": obs["proprio"], "prompt": obs["instruction"]}  # fmt: skip
    np.testing.assert_array_equal(client.infer(aliased)["actions"], local.infer(obs)["actions"])


def test_concurrent_clients_are_batched_without_cross_talk(server, local):
    rng = np.random.default_rng(1)
    n = 8
    obs = [{**observation(rng, local.cameras), "seed": i} for i in range(n)]
    clients = [openpi_client.WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(n)]
    got: list = [None] * n
    barrier = threading.Barrier(n)

    def query(i):
        barrier.wait()
        got[i] = clients[i].infer(obs[i])["actions"]

    threads = [threading.Thread(target=query, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    want = local.run([local.prepare(o) for o in obs])
    for i in range(n):
        np.testing.assert_array_equal(got[i], want[i]["actions"])


def _bad_requests(cameras):
    """(name, frame to send) pairs; each must get an error text frame naming the problem."""
    rng = np.random.default_rng(3)
    ok = observation(rng, cameras)
    from openpi_client import msgpack_numpy

    def pack(obs):
        return msgpack_numpy.packb(obs)

    return [
        ("missing camera", pack({k: v for k, v in ok.items() if k != "current_image"}), "current_image"),
        ("image 2-D", pack({**ok, "current_image": np.zeros((32, 32), np.uint8)}), "(H, W, 3)"),
        ("image float", pack({**ok, "current_image": np.zeros((32, 32, 3), np.float32)}), "uint8"),
        ("image huge side", pack({**ok, "current_image": np.zeros((5000, 1, 3), np.uint8)}), "sides"),
        ("NaN proprio", pack({**ok, "proprio": np.array([np.nan, 0], np.float32)}), "non-finite"),
        ("inf proprio", pack({**ok, "proprio": np.array([np.inf, 0], np.float32)}), "non-finite"),
        ("proprio wrong size", pack({**ok, "proprio": np.zeros(7, np.float32)}), "proprio"),
        ("no instruction", pack({k: v for k, v in ok.items() if k != "instruction"}), "instruction"),
        ("not a map", pack([1, 2, 3]), "map"),
        ("garbage bytes", b"\xc1\xff\x00garbage", "msgpack"),
        ("text frame", "hello", "binary"),
        ("object dtype", msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "dtype"),
        ("short array data", msgpack.packb({"proprio": {b"__ndarray__": True, b"data": b"\0", b"dtype": "<f4", b"shape": [2]}}), "bytes"),
        ("bad seed", pack({**ok, "seed": -3}), "seed"),
    ]  # fmt: skip


def test_bad_requests_get_errors_and_the_server_keeps_answering(server, local):
    valid = observation(np.random.default_rng(4), local.cameras)
    want = local.infer(valid)["actions"]
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None, compression=None) as ws:
        ws.recv()  # metadata
        for name, frame, match in _bad_requests(local.cameras):
            ws.send(frame)
            reply = ws.recv(timeout=120)
            assert isinstance(reply, str), name
            assert reply.startswith("error 4") and match in reply, (name, reply)
            from openpi_client import msgpack_numpy

            ws.send(msgpack_numpy.packb(valid))
            np.testing.assert_array_equal(msgpack_numpy.unpackb(ws.recv(timeout=120))["actions"], want)
    # The real client raises the error text.
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", server.port)
    with pytest.raises(RuntimeError, match="non-finite"):
        client.infer({**valid, "proprio": np.array([np.nan, 0], np.float32)})
    np.testing.assert_array_equal(client.infer(valid)["actions"], want)


def test_oversized_and_abandoned_requests_do_not_kill_the_server(server, local):
    valid = observation(np.random.default_rng(5), local.cameras)
    from openpi_client import msgpack_numpy

    # Over --max_request_mb (32 MiB): the websocket layer closes that connection (1009).
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None, compression=None) as ws:
        ws.recv()
        ws.send(b"\0" * (33 << 20))
        with pytest.raises(Exception):  # noqa: B017 - closed by the server, the close code varies
            ws.recv(timeout=60)
    # A client that sends a request and disconnects before the answer.
    ws = connect(f"ws://127.0.0.1:{server.port}", max_size=None, compression=None)
    ws.recv()
    ws.send(msgpack_numpy.packb(valid))
    ws.close()
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", server.port)
    np.testing.assert_array_equal(client.infer(valid)["actions"], local.infer(valid)["actions"])


def test_demo_evaluation_through_the_server_equals_in_process(server, trained_job, tmp_path, monkeypatch):
    """``eval --policy=server`` against ``eval --policy=model``: the same episodes, lengths and predicted values."""
    from configs.cosmos_policy import get_config
    from cosmos_policy_jax.eval import main

    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", trained_job["data"])
    common = dict(episodes=6, num_envs=MAX_BATCH, max_steps=12, seed=3)
    reports = {}
    for kind, extra in (
        ("model", {"checkpoint": trained_job["job"]}),
        ("server", {"server": f"127.0.0.1:{server.port}"}),
    ):
        opts = main.EvalOptions(policy=kind, output=str(tmp_path / kind), **common, **extra)
        reports[kind] = main.evaluate(get_config("demo,tiny"), opts, log=lambda *a: None)
    a, b = (r["episodes"] for r in (reports["model"], reports["server"]))
    assert [(e["success"], e["length"]) for e in a] == [(e["success"], e["length"]) for e in b]
    values = {k: [json.loads(line)["values"] for line in (tmp_path / k / "episodes.jsonl").read_text().splitlines()]
              for k in reports}  # fmt: skip
    assert values["model"] == values["server"] and all(values["model"])
