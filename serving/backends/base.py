"""The interface the batcher drives; it never knows which backend is behind it."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class BackendOutput:
    """A batch's output tensors, and whether a fallback (not the primary backend) made them."""

    outputs: dict[str, np.ndarray]
    degraded: bool = False


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

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the backend can take work now (feeds ``/readyz``)."""

    @abc.abstractmethod
    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], timeout_s: float
    ) -> BackendOutput:
        """Score one batch; must return within ``timeout_s`` or raise.

        Raises:
            serving.errors.DeadlineExceeded: the timeout passed.
            serving.errors.BackendError: the backend failed on this batch.
            serving.errors.Unavailable: the backend is down (the caller may fail over).
        """
