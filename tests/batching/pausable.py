"""A real backend whose batches can be held at a gate: a test instrument, not a mock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np

from serving.backends.base import Backend, BackendOutput
from tests.wrapped_backend import WrappedBackend


class PausableBackend(WrappedBackend):
    """A real backend whose batches can be held at the door: records every call's inputs,
    and waits for ``gate`` before computing, so tests can decide what is running when."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[dict[str, np.ndarray]] = []
        self.waiting = 0
        self._arrived = asyncio.Condition()

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
