"""KServe v2 / Triton HTTP protocol handlers under ``/v2``: translation only.

Errors under ``/v2`` take the protocol's shape, ``{"error": "<message>"}``, with the stable
code, the field and the request id as extra keys (:mod:`serving.gateway.middleware`);
``/v2/health/*`` is open when auth is on, like ``/healthz``. The statistics extension is not
served: it is absent from the server metadata's ``extensions``, and its paths say so
instead of looking up a model named ``stats``.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from serving.errors import NotFound, Unavailable
from serving.gateway import v2_codec
from serving.gateway.keys import DATA_PLANE, SETTINGS
from serving.gateway.rules import deadline, parse_budget, path_version, read_body
from serving.repository.served import ServedModel

EXTENSIONS = ["binary_tensor_data", "model_configuration"]
"""What the server metadata lists; ``statistics`` and ``model_repository`` are not served."""
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Probes that need no bearer token (as ``/healthz`` and ``/readyz``)."""
STATISTICS_UNSUPPORTED = ("the statistics extension is not supported by rankserve (the "
                          "server metadata lists its extensions); use /metrics")


def server_version() -> str:
    """rankserve's package version (the server metadata's ``version``)."""
    try:
        return metadata.version("rankserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def _model(request: web.Request) -> ServedModel:
    return request.app[DATA_PLANE].model(request.match_info["model"], path_version(request))


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "rankserve", "version": server_version(),
                              "extensions": EXTENSIONS})


async def server_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    reason = request.app[DATA_PLANE].readiness()
    if reason is not None:
        raise Unavailable(reason)
    return web.json_response({"ready": True})


async def model_metadata(request: web.Request) -> web.Response:
    model = _model(request)
    return web.json_response({
        "name": model.name, "platform": "onnxruntime_onnx",
        "versions": [str(v) for v in request.app[DATA_PLANE].versions(model.name)],
        "inputs": [t.to_metadata() for t in model.inputs],
        "outputs": [t.to_metadata() for t in model.outputs]})


async def model_ready(request: web.Request) -> web.Response:
    model = _model(request)
    reason = request.app[DATA_PLANE].readiness()
    if reason is not None:
        raise Unavailable(reason)
    return web.json_response({"name": model.name, "ready": True})


async def model_config(request: web.Request) -> web.Response:
    config: dict[str, Any] = json_format.MessageToDict(_model(request).config,
                                                       preserving_proto_field_name=True)
    return web.json_response(config)


async def infer(request: web.Request) -> web.Response:
    """``POST /v2/models/{model}[/versions/{version}]/infer``, JSON or binary tensors."""
    model = _model(request)
    settings = request.app[SETTINGS]
    body = await read_body(request)
    decoded = v2_codec.decode(body, request.headers.get(v2_codec.HEADER_LENGTH), model)
    v2_codec.check_size(model, decoded.inputs, settings)
    timeout_ms = None if decoded.timeout_us is None else decoded.timeout_us / 1e3
    budget_ms = parse_budget(timeout_ms, "parameters.timeout", settings.max_budget_ms)
    result = await request.app[DATA_PLANE].infer(model, decoded.inputs,
                                                 deadline(request, budget_ms))
    v2_codec.check_outputs(decoded.outputs, result.outputs)
    body, headers = v2_codec.encode(model, result.outputs, decoded)
    return web.Response(body=body, headers=headers)


async def statistics(request: web.Request) -> web.Response:
    """``GET /v2/models[/{model}[/versions/{version}]]/stats``: not served (see module)."""
    raise NotFound(STATISTICS_UNSUPPORTED, field="path")


def add_routes(app: web.Application) -> None:
    """Register the v2 routes, each with and without an explicit version."""
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", server_live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2/models/stats", statistics)  # before /v2/models/{model}
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_get(prefix + "/stats", statistics)
        app.router.add_post(prefix + "/infer", infer)
