"""The batcher's knobs and the backend capacity it shares with other batchers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """The batcher's knobs (the ``Settings`` fields of the same names)."""

    batch_rows: int = 2048
    chunk_rows: int = 1024
    max_wait_s: float = 0.002
    max_queue_rows: int = 50_000
    batching: bool = True
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
