"""A real gateway on 127.0.0.1 in a background thread, and a raw HTTP client for fuzzing.

Hypothesis drives synchronous test functions, so the gateway (its own event loop, the
embedded ONNX Runtime backend) runs in a thread and one server serves every example of a
module. The client speaks HTTP/1.1 over one kept-alive socket with whatever bytes the test
gives it, so bodies, headers and framing can all be wrong; it reconnects when the server
closes the connection. Every answer is checked against the error contract.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from serving.gateway.app import create_app
from serving.gateway.command import connection_options, limit_connections
from serving.settings import Settings

PROJECT = Path(__file__).resolve().parents[2]
REPOSITORY = PROJECT / "model_repository"


def documented_codes() -> dict[int, set[str]]:
    """status -> error codes, from the error table in docs/api.md (the contract)."""
    codes: dict[int, set[str]] = {}
    for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|",
                                   (PROJECT / "docs" / "api.md").read_text(), re.M):
        codes.setdefault(int(status), set()).add(code)
    return codes


def error_of(body: Any) -> dict[str, Any]:
    """An error answer's ``{"code", "message", "field"}`` in either shape: ``/v1``'s
    ``{"error": {...}}`` or, under ``/v2``, KServe's ``{"error": "<message>", "code",
    "field"}``."""
    error = body["error"]
    if isinstance(error, str):
        return {"message": error, **{k: body[k] for k in ("code", "field") if k in body}}
    return dict(error)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class LiveGateway:
    """The running gateway: its address, and the statuses it answered so far."""

    host: str
    port: int
    app: web.Application
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _sock: socket.socket | None = None
    _codes: dict[int, set[str]] = field(default_factory=documented_codes)

    def connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=30)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def raw(self, data: bytes, wait_s: float = 5.0) -> Answer | None:
        """Send ``data`` as is on a fresh connection and read one answer (``None``: the
        server closed the connection, or sent nothing for ``wait_s``).

        The socket is not half-closed: aiohttp drops the answer to a request whose client
        shut its sending side, so a half-closed probe could never see a 500.
        """
        self.close()
        sock = self.connect()
        self.sent += 1
        try:
            sock.sendall(data)
            sock.settimeout(wait_s)
            try:
                return self._read(sock)
            except (TimeoutError, http.client.HTTPException):
                return None
        finally:
            self.close()

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str | bytes] | None = None) -> Answer:
        """One well-framed request (``Content-Length`` set unless given) on the kept-alive
        connection; reconnects once if the server had closed it."""
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        given = {k.lower() for k in (headers or {})}
        if "content-length" not in given and "transfer-encoding" not in given:
            head.append(b"Content-Length: " + str(len(body)).encode())
        for name, value in (headers or {}).items():
            head.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                                  else value.encode("utf-8")))
        data = b"\r\n".join(head) + b"\r\n\r\n" + body
        self.sent += 1
        for attempt in (0, 1):
            sock = self.connect()
            try:
                sock.sendall(data)
                answer = self._read(sock)
            except (ConnectionError, TimeoutError):
                answer = None
            if answer is not None:
                if answer.headers.get("connection", "").lower() == "close":
                    self.close()
                return answer
            self.close()
            if attempt:
                raise AssertionError(f"no answer to {method} {path}")
        raise AssertionError("unreachable")

    def _read(self, sock: socket.socket) -> Answer | None:
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionError):
            return None
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        return Answer(response.status, headers, body)

    def check(self, answer: Answer, context: object = None, allow_504: bool = False
              ) -> Answer:
        """The contract: never a 5xx (but a 504 where ``allow_504``: a budget no request
        can meet); a 4xx is JSON with a documented code for its status, a message and the
        request id; a 429 has Retry-After."""
        assert answer.status < 500 or (allow_504 and answer.status == 504), \
            (answer.status, answer.body[:300], context)
        if answer.status >= 400:
            body = answer.json()
            error = error_of(body)
            assert error["code"] in self._codes.get(answer.status, set()), \
                (answer.status, error, context)
            assert isinstance(error["message"], str)
            assert body["request_id"]
            if answer.status == 429:
                assert int(answer.headers["retry-after"]) >= 1
        return answer


def live_gateway(**overrides: Any) -> Iterator[LiveGateway]:
    """Start the gateway in a thread (settings overrides as keyword arguments), yield it,
    and stop it; it must still answer ``/healthz`` at the end (nothing crashed it)."""
    settings = Settings.load(None, **{"model_repository": REPOSITORY, "port": 0,
                                      "default_budget_ms": 10_000.0, "max_wait_ms": 0.0,
                                      **overrides})
    app = create_app(settings)
    loop = asyncio.new_event_loop()
    # The connection options and cap ``rankserve serve`` applies, so tests see its limits.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           **connection_options(settings))
    started = threading.Event()
    address: list[tuple[str, int]] = []

    async def start() -> None:
        await runner.setup()
        limit_connections(runner, settings.max_connections)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address.append(runner.addresses[0][:2])
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fuzzed-gateway", daemon=True)
    thread.start()
    assert started.wait(60), "the gateway did not start"
    gateway = LiveGateway(address[0][0], address[0][1], app)
    try:
        yield gateway
        assert gateway.request("GET", "/healthz").status == 200
    finally:
        gateway.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
