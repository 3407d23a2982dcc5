"""A real backend wrapped by a test instrument: everything but ``infer`` is delegated."""

from __future__ import annotations

from serving.backends.base import Backend
from serving.telemetry.metrics import Metrics


class WrappedBackend(Backend):
    """Subclasses override ``infer`` to hold, record or break batches of ``inner``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def instances(self) -> int:
        return self.inner.instances

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def healthy(self) -> bool:
        return self.inner.healthy()

    def bind_metrics(self, metrics: Metrics) -> None:
        self.inner.bind_metrics(metrics)
