"""The batcher's knobs and the backend capacity it shares with other batchers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serving.batching.buckets import Buckets
from serving.settings import Settings, default

WARMUP_ROWS = (1, 32, 256, 1024)
"""Warm-up batch sizes (candidate rows, one user row) when there are no buckets."""


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
    buckets: Buckets | None = None
    """Shape buckets every batch is padded up to (``None``: batches run at their shape)."""

    @classmethod
    def from_settings(cls, settings: Settings, max_batch_size: int = 0) -> BatchPolicy:
        """The policy the settings give a model whose ``max_batch_size`` (0: none) caps its
        batches."""
        mbs = max_batch_size or settings.batch_rows
        return cls(batch_rows=min(settings.batch_rows, mbs),
                   chunk_rows=min(settings.chunk_rows, mbs),
                   max_wait_s=settings.max_wait_ms / 1e3,
                   max_queue_rows=settings.max_queue_rows, batching=settings.batching,
                   buckets=Buckets.of(settings.buckets, settings.user_buckets))

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """``(candidate rows, user rows)`` shapes warm-up runs: every bucket shape a batch
        can take, or, without buckets, a few typical sizes."""
        if self.buckets is not None:
            return self.buckets.shapes(self.batch_rows)
        return [(rows, 1) for rows in WARMUP_ROWS if rows <= self.batch_rows]


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
