"""Typed application and request keys shared by the app, middleware and handlers."""

from __future__ import annotations

from aiohttp import web

from serving.gateway.dataplane import DataPlane
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
DATA_PLANE = web.AppKey("data_plane", DataPlane)

# Per-request values (``request[...]``), set by the middleware.
ARRIVAL = web.RequestKey("arrival", float)  # loop.time() when the request reached the gateway
REQUEST_ID = web.RequestKey("request_id", str)
