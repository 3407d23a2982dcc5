"""The interface the batcher drives; it never knows which backend is behind it."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.repository.served import ServedModel
from serving.settings import Settings
from serving.telemetry.metrics import Metrics


@dataclass
class BackendOutput:
    """A batch's output tensors, and whether a fallback (not the primary backend) made them."""

    outputs: dict[str, np.ndarray]
    degraded: bool = False
    backend: str | None = None
    """The name of the backend that ran the batch, when it is not the one the batcher drives
    (a fallback's): metrics label the batch with it."""


class Backend(abc.ABC):
    """Runs one batch of encoded tensors through a named model and returns its outputs.

    A backend is opened with :meth:`start` and closed with :meth:`aclose` (it owns sessions,
    channels or shared-memory regions). ``instances`` is how many batches it can run at
    once; the batcher caps in-flight batches at that number.
    """

    name: str = "backend"

    @property
    @abc.abstractmethod
    def instances(self) -> int:
        """How many batches may run concurrently."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open sessions / connections; raise :class:`serving.errors.RankServeError` on failure."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything :meth:`start` opened. Safe to call twice."""

    def bind_metrics(self, metrics: Metrics) -> None:  # noqa: B027 - optional hook
        """Report the backend's own state (a circuit breaker) into the app's ``metrics``;
        called once after the backend is built. The default has nothing to report."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the backend can take work now (feeds ``/readyz``)."""

    def failing(self) -> bool:
        """Whether the backend reports itself failing now (a circuit breaker that counted
        the last call as a failure): a timeout it raised then measures the outage, not a
        batch's cost, and the batcher's latency model must not learn it. Default: never."""
        return False

    @abc.abstractmethod
    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], timeout_s: float
    ) -> BackendOutput:
        """Score one batch; raise :class:`~serving.errors.DeadlineExceeded` once
        ``timeout_s`` has passed. A backend whose work cannot be abandoned (a worker thread
        inside ONNX Runtime) returns only when that work has stopped, so the instance slot
        the batcher holds for it stays taken until the instance is really free.

        Raises:
            serving.errors.DeadlineExceeded: the timeout passed.
            serving.errors.BackendError: the backend failed on this batch.
            serving.errors.Unavailable: the backend is down (the caller may fail over).
        """


BackendFactory = Callable[[Settings, Mapping[str, ServedModel]], Backend]
"""Builds the configured backend for a set of served models, keyed as :func:`model_keys`
names them; raises :class:`~serving.errors.ModelCardError` for a set it cannot serve."""


def model_keys(models: Sequence[ServedModel]) -> dict[str, ServedModel]:
    """The name each served version has inside a backend: the model name when it is the
    only version of its model (what Triton knows it by), ``name@version`` when several
    versions are served side by side."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.name] = counts.get(m.name, 0) + 1
    return {(f"{m.name}@{m.version}" if counts[m.name] > 1 else m.name): m for m in models}
