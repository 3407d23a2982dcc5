"""The aiohttp application: routes, the middleware, and resources opened in one place.

The data plane (models, backend, batchers) and the GPU collector live in the app's
``cleanup_ctx``: opened before the server takes traffic, closed after it stopped taking
traffic and in-flight requests finished. Readiness turns 503 as soon as shutdown begins,
so a load balancer stops sending before the batchers drain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from serving.backends.base import BackendFactory
from serving.backends.factory import build_backend
from serving.gateway import admin, handlers, v2_handlers
from serving.gateway.dataplane import DataPlane
from serving.gateway.keys import DATA_PLANE, METRICS, SETTINGS
from serving.gateway.middleware import gateway_middleware
from serving.settings import Settings
from serving.telemetry import tracing
from serving.telemetry.gpu import GpuCollector
from serving.telemetry.metrics import Metrics


def create_app(settings: Settings, backend_factory: BackendFactory = build_backend
               ) -> web.Application:
    """A ready-to-run gateway app; nothing is loaded until the app starts."""
    metrics = Metrics()
    app = web.Application(middlewares=[gateway_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[DATA_PLANE] = DataPlane(settings, metrics, backend_factory)
    app.cleanup_ctx.append(_tracing)
    app.cleanup_ctx.append(_gpu_telemetry)
    app.cleanup_ctx.append(_data_plane)
    app.on_shutdown.append(_stop_being_ready)
    app.router.add_post("/v1/rank", handlers.rank)
    app.router.add_get("/v1/models/{model}", handlers.model_schema)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    v2_handlers.add_routes(app)
    admin.add_routes(app)
    return app


async def _data_plane(app: web.Application) -> AsyncIterator[None]:
    plane = app[DATA_PLANE]
    try:
        await plane.start()
        yield
    finally:
        await plane.aclose()


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    """OpenTelemetry from the OTEL_* environment (off unless set); flushed at shutdown.
    A provider set already (a test's in-memory one) is left alone."""
    configured = not tracing.enabled() and tracing.configure()
    yield
    if configured:
        tracing.shutdown()


async def _gpu_telemetry(app: web.Application) -> AsyncIterator[None]:
    collector = GpuCollector()
    app[METRICS].register(collector)
    yield
    collector.close()


async def _stop_being_ready(app: web.Application) -> None:
    app[DATA_PLANE].draining = True
