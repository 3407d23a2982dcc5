"""The gRPC call edge: what the HTTP middleware does, for every RPC, in one place.

Each servicer method is wrapped by :func:`rpc`, which

* stamps the arrival time (``loop.time()``) and a request id (``x-request-id`` metadata
  when valid, else a fresh one), sent back in the trailing metadata;
* checks the bearer token (``authorization`` metadata) with the HTTP gateway's comparison
  (:func:`serving.gateway.rules.check_bearer_value`), except on the health RPCs;
* opens the request's trace span (:func:`serving.telemetry.tracing.request_span`, parented
  by the caller's W3C ``traceparent`` metadata), as the HTTP middleware does;
* maps the project's errors to gRPC statuses (:data:`STATUS`) with the stable code, the
  field and, for shed load, ``retry-after`` in the trailing metadata; anything unexpected is
  INTERNAL with no internals in its details (the traceback goes to the log);
* records the same latency metric, shed and deadline counters as HTTP (route: the full
  method name, ``/package.Service/Method``; status the HTTP-equivalent, 499 when the
  client cancelled).

A client that cancels (or whose deadline passes) cancels the handler's task, so its job
leaves the batcher's queue exactly as when an HTTP client disconnects.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from serving.errors import (
    DeadlineExceeded,
    Overloaded,
    RankServeError,
    Unauthorized,
)
from serving.gateway.rules import BUDGET_HEADER, check_bearer_value, parse_budget, valid_request_id
from serving.settings import Settings
from serving.telemetry import tracing
from serving.telemetry.logs import request_id_var
from serving.telemetry.metrics import Metrics, served_var, status_class

log = logging.getLogger("rankserve.access")

STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    # Too many candidates or rows: retrying the same request cannot help, so not
    # RESOURCE_EXHAUSTED (which clients treat as "retry after"); the code says which.
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""gRPC status by the error's HTTP status (the one table; anything else is INTERNAL)."""
CODE_KEY, FIELD_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY = (
    "rankserve-error-code", "rankserve-error-field", "x-request-id", "retry-after")
BUDGET_KEY = BUDGET_HEADER.lower()
STATUS_CLIENT_CLOSED = 499
SHEDDING = frozenset({429, 503, 504, STATUS_CLIENT_CLOSED})


@dataclass
class Call:
    """One RPC as the servicers see it: its metadata, arrival and request id."""

    context: aio.ServicerContext[Any, Any]
    metadata: dict[str, str]
    arrival: float
    request_id: str
    settings: Settings

    def deadline(self, budget_ms: float | None) -> float:
        """The ``loop.time()`` deadline: arrival + the first budget given of the message's
        (already validated), the ``x-request-budget-ms`` metadata's, the gRPC deadline's
        (``grpc-timeout``) and the server default; never past the gRPC deadline, since an
        answer after it reaches nobody.

        Raises:
            BadRequest: the metadata budget is malformed.
        """
        header = parse_budget(self.metadata.get(BUDGET_KEY), BUDGET_HEADER,
                              self.settings.max_budget_ms)
        remaining = self.context.time_remaining()
        grpc_ms = None if remaining is None else max(remaining, 0.0) * 1e3
        budget_ms = budget_ms or header or grpc_ms or self.settings.default_budget_ms
        budget_ms = min(budget_ms, self.settings.max_budget_ms)
        if grpc_ms is not None:
            budget_ms = min(budget_ms, grpc_ms)
        return self.arrival + budget_ms / 1e3


Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, Call], Awaitable[Response]]
Wrapped = Callable[[Any, Request, aio.ServicerContext[Any, Any]], Awaitable[Response]]


def rpc(route: str, open_: bool = False) -> Callable[[Method[Request, Response]],
                                                     Wrapped[Request, Response]]:
    """Wrap a servicer method ``(self, request, call)`` in the call edge (module
    docstring). ``open_``: no bearer token needed (health)."""

    def decorate(method: Method[Request, Response]) -> Wrapped[Request, Response]:
        @functools.wraps(method)
        async def handler(self: Any, request: Request,
                          context: aio.ServicerContext[Any, Any]) -> Response:
            settings: Settings = self.settings
            metrics: Metrics = self.metrics
            loop = asyncio.get_running_loop()
            arrival = loop.time()
            metadata = _metadata(context)
            given = metadata.get(REQUEST_ID_KEY, "")
            call = Call(context, metadata, arrival,
                        given if valid_request_id(given) else uuid.uuid4().hex, settings)
            token = request_id_var.set(call.request_id)
            served_token = served_var.set(None)
            status = STATUS_CLIENT_CLOSED
            try:
                try:
                    if settings.auth_token and not open_:
                        check_bearer_value(metadata.get("authorization", ""),
                                           settings.auth_token, Unauthorized)
                    with tracing.request_span(route, context.invocation_metadata() or (),
                                              {"rpc.system": "grpc"}) as span:
                        response = await method(self, request, call)
                        tracing.set_status(span, 200)
                except RankServeError as e:
                    status = e.status
                    await _abort(context, e, call, metrics)
                except aio.AbortError:  # the method ended the call itself
                    status = 501
                    raise
                except Exception:
                    status = 500
                    log.exception("unhandled error", extra={"route": route})
                    await _abort(context, RankServeError("internal error"), call, metrics)
                status = 200
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
                return response
            finally:
                _record(metrics, route, status, loop.time() - arrival)
                served_var.reset(served_token)
                request_id_var.reset(token)

        return handler

    return decorate


def _metadata(context: aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The invocation metadata as text (binary ``-bin`` entries are skipped)."""
    return {key: value for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)}


async def _abort(context: aio.ServicerContext[Any, Any], error: RankServeError, call: Call,
                 metrics: Metrics) -> None:
    """End the RPC with the error's status and its code, field and request id.

    Raises:
        grpc.aio.AbortError: always (grpc's way of ending the handler).
    """
    trailing = [(CODE_KEY, error.code), (REQUEST_ID_KEY, call.request_id)]
    if error.field is not None:
        trailing.append((FIELD_KEY, error.field))
    if isinstance(error, Overloaded):
        metrics.shed.inc()
        trailing.append((RETRY_AFTER_KEY, str(int(max(1.0, error.retry_after_s)))))
    elif isinstance(error, DeadlineExceeded):
        metrics.deadline_exceeded.inc()
    if error.status >= 500 and error.status not in SHEDDING:
        log.warning("%s: %s", error.code, error.message)
    await context.abort(STATUS.get(error.status, grpc.StatusCode.INTERNAL), error.message,
                        tuple(trailing))


def _record(metrics: Metrics, route: str, status: int, elapsed: float) -> None:
    model, version = served_var.get() or ("", "")
    metrics.request_latency.labels(route, str(status), status_class(status), model,
                                   version).observe(elapsed)
    level = logging.DEBUG if status < 400 or status in SHEDDING else (
        logging.INFO if status < 500 else logging.WARNING)
    log.log(level, "gRPC %s %d", route, status,
            extra={"status": status, "ms": round(elapsed * 1e3, 3), "route": route})
