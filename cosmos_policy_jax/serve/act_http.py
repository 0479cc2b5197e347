"""NVIDIA's deploy protocol: HTTP ``POST /act`` with a json-numpy body, answered with the action chunk.

Request: a JSON object of observation keys (``task_description``, ``primary_image``, ``wrist_image``,
``left_wrist_image``, ``right_wrist_image``, ``proprio``; arrays as json-numpy objects or nested lists;
our own slot names also work), or ``{"encoded": "<JSON text of that object>"}`` (the answer is then
double-encoded too: a JSON string holding the JSON text). Response: ``actions`` (a list of ``chunk``
arrays of ``action_dim``), ``value_prediction`` and ``future_image_predictions`` (``null`` unless
``return_future_images`` was asked). Errors: a 4xx/5xx status with ``{"error": "<message>"}``, where
NVIDIA's server answers HTTP 200 with the body ``"error"``.
"""

from __future__ import annotations

import http
import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from cosmos_policy_jax.serve import wire
from cosmos_policy_jax.serve.service import PolicyService, RequestError, check_api_key

_log = logging.getLogger(__name__)
READ_TIMEOUT_S = 30.0


def _decode(body: bytes | str) -> tuple[dict, bool]:
    """(observation, double-encoded?) from a request body (or the text inside ``encoded``)."""
    try:
        payload = wire.json_loads(body)
    except wire.WireError as e:
        raise RequestError(400, str(e)) from e
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(payload).__name__}")
    if "encoded" not in payload:
        return payload, False
    if len(payload) != 1 or not isinstance(payload["encoded"], str):
        raise RequestError(400, "'encoded' must be the only key and hold the JSON text of the observation")
    inner, _ = _decode(payload["encoded"])  # the str as is: json decodes it without a bytes round trip
    return inner, True


def _response(result: dict[str, Any]) -> dict[str, Any]:
    actions = np.asarray(result["actions"])
    out = {
        "actions": [row for row in actions],
        "value_prediction": float(result["value"]) if "value" in result else None,
        "future_image_predictions": result.get("future_images"),
    }
    if "all_actions" in result:  # a planning server: every query's chunk and value, as the reference's
        out["all_actions"] = [np.asarray(a) for a in result["all_actions"]]
        out["all_value_predictions"] = [float(v) for v in np.ravel(result["all_values"])]
        out["selected_query"] = int(result["selected_query"])
    return out


class _Handler(BaseHTTPRequestHandler):
    service: PolicyService
    api_key: str | None
    max_bytes: int
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Each response is one write (``_send``); no Nagle delay for it either (a split write with Nagle
        # and the client's delayed ACK once added ~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the service logs a line per N requests
        _log.debug(format, *args)

    def _send(self, status: int, body: str) -> None:
        """Status line, headers and body in one write (one TCP segment for a small answer)."""
        data = body.encode()
        self.log_request(status)
        head = [
            f"{self.protocol_version} {status} {http.HTTPStatus(status).phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    def _error(self, status: int, message: str) -> None:
        self.close_connection = status in (408, 411, 413) or self.close_connection
        self._send(status, json.dumps({"error": message}))

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, '"ok"')
        else:
            self._error(404, f"no route GET {self.path} (POST /act)")

    def do_POST(self) -> None:
        try:
            self._post()
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away mid-request
        except RequestError as e:
            self._error(e.status, e.message)

    def _post(self) -> None:
        if self.path.rstrip("/") != "/act":
            raise RequestError(404, f"no route POST {self.path} (POST /act)")
        if not check_api_key(self.headers.get("Authorization"), self.api_key):
            raise RequestError(401, "missing or wrong API key (Authorization: Api-Key <key>)")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "Content-Length is required")
        if int(length) > self.max_bytes:
            raise RequestError(413, f"body of {int(length)} bytes exceeds the limit of {self.max_bytes}")
        self.connection.settimeout(READ_TIMEOUT_S)
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise ConnectionError("body shorter than Content-Length")
        observation, double = _decode(body)
        text = wire.json_dumps(_response(self.service.infer(observation)))
        self._send(200, json.dumps(text) if double else text)


def make_server(
    service: PolicyService, host: str, port: int, *, api_key: str | None, max_bytes: int
) -> ThreadingHTTPServer:
    handler = type("ActHandler", (_Handler,), {"service": service, "api_key": api_key, "max_bytes": max_bytes})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = False  # server_close() waits for requests in flight
    return server
