"""NVIDIA's ``POST /act`` protocol: json-numpy bodies (the real ``json_numpy`` package, as NVIDIA's
clients), the double-encoded form, API keys, errors as 4xx with a message, SIGTERM."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.serve.conftest import REPO, ServerProcess, observation

json_numpy = pytest.importorskip("json_numpy")
pytestmark = pytest.mark.slow
KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(trained_job):
    srv = ServerProcess(trained_job, "--protocol=act", f"--api_key={KEY}")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def post(port, body: bytes | str, *, key=KEY, path="/act", headers=None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    hdrs = {
        "Content-Type": "application/json",
        **({"Authorization": f"Api-Key {key}"} if key else {}),
        **(headers or {}),
    }
    conn.request("POST", path, body=body, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, resp.read().decode()
    conn.close()
    return out


def _nvidia_body(obs: dict) -> dict:
    """The deploy clients' key names."""
    return {"primary_image": obs["current_image"], "wrist_image": obs["current_wrist_image"],
            "proprio": obs["proprio"], "task_description": obs["instruction"]}  # fmt: skip


def test_act_answers_the_in_process_actions(server, local):
    obs = {**observation(np.random.default_rng(0), local.cameras), "seed": 2}
    want = local.infer(obs)
    status, text = post(server.port, json_numpy.dumps({**_nvidia_body(obs), "seed": 2}))
    assert status == 200, text
    got = json_numpy.loads(text)
    np.testing.assert_array_equal(np.stack(got["actions"]), want["actions"])
    assert got["value_prediction"] == pytest.approx(float(want["value"]), abs=0)
    # Double-encoded form with plain nested lists: the answer is a JSON string holding the JSON text.
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in _nvidia_body(obs).items()}
    status, text = post(server.port, json.dumps({"encoded": json.dumps({**plain, "seed": 2})}))
    assert status == 200, text
    inner = json_numpy.loads(json.loads(text))
    np.testing.assert_array_equal(np.stack(inner["actions"]), want["actions"])


def _raw(port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        return s.recv(4096) if read else b""


def test_bad_requests_get_4xx_with_a_message_and_the_next_is_answered(server, local):
    obs = observation(np.random.default_rng(1), local.cameras)
    good = json_numpy.dumps(_nvidia_body(obs))
    want = local.infer(obs)["actions"]
    cases = [
        ("no API key", lambda: post(server.port, good, key=None), 401),
        ("wrong API key", lambda: post(server.port, good, key="nope"), 401),
        ("unknown route", lambda: post(server.port, good, path="/predict"), 404),
        ("invalid JSON", lambda: post(server.port, "{not json"), 400),
        ("JSON array", lambda: post(server.port, "[1, 2]"), 400),
        ("encoded with another key", lambda: post(server.port, json.dumps({"encoded": "{}", "x": 1})), 400),
        ("missing camera", lambda: post(server.port, json_numpy.dumps({k: v for k, v in _nvidia_body(obs).items() if k != "primary_image"})), 400),
        ("NaN proprio", lambda: post(server.port, json_numpy.dumps({**_nvidia_body(obs), "proprio": np.array([np.nan, 1.0])})), 400),
        ("image of floats", lambda: post(server.port, json_numpy.dumps({**_nvidia_body(obs), "primary_image": np.zeros((8, 8, 3))})), 400),
        ("oversized body", lambda: post(server.port, "x", headers={"Content-Length": str(64 << 20)}), 413),
    ]  # fmt: skip
    for name, send, status in cases:
        got, text = send()
        assert got == status, (name, got, text)
        assert json.loads(text)["error"], name
        ok, text = post(server.port, good)
        assert ok == 200, (name, text)
        np.testing.assert_array_equal(np.stack(json_numpy.loads(text)["actions"]), want)
    # Garbage bytes instead of HTTP, and a client that disconnects mid-body.
    assert b" 400 " in _raw(server.port, b"\x16\x03\x01garbage\r\n\r\n").split(b"\r\n")[0]
    _raw(server.port, b"POST /act HTTP/1.1\r\nContent-Length: 5000\r\nAuthorization: Api-Key " + KEY.encode()
         + b"\r\n\r\n{\"primary", read=False)  # fmt: skip
    ok, text = post(server.port, good)
    assert ok == 200, text


def test_public_bind_without_key_is_refused(trained_job):
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.serve", f"--checkpoint={trained_job['job']}", "--host=0.0.0.0"],
        cwd=REPO, env={**os.environ, "COSMOS_POLICY_API_KEY": ""}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --host=0.0.0.0") and "API" in out.stderr


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server, local):
    obs = observation(np.random.default_rng(2), local.cameras)
    result = {}

    def query():
        result["reply"] = post(server.port, json_numpy.dumps(_nvidia_body(obs)))

    t = threading.Thread(target=query)
    t.start()
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    code, output = server.stop()
    assert code == 0, output[-2000:]
    status, text = result["reply"]
    # Answered (in flight when the signal came) or refused with a message (arrived after it); never dropped.
    assert status == 200 or (status == 503 and "shutting down" in text), (status, text)
