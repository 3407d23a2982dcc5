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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from serving.backends.base import Backend, BackendOutput
from serving.errors import BadRequest, DeadlineExceeded, RankServeError, Unavailable

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
        await self.primary.aclose()
        if self.fallback is not None:
            await self.fallback.aclose()

    def healthy(self) -> bool:
        """Ready if the primary is, or, under ``embedded``, if the fallback can answer."""
        return self.primary.healthy() or (self.fallback is not None and self.fallback.healthy())

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
        log.debug("failing over a batch of %s to %s: %s", model, self.fallback.name,
                  primary_error.message)
        output = await self.fallback.infer(model, inputs, remaining)
        return BackendOutput(output.outputs, degraded=True)
