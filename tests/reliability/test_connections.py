"""Connections: idle ones (also those that never send a request) are closed after
``keepalive_timeout_s``, connections past ``max_connections`` get a 503 and are closed, and
the soft file-descriptor limit is raised at start. A real gateway over loopback, built
with the same helpers ``rankserve serve`` uses.

Before: an idle connection lived 3,630 s and there was no cap.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import socket
import time
from collections.abc import Iterator

import pytest

from serving.gateway.command import (
    FD_RESERVE,
    connection_cap,
    raise_fd_limit,
    throttle_accept_errors,
)
from tests.reliability.live_gateway import LiveGateway, live_gateway

KEEPALIVE_S = 0.6
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    yield from live_gateway(keepalive_timeout_s=KEEPALIVE_S, max_connections=MAX_CONNECTIONS,
                            body_timeout_s=KEEPALIVE_S * 2)


def healthz(gateway: LiveGateway) -> bytes:
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it sent first)."""
    sock.settimeout(seconds)
    try:
        _read_all(sock)
    except TimeoutError:
        return False
    return True


def test_a_silent_connection_is_closed(gateway: LiveGateway) -> None:
    with socket.create_connection((gateway.host, gateway.port)) as sock:
        assert closed_within(sock, KEEPALIVE_S * 5)


def test_an_idle_keep_alive_connection_is_closed(gateway: LiveGateway) -> None:
    with socket.create_connection((gateway.host, gateway.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        assert b"alive" in sock.recv(65536)
        assert closed_within(sock, KEEPALIVE_S * 5)


def test_connections_past_the_cap_are_refused_and_health_returns(gateway: LiveGateway) -> None:
    flood = [socket.create_connection((gateway.host, gateway.port))
             for _ in range(MAX_CONNECTIONS * 3)]
    try:
        time.sleep(0.2)
        refused = 0
        for sock in flood[MAX_CONNECTIONS:]:
            sock.settimeout(5)
            answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
            assert b'"code":"unavailable"' in answer
            refused += 1
        assert refused == MAX_CONNECTIONS * 2
    finally:
        for sock in flood:
            sock.close()
    time.sleep(0.2)
    assert b"alive" in healthz(gateway)


def test_the_soft_fd_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        lowered = min(soft, 1024) if soft > 64 else soft
        if hard == resource.RLIM_INFINITY or lowered == hard:
            pytest.skip("no finite hard limit above the soft one to raise to")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard - 1), hard))
        raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _trickle(sock: socket.socket, data: bytes, seconds: float) -> bytes | None:
    """Send ``data`` a byte at a time every 50 ms until the server answers or closes the
    connection (what it sent, maybe ``b""``), or ``seconds`` pass (None)."""
    sock.settimeout(0.05)
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        try:
            sock.sendall(data[i % len(data):i % len(data) + 1])
            i += 1
            return sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b""
    return None


def test_slow_headers_are_cut_off(gateway: LiveGateway) -> None:
    with socket.create_connection((gateway.host, gateway.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert _trickle(sock, b"X-Slow: 1\r\n" * 1000, KEEPALIVE_S * 8) is not None
    assert b"alive" in healthz(gateway)


def test_a_chunked_body_that_never_ends_is_cut_off(gateway: LiveGateway) -> None:
    with socket.create_connection((gateway.host, gateway.port)) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        answer = _trickle(sock, b"1\r\n \r\n", KEEPALIVE_S * 8)
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"alive" in healthz(gateway)


def test_fifty_pipelined_requests_are_answered_in_order(gateway: LiveGateway) -> None:
    body = b'{"user":{"user_id":1},"candidates":[{"video_id":1}]}'
    requests = b"".join(
        b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: pipelined-%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)
        for i in range(50))
    with socket.create_connection((gateway.host, gateway.port), timeout=30) as sock:
        sock.sendall(requests)  # one write
        data = b""
        while data.count(b"HTTP/1.1 ") < 50 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 ')} answers"
            data += chunk
    ids = [int(line.split(b"-")[-1]) for line in data.split(b"\r\n")
           if line.lower().startswith(b"x-request-id: pipelined-")]
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert ids == list(range(50)), (ids, statuses)
    assert statuses == [b"200"] * 50, statuses


def test_accept_errors_are_logged_at_most_once_a_second(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        throttle_accept_errors(loop)
        with caplog.at_level(logging.ERROR, logger="rankserve.serve"):
            for _ in range(10_000):  # what asyncio reports per failed accept()
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files")})
        assert len(caplog.records) == 1
        assert "1 failed accept(s)" in caplog.records[0].getMessage()
    finally:
        loop.close()


def test_the_connection_cap_stays_below_the_fd_limit() -> None:
    assert connection_cap(1000, None) == 1000
    assert connection_cap(1000, 4096) == 1000
    assert connection_cap(1000, 1024) == 1024 - FD_RESERVE
