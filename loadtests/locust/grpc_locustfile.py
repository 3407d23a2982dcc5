"""Locust scenario over gRPC: the same bank, schedule and samples as ``locustfile.py``, sent
to the ``Ranking`` service (``serving/rpc/proto/ranking.proto``) instead of ``/v1/rank``.

Locust's documented gRPC pattern: gevent-compatible grpc (``init_gevent``), a ``User``
holding a stub, and a client interceptor that fires ``events.request`` for every call, so
Locust's statistics, the shape and the per-request samples see gRPC calls like HTTP ones.
The bank must be ``binary`` (``loadtests.locust.run --encoding binary --prepare-only``): its
bodies are decoded once into ``RankRequest`` messages, so the user spends no CPU building
them. Against a running gateway (its gRPC port, not the HTTP one)::

    locust -f loadtests/locust/grpc_locustfile.py --headless -H 127.0.0.1:50051 \\
        --rankserve-bank DIR/bank --rankserve-schedule DIR/schedule.json \\
        --rankserve-results DIR --only-summary --csv DIR/locust

(``samples.csv`` and Locust's CSVs land in DIR; ``loadtests.locust.run`` itself drives the
HTTP user only.)

The budget option is sent as the gRPC deadline. Statuses are recorded as their HTTP
equivalents (RESOURCE_EXHAUSTED as 429, DEADLINE_EXCEEDED as 504, ...), so the report's
shed and error rates read the same for both transports.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, task
from locust.env import Environment

from loadtests.bank import Shot
from loadtests.grpc_shots import check_ranked, messages
from loadtests.locust import locustfile as base
from serving.rpc.stubs import ranking_pb2_grpc

grpc_gevent.init_gevent()

ScheduleShape = base.ScheduleShape  # the same schedule (Locust picks shapes from globals)

HTTP_EQUIVALENT = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
                   grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.NOT_FOUND: 404,
                   grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
                   grpc.StatusCode.DEADLINE_EXCEEDED: 504}


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every unary call to Locust (``events.request``), as its HTTP client does;
    a ``Rank`` answer that is not a complete ranking of :attr:`shot` counts as a failure.
    One per user (a user runs one call at a time), so :attr:`shot` is the call's."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.shot: Shot | None = None

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        start, perf = time.time(), time.perf_counter()
        outcome = continuation(details, request)
        exception = outcome.exception()
        length = 0
        if exception is None:
            length = outcome.result().ByteSize()
            problem = None if self.shot is None else check_ranked(outcome.result(), self.shot)
            exception = None if problem is None else AssertionError(problem)
        self.environment.events.request.fire(
            request_type="grpc", name=details.method, start_time=start,
            response_time=(time.perf_counter() - perf) * 1e3, response_length=length,
            response=SimpleNamespace(status_code=HTTP_EQUIVALENT.get(outcome.code(), 500)),
            context={"rows": self.shot.rows if self.shot else 0}, exception=exception)
        return outcome


class GrpcRankUser(User):
    """A feed backend calling ``Rank`` at a fixed per-user rate, on one channel per user."""

    def on_start(self) -> None:
        bank = base._bank(self.environment)
        if "messages" not in base._state:
            base._state["messages"] = messages(bank)
        pairs = list(zip(base._state["messages"], bank.shots, strict=True))
        first = random.randrange(len(pairs))
        self._pairs = itertools.cycle(pairs[first:] + pairs[:first])
        self._pace_s = 1.0 / base._schedule().per_user_rps
        self._timeout_s = base._option(self.environment, "rankserve_budget_ms") / 1e3
        self._interceptor = LocustInterceptor(self.environment)
        self._channel = grpc.intercept_channel(grpc.insecure_channel(self.host or ""),
                                               self._interceptor)
        self._stub = ranking_pb2_grpc.RankingStub(self._channel)
        self._last_start = time.perf_counter()
        gevent.sleep(random.random() * self._pace_s)

    def on_stop(self) -> None:
        self._channel.close()

    def wait_time(self) -> float:
        """Constant throughput, as the HTTP user."""
        return max(0.0, self._pace_s - (time.perf_counter() - self._last_start))

    @task
    def rank(self) -> None:
        self._last_start = time.perf_counter()
        message, shot = next(self._pairs)
        self._interceptor.shot = shot
        with contextlib.suppress(grpc.RpcError):  # reported by the interceptor
            self._stub.Rank(message, timeout=self._timeout_s)
