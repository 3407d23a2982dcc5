"""The batcher's knobs and the backend capacity it shares with other batchers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serving.settings import default


@dataclass(frozen=True)
class BatchPolicy:
    """The batcher's knobs (the ``Settings`` fields of the same names, and their defaults)."""

    batch_rows: int = default("batch_rows")
    chunk_rows: int = default("chunk_rows")
    max_wait_s: float = default("max_wait_ms") / 1e3
    max_queue_rows: int = default("max_queue_rows")
    batching: bool = default("batching")
    # A batch must finish this long before its deadline, leaving time to rank, encode and
    # send the answer: the larger of a fixed floor and a fraction of the request's budget.
    min_slack_s: float = 0.001
    slack_fraction: float = 0.1


class Slots:
    """Backend instances free to run a batch; shared by the batchers of one backend."""

    def __init__(self, instances: int) -> None:
        self.total = instances
        self._sem = asyncio.Semaphore(instances)
        self.busy = 0

    @property
    def free(self) -> int:
        return self.total - self.busy

    async def acquire(self) -> None:
        await self._sem.acquire()
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1
        self._sem.release()
