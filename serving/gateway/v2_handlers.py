"""KServe v2 / Triton HTTP protocol handlers under ``/v2``: translation only."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from serving.batching.layout import CandidateLayout, layout_for
from serving.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable
from serving.gateway import v2_codec
from serving.gateway.keys import DATA_PLANE, SETTINGS
from serving.gateway.rules import deadline, parse_budget, path_version, read_body
from serving.repository.served import ServedModel
from serving.settings import Settings

EXTENSIONS = ["binary_tensor_data", "model_configuration"]


def _version() -> str:
    try:
        return metadata.version("rankserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def _model(request: web.Request) -> ServedModel:
    return request.app[DATA_PLANE].model(request.match_info["model"], path_version(request))


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "rankserve", "version": _version(),
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
    check_size(model, decoded.inputs, settings)
    timeout_ms = None if decoded.timeout_us is None else decoded.timeout_us / 1e3
    budget_ms = parse_budget(timeout_ms, "parameters.timeout", settings.max_budget_ms)
    result = await request.app[DATA_PLANE].infer(model, decoded.inputs,
                                                 deadline(request, budget_ms))
    missing = [name for name in decoded.outputs if name not in result.outputs]
    if missing:
        raise NotFound(f"the model produced no output '{missing[0]}'", field="outputs")
    body, headers = v2_codec.encode(model, result.outputs, decoded)
    return web.Response(body=body, headers=headers)


def check_size(model: ServedModel, inputs: dict[str, np.ndarray], settings: Settings) -> None:
    """The per-request limits ``/v1/rank`` has, counted the way the batcher counts rows:
    at most ``max_candidates`` candidate rows (a model's batch rows) and ``max_user_rows``
    user rows, and at least one row (a request with none is not sent to the model).

    Raises:
        PayloadTooLarge: past either limit, naming the input.
        BadRequest: the tensors' rows are inconsistent, or there are none.
    """
    layout = layout_for(model)
    rows, users = layout.rows_of(inputs), layout.user_rows_of(inputs)
    row_input = user_input = model.inputs[0].name
    if isinstance(layout, CandidateLayout):
        row_input, user_input = layout.rows[0], (layout.shared or layout.rows)[0]
    if rows > settings.max_candidates:
        raise PayloadTooLarge(f"'{row_input}' has {rows} rows; at most "
                              f"{settings.max_candidates} per request", field=f"inputs.{row_input}")
    if users > settings.max_user_rows:
        raise PayloadTooLarge(f"'{user_input}' has {users} user rows; at most "
                              f"{settings.max_user_rows} per request", field=f"inputs.{user_input}")
    if rows == 0:
        raise BadRequest(f"'{row_input}' has no rows to score", field=f"inputs.{row_input}")


def add_routes(app: web.Application) -> None:
    """Register the v2 routes, each with and without an explicit version."""
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", server_live)
    app.router.add_get("/v2/health/ready", server_ready)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_post(prefix + "/infer", infer)
