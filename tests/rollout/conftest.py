"""Rollout fixtures: a repository with two genuinely different versions of the ranker, and
real gateways over it on 127.0.0.1 (real ONNX Runtime sessions)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from loadtests.experiments.rollout import MODEL, add_version, build_versions, make_repository
from serving.backends.base import Backend, BackendOutput
from serving.backends.factory import build_backend
from serving.gateway.app import create_app
from serving.gateway.keys import METRICS
from serving.settings import Settings
from serving.train.data import load_requests
from tests.wrapped_backend import WrappedBackend

__all__ = ["MODEL", "add_version", "build_versions", "make_repository"]

ADMIN_TOKEN = "admin-secret-for-tests"


@pytest.fixture(scope="session")
def versions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_versions(tmp_path_factory.mktemp("versions"))


@pytest.fixture(scope="session")
def heldout() -> list[dict[str, Any]]:
    """Real held-out KuaiRand requests."""
    return load_requests(limit=200)


class GatedBackend(WrappedBackend):
    """A real backend whose batches for some model keys wait at a gate (a test instrument:
    it makes one version slow on demand, the way an overloaded candidate model is)."""

    def __init__(self, inner: Backend, gated: Collection[str]) -> None:
        super().__init__(inner)
        self.gated = set(gated)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        if model in self.gated:
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        return await self.inner.infer(model, inputs, timeout_s)


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    backends: list[Backend]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def rank(self, document: dict[str, Any]) -> tuple[int, Any]:
        response = await self.client.post("/v1/rank", data=orjson.dumps(document),
                                          headers={"Content-Type": "application/json"})
        return response.status, await response.json()

    async def admin(self, method: str, path: str, body: Any = None,
                    token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = await self.client.request(method, path, headers=headers,
                                             data=None if body is None else orjson.dumps(body))
        return response.status, await response.json()


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    async with gateways() as start:
        yield start


@contextlib.asynccontextmanager
async def gateways() -> AsyncIterator[GatewayFactory]:
    """Starts real gateways (settings overrides as keyword arguments; ``gated``: backend
    model keys whose batches wait at each backend's gate); closes them on exit."""
    started: list[Gateway] = []

    async def start(gated: Collection[str] = (), **overrides: Any) -> Gateway:
        settings = Settings.load(None, **{"port": 0, "max_wait_ms": 1.0,
                                          "default_budget_ms": 10_000.0,
                                          "providers": ["CPUExecutionProvider"], **overrides})
        backends: list[Backend] = []

        def factory(s: Settings, models: Mapping[str, Path]) -> Backend:
            backends.append(GatedBackend(build_backend(s, models), gated))
            return backends[-1]

        app = create_app(settings, factory)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        started.append(Gateway(client, app, backends))
        return started[-1]

    try:
        yield start
    finally:
        await _close(started)


async def _close(started: list[Gateway]) -> None:
    for gateway in started:
        for backend in gateway.backends:
            if isinstance(backend, GatedBackend):
                backend.gate.set()
        await gateway.client.close()
