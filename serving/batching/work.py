"""Units of work: a request's job, the row slices (chunks) it is split into, and results.

A :class:`Job` is one request's tensors plus the future its handler awaits. It is split into
:class:`Chunk` s of at most ``chunk_rows`` candidate rows; each chunk is queued on its own
(earliest deadline first) and may land in a different batch on a different backend
instance. The job's future resolves when its last chunk is done; every outcome is set
through :func:`set_if_pending`, so a client that went away (future cancelled) never makes
the batch that carried its rows raise for everyone else.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

Tensors = dict[str, np.ndarray]
T = TypeVar("T")


def set_if_pending(future: asyncio.Future[T], *, result: T | None = None,
                   error: BaseException | None = None) -> None:
    """Resolve ``future`` unless it is already done (answered, failed or cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


@dataclass
class JobResult:
    """A job's outputs (rows in request order) and where its time went."""

    outputs: Tensors
    degraded: bool
    queue_s: float
    backend_s: float
    batch_rows: int


class ChunkState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DROPPED = "dropped"


@dataclass(eq=False)
class Job:
    """One request's tensors, deadline and result future."""

    inputs: Tensors
    rows: int
    deadline: float
    enqueued_at: float
    future: asyncio.Future[JobResult]
    signature: tuple[object, ...] = ()
    dispatch_by: float = 0.0
    """The latest time its batch may finish (deadline less the slack for later work)."""
    chunks: list[Chunk] = field(default_factory=list)
    parts: dict[int, Tensors] = field(default_factory=dict)
    degraded: bool = False
    queue_s: float = 0.0
    backend_s: float = 0.0
    batch_rows: int = 0
    trace: Any = None
    """The submitting request's span context (tracing on): its batches link to it."""

    @property
    def started(self) -> bool:
        """Whether any chunk is running or done: the rest should not wait for company."""
        return any(c.state in (ChunkState.RUNNING, ChunkState.DONE) for c in self.chunks)

    def split(self, chunk_rows: int) -> None:
        """Cut the job into chunks of at most ``chunk_rows`` rows (one chunk if 0)."""
        size = self.rows if chunk_rows <= 0 else chunk_rows
        bounds = range(0, max(self.rows, 1), max(size, 1))
        self.chunks = [Chunk(self, i, start, min(start + size, self.rows))
                       for i, start in enumerate(bounds)]

    def complete(self, chunk: Chunk, part: Tensors, degraded: bool, dispatched_at: float,
                 backend_s: float, batch_rows: int) -> None:
        """Record one chunk's outputs; resolve the future when the last one is in."""
        chunk.state = ChunkState.DONE
        self.parts[chunk.index] = part
        self.degraded |= degraded
        self.queue_s = max(self.queue_s, dispatched_at - self.enqueued_at)
        self.backend_s = max(self.backend_s, backend_s)
        self.batch_rows = max(self.batch_rows, batch_rows)
        if len(self.parts) < len(self.chunks):
            return
        if len(self.parts) == 1:
            outputs = self.parts[0]
        else:
            ordered = [self.parts[i] for i in range(len(self.chunks))]
            outputs = {name: np.concatenate([p[name] for p in ordered]) for name in ordered[0]}
        set_if_pending(self.future, result=JobResult(
            outputs, self.degraded, self.queue_s, self.backend_s, self.batch_rows))


@dataclass(eq=False)
class Chunk:
    """Rows ``start:stop`` of a job; the unit the queue orders and batches are built of."""

    job: Job
    index: int
    start: int
    stop: int
    state: ChunkState = ChunkState.QUEUED

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def deadline(self) -> float:
        return self.job.deadline

    @property
    def alive(self) -> bool:
        """Queued and still wanted (its request has not been answered, failed or cancelled)."""
        return self.state is ChunkState.QUEUED and not self.job.future.done()
