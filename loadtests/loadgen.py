"""The load generator every hand-written load test uses: asyncio + aiohttp, loopback only.

Open loop (:func:`offer`, summarised by :func:`open_loop` / :func:`run_point`): requests
start on a fixed schedule (``rate`` per second), whether or not earlier ones have answered,
as a fleet of feed backends would send them. Each :class:`Outcome` keeps when it was due,
how late the generator sent it (its lag, reported on its own) and how long the answer
took from the moment it was sent. A :class:`Point`'s latency counts from the *scheduled*
start (lag + response), so a generator that falls behind shows up as latency instead of
silently lowering the load; the benchmark and the GPU check use it. The overload report,
which judges the gateway, uses the time from sending.

Closed loop (:func:`closed_loop`): a fixed number of callers, each sending its next call as
soon as the last returned, for a time or until told to stop. It drives HTTP
(:func:`post_shots`: the generator's ceiling against :func:`sink_app`, the rollout report)
or any other awaitable (the Triton hop's backend calls). A closed loop slows down with
the server and hides queueing: it measures a ceiling or keeps steady load, never capacity.

Requests are pre-encoded :class:`~loadtests.bank.Shot` s; during a run the generator only
sends bytes and reads each answer. It targets 127.0.0.1 only (:func:`check_loopback`): the
gateways it drives are started by the load tests themselves, and an overload run must
never reach a shared host. Its own ceiling is measured against :func:`sink_app`, a trivial
aiohttp server that answers every POST with a ranking-sized body
(``python -m loadtests.loadgen --sink PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from aiohttp import web

if TYPE_CHECKING:
    from loadtests.bank import Shot

T = TypeVar("T")
START_DELAY_S = 0.05
"""The schedule starts this long after the call, so the first request is not already late."""


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due (loop time; in a closed loop, when it was sent), how
    late it was sent, how long its answer took from then (ms), its status (0: no answer),
    its candidate rows and whether the answer carried ``Retry-After``."""

    scheduled: float
    lag_ms: float
    response_ms: float
    status: int
    rows: int
    retry_after: bool


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


def check_loopback(url: str) -> None:
    """Refuse a target that is not on this machine's loopback interface.

    Raises:
        ValueError: the URL's host is not ``localhost`` or a loopback address.
    """
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the load generator targets loopback only, got {url!r}")


def client_session(max_in_flight: int = 256, timeout_s: float = 10.0) -> aiohttp.ClientSession:
    """A session with at most ``max_in_flight`` open connections (0: no limit); past that,
    requests wait in the client, and the wait counts as their response time."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


def headers_for(content_type: str, budget_ms: float | None = None) -> dict[str, str]:
    """Request headers: the body's type, and ``X-Request-Budget-Ms`` when a budget is set."""
    headers = {"Content-Type": content_type}
    if budget_ms is not None:
        headers["X-Request-Budget-Ms"] = f"{budget_ms:g}"
    return headers


