"""The one middleware: request id, auth, error mapping, latency metric and access log.

Every :class:`~serving.errors.RankServeError` becomes ``{"error": {"code", "message",
"field"}, "request_id"}`` with the error's own status; under ``/v2`` it takes the KServe v2
shape instead, ``{"error": "<message>", "code", "field", "request_id"}`` (the protocol's
string, which ``tritonclient`` formats; the rest as extra keys); routing errors (unknown
path, wrong method) get the same shapes; anything unexpected is a 500 whose body says nothing about
internals (the traceback goes to the log, with the request id).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RankServeError,
    Unauthorized,
)
from serving.gateway.keys import ARRIVAL, METRICS, REQUEST_ID, SETTINGS
from serving.gateway.rules import check_bearer, valid_request_id
from serving.gateway.v2_handlers import OPEN_PATHS
from serving.telemetry import tracing
from serving.telemetry.logs import request_id_var
from serving.telemetry.metrics import served_var, status_class

log = logging.getLogger("rankserve.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED = ("/v1/", "/v2")
STATUS_CLIENT_CLOSED = 499  # nginx's convention, used only in metrics and logs
SHEDDING = frozenset({429, 503, 504, STATUS_CLIENT_CLOSED})
"""Expected outcomes under overload: counted by metrics, logged only at DEBUG."""


def error_response(error: RankServeError, request_id: str, kserve: bool = False
                   ) -> web.Response:
    """The error's JSON answer; ``kserve``: the KServe v2 shape (``/v2`` paths)."""
    if kserve:
        extra = {k: v for k, v in error.to_dict().items() if k != "message"}
        body = orjson.dumps({"error": error.message, **extra, "request_id": request_id})
    else:
        body = orjson.dumps({"error": error.to_dict(), "request_id": request_id})
    response = web.Response(body=body, status=error.status, content_type="application/json")
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(int(max(1.0, error.retry_after_s)))
    return response


def _from_http(e: web.HTTPException) -> RankServeError:
    """aiohttp's own routing errors, in the project's error shape."""
    if isinstance(e, web.HTTPNotFound):
        return NotFound("no such endpoint", field="path")
    if isinstance(e, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"{e.method} is not allowed here; allowed: "
                                f"{', '.join(sorted(e.allowed_methods))}", field="method")
    return BadRequest(e.reason or "bad request")


def _check_auth(request: web.Request) -> None:
    """The traffic bearer token on /v1 and /v2 (probes and /admin are not covered)."""
    token = request.app[SETTINGS].auth_token
    if token and request.path.startswith(PROTECTED) and request.path not in OPEN_PATHS:
        check_bearer(request, token, Unauthorized)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    request[ARRIVAL] = arrival = loop.time()
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if valid_request_id(given) else uuid.uuid4().hex
    token = request_id_var.set(request[REQUEST_ID])
    served_token = served_var.set(None)
    metrics = request.app[METRICS]
    status = STATUS_CLIENT_CLOSED
    try:
        try:
            _check_auth(request)
            with tracing.request_span(f"{request.method} {_route(request)}", request.headers,
                                      {"http.request.method": request.method}) as span:
                response = await handler(request)
                tracing.set_status(span, response.status)
        except RankServeError as e:
            response = _error(e, request)
        except web.HTTPException as e:
            response = _error(_from_http(e), request)
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            response = _error(RankServeError("internal error"), request)
        status = response.status
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response
    finally:
        route = _route(request)
        elapsed = loop.time() - arrival
        model, version = served_var.get() or ("", "")
        served_var.reset(served_token)
        metrics.request_latency.labels(route, str(status), status_class(status), model,
                                       version).observe(elapsed)
        log.log(_access_level(status), "%s %s %d", request.method, request.path, status,
                extra={"status": status, "ms": round(elapsed * 1e3, 3), "route": route})
        request_id_var.reset(token)


def _route(request: web.Request) -> str:
    """The matched route's pattern (bounded cardinality: metrics and span names)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _error(error: RankServeError, request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if isinstance(error, Overloaded):
        metrics.shed.inc()
    elif isinstance(error, DeadlineExceeded):
        metrics.deadline_exceeded.inc()
    if error.status >= 500 and error.status not in SHEDDING:
        log.warning("%s: %s", error.code, error.message)
    return error_response(error, request[REQUEST_ID], kserve=request.path.startswith("/v2"))


def _access_level(status: int) -> int:
    """Success and load shedding (counted by metrics, and frequent under overload) at
    DEBUG; client errors at INFO; server faults at WARNING."""
    if status < 400 or status in SHEDDING:
        return logging.DEBUG
    return logging.INFO if status < 500 else logging.WARNING
