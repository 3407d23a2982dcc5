"""What happens to a batch when the primary backend (Triton) cannot score it.

Policy ``embedded`` (a fallback backend is given): the batch is scored by the in-process ONNX
Runtime backend and its output is marked ``degraded``, so clients and dashboards can tell.
To leave the fallback time to run, the primary gets only part of the batch's budget
(:data:`PRIMARY_SHARE`): a Triton that hangs costs that part, not the whole budget.

Policy ``none`` (no fallback): the batch fails at once with
:class:`~serving.errors.Unavailable` (HTTP 503) when Triton is down or failing, and with
:class:`~serving.errors.DeadlineExceeded` (504) when its budget ran out in Triton.

Either way no request waits longer than its budget: the primary is bounded by its deadline
and a circuit breaker that turns a dead Triton into an immediate ``Unavailable``.

Metrics tell which backend ran a batch: a fallback's output names the fallback
(``BackendOutput.backend``), so its time is recorded under ``backend="onnxruntime"``, not
under Triton's name; every failed-over batch counts in ``rankserve_failover_batches`` and the
primary's breaker state is the ``rankserve_circuit_breaker_state`` gauge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from serving.backends.base import Backend, BackendOutput
from serving.backends.circuit_breaker import BreakerState, CircuitBreaker
from serving.errors import BadRequest, DeadlineExceeded, RankServeError, Unavailable
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

PRIMARY_SHARE = 0.7
"""Share of a batch's budget the primary may use when a fallback waits behind it."""


class FailoverBackend(Backend):
    """A primary backend, and optionally a fallback that scores when the primary fails."""

    def __init__(self, primary: Backend, fallback: Backend | None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.failovers = 0
        """Batches the fallback scored (for metrics and tests)."""
        self._metrics: Metrics | None = None
        self._closed = False

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count failed-over batches and mirror the primary's circuit breaker (if it has
        one) into ``metrics``; a closed backend stops reporting, so an old generation
        draining after a reload cannot overwrite the new one's breaker state."""
        self._metrics = metrics
        breaker = getattr(self.primary, "breaker", None)
        if isinstance(breaker, CircuitBreaker):
            breaker.watch(self._report_breaker)

    def _report_breaker(self, state: BreakerState) -> None:
        if self._metrics is not None and not self._closed:
            self._metrics.set_breaker_state(self.primary.name, state.value)

    @property
    def instances(self) -> int:
        return self.primary.instances

    async def start(self) -> None:
        """Start the fallback first: it must be able to answer while Triton is still down.

        Raises:
            ModelCardError: either backend's models do not match their cards.
        """
        if self.fallback is not None:
            await self.fallback.start()
        try:
            await self.primary.start()
        except BaseException:
            if self.fallback is not None:
                await self.fallback.aclose()
            raise

    async def aclose(self) -> None:
        self._closed = True
        await self.primary.aclose()
        if self.fallback is not None:
            await self.fallback.aclose()

    def healthy(self) -> bool:
        """Ready if the primary is, or, under ``embedded``, if the fallback can answer."""
        return self.primary.healthy() or (self.fallback is not None and self.fallback.healthy())

    def failing(self) -> bool:
        """The primary's verdict: a timeout raised while it fails is an outage, whichever
        backend raised it."""
        return self.primary.failing()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        """Score on the primary; on its failure apply the policy (module docstring).

        Raises:
            Unavailable: the primary failed and there is no fallback.
            DeadlineExceeded: the budget ran out.
            BadRequest: the batch itself is invalid (no backend can score it).
            BackendError, Unavailable: the fallback failed too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        share = PRIMARY_SHARE if self.fallback is not None else 1.0
        try:
            return await self.primary.infer(model, inputs, timeout_s * share)
        except BadRequest:
            raise
        except RankServeError as e:
            if self.fallback is None:
                if isinstance(e, DeadlineExceeded):
                    raise
                raise Unavailable("the scoring backend is unavailable") from e
            primary_error = e
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded("no time left to fall back after the primary failed")
        self.failovers += 1
        if self._metrics is not None:
            self._metrics.failover_batches.labels(self.primary.name, self.fallback.name).inc()
        log.debug("failing over a batch of %s to %s: %s", model, self.fallback.name,
                  primary_error.message)
        output = await self.fallback.infer(model, inputs, remaining)
        return BackendOutput(output.outputs, degraded=True,
                             backend=output.backend or self.fallback.name)