async def send(session: aiohttp.ClientSession, url: str, shot: Shot, headers: dict[str, str],
               scheduled: float | None = None) -> Outcome:
    """POST one shot and read the whole answer; a failed connection or timeout is status 0.
    ``scheduled``: when it was due (loop time), by default now."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    scheduled = sent if scheduled is None else scheduled
    try:
        async with session.post(url, data=shot.body, headers=headers) as response:
            await response.read()
            status, retry_after = response.status, "Retry-After" in response.headers
    except (aiohttp.ClientError, OSError, TimeoutError):
        status, retry_after = 0, False
    return Outcome(scheduled, (sent - scheduled) * 1e3, (loop.time() - sent) * 1e3, status,
                   shot.rows, retry_after)


async def offer(url: str, shots: Sequence[Shot], content_type: str, rate: float,
                seconds: float, *, warmup_s: float = 0.0, budget_ms: float | None = None,
                timeout_s: float = 10.0, max_in_flight: int = 256,
                extra_headers: Mapping[str, str] | None = None) -> list[Outcome]:
    """The open loop: ``shots`` in turn, ``rate`` per second for ``warmup_s + seconds``
    (``int((warmup_s + seconds) * rate)`` requests); the outcomes of the requests due after
    the warm-up. ``max_in_flight`` bounds open connections (0: no limit); ``extra_headers``
    go with every request (``/v2`` binary bodies need their header length).

    Raises:
        ValueError: ``url`` is not a loopback address.
    """
    check_loopback(url)
    headers = {**headers_for(content_type, budget_ms), **(extra_headers or {})}
    loop = asyncio.get_running_loop()
    async with client_session(max_in_flight, timeout_s) as session:
        tasks = []
        start = loop.time() + START_DELAY_S
        for i in range(int((warmup_s + seconds) * rate)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            tasks.append(loop.create_task(
                send(session, url, shots[i % len(shots)], headers, scheduled)))
        outcomes = await asyncio.gather(*tasks)
    return [o for o in outcomes if o.scheduled >= start + warmup_s]


def summarise(outcomes: Sequence[Outcome], rate: float, seconds: float) -> Point:
    """A :class:`Point` from the outcomes of one measured window."""
    ok = [o for o in outcomes if o.status == 200]
    latency = np.asarray([o.lag_ms + o.response_ms for o in ok])  # from the scheduled start
    lags = np.asarray([o.lag_ms for o in outcomes])
    return Point(
        offered_rps=rate, seconds=seconds, sent=len(outcomes), ok=len(ok),
        statuses=dict(sorted(Counter(str(o.status) for o in outcomes).items())),
        ok_rps=len(ok) / seconds, rows_per_s=sum(o.rows for o in ok) / seconds,
        p50_ms=float(np.percentile(latency, 50)) if ok else None,
        p99_ms=float(np.percentile(latency, 99)) if ok else None,
        lag_p99_ms=float(np.percentile(lags, 99)) if outcomes else 0.0)


async def open_loop(url: str, shots: Sequence[Shot], content_type: str, rate: float,
                    seconds: float, warmup_s: float = 0.5, budget_ms: float | None = None,
                    timeout_s: float = 10.0, max_in_flight: int = 256) -> Point:
    """:func:`offer` after a warm-up of ``warmup_s``, summarised as a :class:`Point`.

    Raises:
        ValueError: ``url`` is not a loopback address.
    """
    outcomes = await offer(url, shots, content_type, rate, seconds, warmup_s=warmup_s,
                           budget_ms=budget_ms, timeout_s=timeout_s,
                           max_in_flight=max_in_flight)
    return summarise(outcomes, rate, seconds)


def run_point(url: str, shots: Sequence[Shot], content_type: str, rate: float,
              seconds: float, budget_ms: float | None = None) -> Point:
    """:func:`open_loop` in a fresh event loop (one per measured point)."""
    return asyncio.run(open_loop(url, shots, content_type, rate, seconds,
                                 budget_ms=budget_ms))


async def closed_loop(call: Callable[[int], Awaitable[T]], concurrency: int, *,
                      seconds: float | None = None,
                      stop: asyncio.Event | None = None) -> list[T]:
    """The closed loop: ``concurrency`` callers, each awaiting its next ``call(i)`` as soon
    as its last returned (caller ``k`` makes calls ``k, k + concurrency, ...``), until
    ``seconds`` have passed or ``stop`` is set; every call's result, in completion order.
    A call that is running when the time is up still completes.

    Raises:
        ValueError: neither ``seconds`` nor ``stop`` bounds the loop.
    """
    if seconds is None and stop is None:
        raise ValueError("a closed loop needs seconds or a stop event")
    loop = asyncio.get_running_loop()
    end = math.inf if seconds is None else loop.time() + seconds
    results: list[T] = []

    def running() -> bool:
        return loop.time() < end and not (stop is not None and stop.is_set())

    async def caller(i: int) -> None:
        while running():
            results.append(await call(i))
            i += concurrency

    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return results


def post_shots(session: aiohttp.ClientSession, url: str, shots: Sequence[Shot],
               content_type: str, budget_ms: float | None = None
               ) -> Callable[[int], Awaitable[Outcome]]:
    """A :func:`closed_loop` call that sends shot ``i`` (modulo their number) to ``url``.

    Raises:
        ValueError: ``url`` is not a loopback address.
    """
    check_loopback(url)
    headers = headers_for(content_type, budget_ms)

    async def call(i: int) -> Outcome:
        return await send(session, url, shots[i % len(shots)], headers)

    return call


async def ceiling_rps(url: str, shots: Sequence[Shot], content_type: str, concurrency: int,
                      seconds: float) -> float:
    """Completed 200s per second with ``concurrency`` requests always in flight: the
    generator's ceiling when the server answers instantly.

    Raises:
        ValueError: ``url`` is not a loopback address.
    """
    loop = asyncio.get_running_loop()
    async with client_session(concurrency) as session:
        start = loop.time()
        outcomes = await closed_loop(post_shots(session, url, shots, content_type),
                                     concurrency, seconds=seconds)
        return sum(o.status == 200 for o in outcomes) / (loop.time() - start)


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
