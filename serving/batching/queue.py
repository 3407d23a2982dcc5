"""The batcher's queue: chunks of many requests ordered by deadline (earliest first).

A chunk whose request was answered, failed or cancelled stays in the heap until it reaches
the head (lazy deletion: removing it from the middle would cost a rebuild per disconnect);
when most entries are such dead ones the heap is rebuilt so their tensors are not kept
alive until they surface.
"""

from __future__ import annotations

import heapq
import itertools

from serving.batching.work import Chunk, ChunkState

Entry = tuple[float, int, Chunk]
"""(deadline, arrival sequence, chunk): equal deadlines keep arrival order."""

COMPACT_MIN_DEAD = 64


class DeadlineQueue:
    """Earliest-deadline-first queue of chunks (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._dead = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, chunk: Chunk) -> None:
        heapq.heappush(self._heap, (chunk.deadline, next(self._seq), chunk))

    def restore(self, entries: list[Entry]) -> None:
        """Put back entries taken by :meth:`pop`, in their original order."""
        for entry in entries:
            heapq.heappush(self._heap, entry)

    def head(self) -> Chunk:
        """The chunk with the earliest deadline (the queue must not be empty)."""
        return self._heap[0][2]

    def pop(self) -> Entry:
        entry = heapq.heappop(self._heap)
        if entry[2].state is ChunkState.DROPPED:
            self._dead -= 1
        return entry

    def rows_due_by(self, deadline: float) -> int:
        """Live queued rows whose deadline is not after ``deadline`` (admission's view
        of the work ahead of a new request)."""
        return sum(c.rows for d, _, c in self._heap if d <= deadline and c.alive)

    def dropped(self, count: int) -> None:
        """``count`` queued chunks were just marked dropped; compact when mostly dead."""
        self._dead += count
        if self._dead > COMPACT_MIN_DEAD and 2 * self._dead > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].alive]
            heapq.heapify(self._heap)
            self._dead = 0

    def clear(self) -> list[Chunk]:
        """Empty the queue; the chunks it held (dead ones included)."""
        chunks = [chunk for _, _, chunk in self._heap]
        self._heap.clear()
        self._dead = 0
        return chunks
