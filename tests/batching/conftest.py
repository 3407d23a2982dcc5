"""Fixtures: a real ONNX Runtime backend on a tiny model, behind a pausable wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from serving.backends.base import Backend, BackendOutput
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model


class PausableBackend(Backend):
    """A real backend whose batches can be held at the door: records every call's inputs,
    and waits for ``gate`` before computing, so tests can decide what is running when."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[dict[str, np.ndarray]] = []
        self.waiting = 0
        self._arrived = asyncio.Condition()

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
        self.calls.append(dict(inputs))
        self.waiting += 1
        async with self._arrived:
            self._arrived.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await self.inner.infer(model, inputs, timeout_s)

    async def until_waiting(self, count: int) -> None:
        """Until ``count`` batches are held at the gate."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.waiting >= count)


@pytest.fixture
def gather_add_path(tmp_path: Path) -> Path:
    return write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)


@pytest.fixture
async def ort_backend(gather_add_path: Path, request: pytest.FixtureRequest
                      ) -> AsyncIterator[PausableBackend]:
    instances = getattr(request, "param", 1)
    backend = PausableBackend(OnnxRuntimeBackend({"gather_add": gather_add_path},
                                                 instances=instances))
    await backend.start()
    yield backend
    backend.gate.set()
    await backend.aclose()
