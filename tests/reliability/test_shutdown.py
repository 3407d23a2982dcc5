"""Shutdown under load: a real ``rankserve serve`` process gets a real SIGTERM while an
open-loop client keeps sending. The gateway must turn ``/readyz`` to 503, keep serving
during ``shutdown_delay_s``, stop accepting, answer every request it accepted, and exit 0.

"Accepted" is what the gateway itself says it handled: with ``log_level=DEBUG`` its access
log has one line per request that reached a handler, with the status it answered. Each
request uses its own connection, so a request is either logged by the server or failed at
the connection (refused or closed before a handler saw it, safe for a client to retry).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtests.server import free_port, wait_ready
from tests.gateway.conftest import REPOSITORY

RATE = 15.0  # requests per second, well under capacity: every accepted one should be 200
SIGNAL_AFTER_S = 1.5
DELAY_S = 1.0  # shutdown_delay_s: /readyz is 503 but requests are still served
LOAD_AFTER_SIGNAL_S = 15.0
CANDIDATES = 4000  # row-wise JSON: tens of ms to decode, encode and score, even on a fast CPU


def start_gateway(log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANKSERVE_LOG_LEVEL": "DEBUG",
           "RANKSERVE_SHUTDOWN_DELAY_S": str(DELAY_S), "RANKSERVE_MAX_WAIT_MS": "20",
           "RANKSERVE_DEFAULT_BUDGET_MS": "5000"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--model-repository", str(REPOSITORY)],
            cwd=REPOSITORY.parent, stdout=out, stderr=subprocess.STDOUT, env=env)


def access_log(log: Path) -> dict[str, int]:
    """request id -> status, for every /v1/rank request the gateway handled."""
    handled: dict[str, int] = {}
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("logger") == "rankserve.access" and entry.get("route") == "/v1/rank":
            handled[entry["request_id"]] = entry["status"]
    return handled


async def send(session: aiohttp.ClientSession, url: str, body: bytes, request_id: str,
               outcomes: dict[str, tuple[float, float, int | str]]) -> None:
    sent = time.monotonic()
    try:
        async with session.post(f"{url}/v1/rank", data=body, headers={
                "Content-Type": "application/json", "X-Request-Id": request_id}) as response:
            await response.read()
            result: int | str = response.status
    except (aiohttp.ClientError, OSError) as e:
        result = type(e).__name__
    outcomes[request_id] = (sent, time.monotonic(), result)


async def probe_readiness(url: str, until: float, seen: list[tuple[float, int | str]]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        while time.monotonic() < until:
            try:
                async with s.get(f"{url}/readyz") as response:
                    seen.append((time.monotonic(), response.status))
            except (aiohttp.ClientError, OSError) as e:
                seen.append((time.monotonic(), type(e).__name__))
            await asyncio.sleep(0.05)


async def test_sigterm_under_load_loses_no_accepted_request(
        tmp_path: Path, heldout: list[dict[str, Any]]) -> None:
    log, port = tmp_path / "gateway.log", free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_gateway(log, port)
    try:
        await asyncio.to_thread(wait_ready, url, 60.0, process)
        # The X-Request-Id header names each request (a body's request_id would win);
        # CANDIDATES each, so a request is still being decoded or scored 10 ms after it
        # was sent.
        bodies = [orjson.dumps({**{k: v for k, v in d.items() if k != "request_id"},
                                "candidates": [d["candidates"][j % len(d["candidates"])]
                                               for j in range(CANDIDATES)]})
                  for d in heldout[:20]]
        outcomes: dict[str, tuple[float, float, int | str]] = {}
        readiness: list[tuple[float, int | str]] = []
        loop_start = time.monotonic()
        prober = asyncio.create_task(probe_readiness(
            url, loop_start + SIGNAL_AFTER_S + DELAY_S, readiness))
        tasks = []
        signalled = None
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            # Load until the gateway refuses connections (a few in a row) or exits, at most
            # LOAD_AFTER_SIGNAL_S after the signal (a busy machine may be slow to get there).
            for i in itertools.count():
                now = time.monotonic()
                if signalled is not None and (
                        now > signalled + LOAD_AFTER_SIGNAL_S or process.poll() is not None
                        or sum(isinstance(o[2], str) for o in outcomes.values()) >= 3):
                    break
                await asyncio.sleep(max(0.0, loop_start + i / RATE - now))
                tasks.append(asyncio.create_task(
                    send(session, url, bodies[i % len(bodies)], f"shutdown-{i}", outcomes)))
                if signalled is None and time.monotonic() - loop_start >= SIGNAL_AFTER_S:
                    await asyncio.sleep(0.01)  # the request just sent is being scored...
                    process.send_signal(signal.SIGTERM)  # ...when the signal arrives
                    signalled = time.monotonic()
            await asyncio.gather(*tasks, prober)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert signalled is not None
    handled = access_log(log)

    # Zero accepted requests lost: every request the gateway handled was answered 200, and
    # the client received exactly that answer.
    assert handled, log.read_text()[-2000:]
    assert set(handled.values()) == {200}, {k: v for k, v in handled.items() if v != 200}
    for request_id in handled:
        assert outcomes[request_id][2] == 200, (request_id, outcomes[request_id])
    # Every other request failed at the connection, never with an HTTP error.
    refused = {k: v for k, v in outcomes.items() if k not in handled}
    assert all(isinstance(v[2], str) for v in refused.values()), refused
    assert all(v[0] >= signalled for v in refused.values())  # none refused before SIGTERM

    # Not vacuous: requests were in flight at the signal, and served after it.
    in_flight = [k for k, (sent, done, _) in outcomes.items() if sent < signalled < done]
    after = [k for k, (sent, _, status) in outcomes.items() if sent > signalled and status == 200]
    assert in_flight
    assert after
    # The listener closed after the delay: later requests were refused.
    assert refused
    assert min(v[0] for v in refused.values()) >= signalled + DELAY_S * 0.9
    # /readyz: 200 before the signal, 503 during the delay, then no listener.
    before = [s for t, s in readiness if t < signalled]
    during = [s for t, s in readiness if signalled + 0.1 < t < signalled + DELAY_S * 0.9]
    assert before
    assert set(before) == {200}
    assert during
    assert set(during) == {503}
