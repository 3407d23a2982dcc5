"""Open-loop load generator for the benchmark: asyncio + aiohttp, pre-encoded bodies.

Open loop means requests start on a fixed schedule (``rate`` per second), whether or not
earlier ones have answered, as a fleet of feed backends would send them; a closed loop
(each client waits for its answer) slows down with the server and hides queueing. Latency
is measured from the *scheduled* start, so a generator that falls behind shows up as
latency instead of silently lowering the load, and its lag is reported on its own.

Bodies are encoded before the run (:class:`loadtests.bank.Bank`); during the run the
generator only sends bytes and reads the status and body of each answer. Its own ceiling
is measured against :func:`sink_app`, a trivial aiohttp server that answers every POST
with a fixed ranking-sized body (``python -m loadtests.loadgen --sink PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web


@dataclass(frozen=True)
class Body:
    data: bytes
    rows: int


@dataclass(frozen=True)
class Outcome:
    """One request: scheduled start (loop time), status (0: no answer), latency from the
    scheduled start, candidate rows, and how late the generator sent it."""

    scheduled: float
    status: int
    latency_ms: float
    rows: int
    lag_ms: float


@dataclass(frozen=True)
class Point:
    """What one offered rate achieved (warm-up excluded)."""

    offered_rps: float
    seconds: float
    sent: int
    ok: int
    statuses: dict[str, int]
    ok_rps: float
    rows_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    lag_p99_ms: float

    @property
    def error_rate(self) -> float:
        return 1.0 - self.ok / self.sent if self.sent else 0.0

    def within(self, p99_ms: float, max_error_rate: float) -> bool:
        return self.p99_ms is not None and self.p99_ms <= p99_ms \
            and self.error_rate <= max_error_rate


async def _send(session: aiohttp.ClientSession, url: str, body: Body,
                headers: dict[str, str], scheduled: float) -> Outcome:
    loop = asyncio.get_running_loop()
    lag_ms = (loop.time() - scheduled) * 1000
    try:
        async with session.post(url, data=body.data, headers=headers) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    return Outcome(scheduled, status, (loop.time() - scheduled) * 1000, body.rows, lag_ms)


async def open_loop(url: str, bodies: Sequence[Body], content_type: str, rate: float,
                    seconds: float, warmup_s: float = 0.5, budget_ms: float | None = None,
                    timeout_s: float = 10.0, max_in_flight: int = 256) -> Point:
    """Send ``bodies`` in turn at ``rate`` per second for ``warmup_s + seconds``.

    At most ``max_in_flight`` connections are open; past that, requests wait in the client
    (and their wait counts as latency, since it is measured from the schedule).
    """
    headers = {"Content-Type": content_type}
    if budget_ms is not None:
        headers["X-Request-Budget-Ms"] = f"{budget_ms:g}"
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        tasks = []
        start = loop.time() + 0.05
        total = int((warmup_s + seconds) * rate)
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                _send(session, url, bodies[i % len(bodies)], headers, scheduled)))
        results = await asyncio.gather(*tasks)
    measured = [r for r in results if r.scheduled >= start + warmup_s]
    return summarise(measured, rate, seconds)


def summarise(results: Sequence[Outcome], rate: float, seconds: float) -> Point:
    """A :class:`Point` from the outcomes of one measured window."""
    ok = [r for r in results if r.status == 200]
    latency = np.asarray([r.latency_ms for r in ok])
    lags = np.asarray([r.lag_ms for r in results])
    return Point(
        offered_rps=rate, seconds=seconds, sent=len(results), ok=len(ok),
        statuses=dict(sorted(Counter(str(r.status) for r in results).items())),
        ok_rps=len(ok) / seconds, rows_per_s=sum(r.rows for r in ok) / seconds,
        p50_ms=float(np.percentile(latency, 50)) if ok else None,
        p99_ms=float(np.percentile(latency, 99)) if ok else None,
        lag_p99_ms=float(np.percentile(lags, 99)) if results else 0.0)


async def closed_loop(url: str, bodies: Sequence[Body], content_type: str, concurrency: int,
                      seconds: float) -> float:
    """Completed 200s per second with ``concurrency`` requests always in flight: the
    generator's ceiling when the server answers instantly."""
    headers = {"Content-Type": content_type}
    loop = asyncio.get_running_loop()
    done = 0

    async def worker(offset: int, session: aiohttp.ClientSession, end: float) -> None:
        nonlocal done
        i = offset
        while loop.time() < end:
            async with session.post(url, data=bodies[i % len(bodies)].data,
                                    headers=headers) as response:
                await response.read()
                done += response.status == 200
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time()
        await asyncio.gather(*(worker(k, session, start + seconds) for k in range(concurrency)))
        return done / (loop.time() - start)


def run_point(url: str, bodies: Sequence[Body], content_type: str, rate: float,
              seconds: float, budget_ms: float | None = None) -> Point:
    """:func:`open_loop` in a fresh event loop (one per measured point)."""
    return asyncio.run(open_loop(url, bodies, content_type, rate, seconds,
                                 budget_ms=budget_ms))


def sink_app(response_bytes: int = 16_000) -> web.Application:
    """A server that reads each body and answers a fixed JSON body of the given size."""
    payload = b'{"video_id":[' + b"0," * (response_bytes // 2) + b'0]}'

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/rank", handle)
    app.router.add_get("/readyz", ready)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loadgen")
    parser.add_argument("--sink", type=int, required=True, help="serve the sink on this port")
    args: Any = parser.parse_args(argv)
    web.run_app(sink_app(), host="127.0.0.1", port=args.sink, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
