"""Rollout fixtures: a repository with two genuinely different versions of the ranker, and
real gateways over it on 127.0.0.1 (real ONNX Runtime sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from onnx import numpy_helper

from serving.backends.base import Backend, BackendOutput
from serving.backends.factory import build_backend
from serving.gateway.app import create_app
from serving.gateway.keys import METRICS
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard, sha256_of
from serving.settings import Settings
from serving.train.data import load_requests
from tests.gateway.conftest import REPOSITORY

MODEL = "feed_ranker"
ADMIN_TOKEN = "admin-secret-for-tests"
PERTURBED = "mmoe.gates.weight"
"""Version 2 rescales the MMoE gate weights: same inputs and outputs, different scores."""


def set_policy(repository: Path, policy: str) -> None:
    """Rewrite the ranker's ``version_policy`` (Triton syntax, e.g. ``all {}``)."""
    config = repository / MODEL / "config.pbtxt"
    text = re.sub(r"version_policy: \{.*\}\n", f"version_policy: {{ {policy} }}\n",
                  config.read_text())
    config.write_text(text)


def add_version(repository: Path, version: int, source: Path) -> None:
    """Copy a prepared version folder into ``repository`` (what a deploy does)."""
    shutil.copytree(source, repository / MODEL / str(version))


def make_repository(root: Path, versions: Collection[int], versions_dir: Path,
                    policy: str = "all {}") -> Path:
    """A copy of the committed repository holding ``versions`` of the ranker."""
    repository = root / "model_repository"
    (repository / MODEL).mkdir(parents=True)
    shutil.copy(REPOSITORY / MODEL / "config.pbtxt", repository / MODEL)
    for version in versions:
        add_version(repository, version, versions_dir / str(version))
    set_policy(repository, policy)
    return repository


@pytest.fixture(scope="session")
def versions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_versions(tmp_path_factory.mktemp("versions"))


def build_versions(root: Path) -> Path:
    """Version 1 (the committed model) and version 2 (its gate weights rescaled) under
    ``root``, each a complete version folder with its model card (version and sha256
    updated)."""
    shutil.copytree(REPOSITORY / MODEL / "1", root / "1")
    graph = onnx.load(str(REPOSITORY / MODEL / "1" / ONNX_FILE))
    rng = np.random.default_rng(7)
    for i, tensor in enumerate(graph.graph.initializer):
        if tensor.name == PERTURBED:
            weights = numpy_helper.to_array(tensor)
            changed = weights * rng.uniform(0.0, 2.0, weights.shape).astype(weights.dtype)
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(changed, tensor.name))
    (root / "2").mkdir()
    onnx.save(graph, str(root / "2" / ONNX_FILE))
    card = ModelCard.load(REPOSITORY / MODEL / "1" / CARD_FILE)
    replace(card, version=2, onnx_sha256=sha256_of(root / "2" / ONNX_FILE)).save(
        root / "2" / CARD_FILE)
    return root


@pytest.fixture(scope="session")
def heldout() -> list[dict[str, Any]]:
    """Real held-out KuaiRand requests."""
    return load_requests(limit=200)


class GatedBackend(Backend):
    """A real backend whose batches for some model keys wait at a gate (a test instrument:
    it makes one version slow on demand, the way an overloaded candidate model is)."""

    def __init__(self, inner: Backend, gated: Collection[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.gated = set(gated)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    @property
    def instances(self) -> int:
        return self.inner.instances

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def healthy(self) -> bool:
        return self.inner.healthy()

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
