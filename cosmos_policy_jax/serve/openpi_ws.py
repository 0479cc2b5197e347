"""openpi's websocket policy protocol, as ``openpi_client.websocket_client_policy.WebsocketClientPolicy`` speaks it.

On connect the server sends the policy metadata (one msgpack-numpy binary frame). Then, per request,
the client sends an observation map (binary frame) and receives the result map (binary frame), or a
*text* frame with the error, which openpi-client raises as ``RuntimeError``. Unlike openpi's own
server the connection stays open after an error, so the next request on it is answered; a message
over ``max_size`` is closed by the websocket layer (code 1009) and the client can reconnect at once.
``Authorization: Api-Key <key>`` is checked during the handshake (HTTP 401 without it); ``GET
/healthz`` answers 200 without a key.
"""

from __future__ import annotations

import http
import logging
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from cosmos_policy_jax.serve import wire
from cosmos_policy_jax.serve.service import PolicyService, RequestError, check_api_key

_log = logging.getLogger(__name__)


def _error_text(status: int, message: str) -> str:
    return f"error {status}: {message}"


def _answer(service: PolicyService, message: Any) -> bytes | str:
    if isinstance(message, str):
        return _error_text(400, "expected a binary msgpack frame, got a text frame")
    t0 = time.perf_counter()
    try:
        result = service.infer(wire.unpackb(message))
    except wire.WireError as e:
        return _error_text(400, str(e))
    except RequestError as e:
        return _error_text(e.status, e.message)
    result = dict(result)
    result["server_timing"] = {"infer_ms": (time.perf_counter() - t0) * 1e3}
    return wire.packb(result)


def make_server(service: PolicyService, host: str, port: int, *, api_key: str | None, max_bytes: int) -> Server:
    metadata = wire.packb(service.metadata)

    def process_request(connection: ServerConnection, request: Any):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not check_api_key(request.headers.get("Authorization"), api_key):
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key (Authorization: Api-Key <key>)\n"
            )
        return None

    def handler(connection: ServerConnection) -> None:
        try:
            connection.send(metadata)
            while True:
                message = connection.recv()
                connection.send(_answer(service, message))
        except ConnectionClosed:
            return
        except Exception:  # never let one connection's failure reach the server
            _log.exception("connection %s failed", connection.remote_address)
            connection.close(1011, "internal error")

    return serve(
        handler, host, port, process_request=process_request, compression=None, max_size=max_bytes, ping_interval=None
    )
