"""The /act handler writes each response (status line, headers, body) in a single write."""

from __future__ import annotations

import http
import json

from cosmos_policy_jax.serve import act_http


class _Recorder:
    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)


def _handler(close: bool):
    h = object.__new__(act_http._Handler)  # no socket: only what _send reads
    h.wfile, h.close_connection, h.requestline = _Recorder(), close, "POST /act HTTP/1.1"
    h.request_version, h.command, h.client_address = "HTTP/1.1", "POST", ("127.0.0.1", 0)
    return h


def test_a_response_is_one_write_with_a_correct_length():
    h = _handler(close=False)
    body = json.dumps({"actions": [[0.5, -0.25]] * 3})
    h._send(200, body)
    assert len(h.wfile.writes) == 1
    head, sep, data = h.wfile.writes[0].partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert sep and lines[0] == "HTTP/1.1 200 OK" and data == body.encode()
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Length"] == str(len(data)) and headers["Content-Type"] == "application/json"
    assert "Connection" not in headers


def test_an_error_that_closes_the_connection_says_so():
    h = _handler(close=False)
    h._error(413, "too big")
    (raw,) = h.wfile.writes
    assert raw.startswith(f"HTTP/1.1 413 {http.HTTPStatus(413).phrase}\r\n".encode())
    assert b"\r\nConnection: close\r\n" in raw and raw.endswith(b'{"error": "too big"}')
    assert h.close_connection
