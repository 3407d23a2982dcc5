"""HTTP handlers for ``/v1/rank``, health, readiness and metrics: translation only.

Each handler reads the body (:mod:`serving.gateway.rules`), decodes it with a codec, calls
the data plane and encodes the answer; errors propagate as :class:`~serving.errors.RankServeError`
to the middleware.
"""

from __future__ import annotations

import os
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from serving.errors import NotFound, Unavailable, UnsupportedMediaType
from serving.gateway import rank_codec
from serving.gateway.keys import DATA_PLANE, METRICS, REQUEST_ID, SETTINGS
from serving.gateway.rules import deadline, parse_json, read_body
from serving.telemetry import tracing
from serving.telemetry.logs import request_id_var
from serving.wire import columns as columns_codec

JSON_TYPES = frozenset({"application/json", "text/json", ""})


async def rank(request: web.Request) -> web.Response:
    """``POST /v1/rank``: rank one user's candidates (JSON or binary columns, either way;
    the answer is binary columns when ``Accept`` asks for them, else JSON)."""
    settings = request.app[SETTINGS]
    decoding = time.monotonic()
    body = await read_body(request)
    if request.content_type == columns_codec.CONTENT_TYPE:
        document, columns = columns_codec.decode(body)
        document["candidates"] = columns
    elif request.content_type in JSON_TYPES:
        document = parse_json(body)
    else:
        raise UnsupportedMediaType(
            f"content type '{request.content_type}' is not accepted; send application/json "
            f"or {columns_codec.CONTENT_TYPE}", field="Content-Type")
    parsed = rank_codec.to_rank_request(document, max_candidates=settings.max_candidates,
                                        max_budget_ms=settings.max_budget_ms)
    tracing.record("decode", decoding, decoded := time.monotonic(), decoded)
    if parsed.request_id is not None:
        request[REQUEST_ID] = parsed.request_id
        request_id_var.set(parsed.request_id)
    result = await request.app[DATA_PLANE].rank(parsed, deadline(request, parsed.budget_ms))
    if rank_codec.wants_columns(request.headers.get("Accept", "")):
        return web.Response(body=rank_codec.encode_response_columns(result, request[REQUEST_ID]),
                            content_type=columns_codec.CONTENT_TYPE)
    return web.Response(body=rank_codec.encode_response(result, request[REQUEST_ID]),
                        content_type="application/json")


async def model_schema(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``: what a caller may send to ``/v1/rank`` for this model
    (its schema's features with their request fields, tasks, default weights) and the
    versions served."""
    plane = request.app[DATA_PLANE]
    name = request.match_info["model"]
    ranker = plane.rankers.get(name)
    if ranker is None:
        plane.model(name)  # NotFound / Unavailable as on /v2, when it is not served at all
        raise NotFound(f"model '{name}' has no model card; /v1/rank needs one", field="model")
    return web.json_response({"name": name, "version": ranker.model.version,
                              "versions": plane.versions(name), **ranker.encoder.describe()})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers (with its pid: under ``--workers N`` it tells which
    worker a connection reached)."""
    return web.json_response({"status": "alive", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: models loaded, backend healthy, not draining; else 503 with the reason."""
    reason = request.app[DATA_PLANE].readiness()
    if reason is not None:
        raise Unavailable(reason)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the app's registry (GPU telemetry included)."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
