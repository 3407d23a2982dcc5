"""The batcher: candidate rows of many requests -> batches, earliest deadline first.

Policy (DESIGN.md, "The batcher"):

* A request becomes a :class:`~serving.batching.work.Job`, split into chunks of at most
  ``chunk_rows`` rows; chunks wait in one queue ordered by deadline (``loop.time()`` based).
* The dispatcher first takes a free backend instance (at most ``instances`` batches run at
  once), then builds a batch from the head of the queue and sends it when (a) it reached
  its row target, (b) waiting any longer would make its earliest deadline unreachable given
  the latency model's pessimistic service time for that many rows (less a slack for the
  work after scoring; a batch also stops growing where one more chunk would make one of
  its deadlines unreachable), (c) its oldest row has waited ``max_wait`` (capped at the
  fitted fixed cost per batch), or (d) it holds a chunk of a request whose other chunks run
  (the request cannot finish before this chunk does). While another instance is idle a
  batch takes at most one chunk per request, so large requests run in parallel.
* Limits are in rows, counting every row a batch carries (a request's user rows too, once
  per chunk): past ``max_queue_rows`` a request is refused at once (429). Work whose
  deadline has passed, or cannot be met even if started now (predicted service time), is
  dropped unscored (504). A request whose client went away has its
  queued chunks removed; if its rows are already running, the batch still answers the
  others (every outcome goes through ``set_if_pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping

import numpy as np

from serving.backends.base import Backend
from serving.batching.latency import BucketedLatency, Latency, LatencyModel
from serving.batching.layout import Layout
from serving.batching.policy import BatchPolicy, Slots
from serving.batching.queue import DeadlineQueue, Entry
from serving.batching.work import Chunk, ChunkState, Job, JobResult, set_if_pending
from serving.errors import (
    BackendError,
    DeadlineExceeded,
    Overloaded,
    RankServeError,
    Unavailable,
)
from serving.telemetry import tracing
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

ADMIT_FRACTION = 0.5
"""Admission keeps a request's predicted finish within this fraction of its time left.

Under overload the queue sits at this line: about half a budget of work queued keeps the
backend busy, and the other half absorbs the latency model's error. At 1.0 the queue sits
at the deadline itself and every underestimate becomes a 504 after queueing (measured at
3x capacity, 50 ms budgets: 1,700 of 3,500 requests were 504 at 1.0, 0.3% at 0.5, with
the same accepted rate; loadtests/experiments/overload.py)."""


class Batcher:
    """Queues one model's requests and drives its batches through a backend.

    Open with :meth:`start`, close with :meth:`aclose`; :meth:`submit` is the only call a
    request handler makes.
    """

    def __init__(self, backend: Backend, model: str, layout: Layout, policy: BatchPolicy,
                 metrics: Metrics, slots: Slots, latency: Latency | None = None) -> None:
        self.backend = backend
        self.model = model
        self.layout = layout
        self.policy = policy
        self.metrics = metrics
        self.slots = slots
        # With shape buckets every batch runs padded to a bucket: one estimate per bucket.
        self.latency: Latency = latency or (BucketedLatency(policy.buckets) if policy.buckets
                                            else LatencyModel())
        self.queued_rows = 0
        self._queue = DeadlineQueue()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._running_rows = 0
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatcher task."""
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._dispatch_forever(),
                                                             name=f"batcher-{self.model}")

    async def aclose(self) -> None:
        """Stop taking work, fail what is queued (503), let running batches finish."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for chunk in self._queue.clear():
            set_if_pending(chunk.job.future, error=Unavailable("the server is shutting down"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._closing

    # -- the request side ------------------------------------------------------------------

    async def submit(self, inputs: Mapping[str, np.ndarray], deadline: float) -> JobResult:
        """Score one request's tensors before ``deadline`` (a ``loop.time()`` value).

        Raises:
            BadRequest: the tensors are inconsistent (from the layout, naming the input).
            Overloaded: the queue is full; carries a retry-after estimate.
            DeadlineExceeded: the deadline passed before the rows were scored.
            Unavailable: the batcher is not running.
            BackendError: the backend failed on the batch holding these rows.
        """
        loop = asyncio.get_running_loop()
        rows = self.layout.rows_of(inputs)
        now = loop.time()
        slack = max(self.policy.min_slack_s, self.policy.slack_fraction * (deadline - now))
        job = Job(dict(inputs), rows, deadline, now, loop.create_future(),
                  self.layout.signature(inputs), dispatch_by=deadline - slack,
                  trace=tracing.current())
        mergeable = self.policy.batching and self.layout.splittable
        job.split(min(self.policy.chunk_rows, self.policy.batch_rows) if mergeable else 0)
        cost = sum(self._cost(chunk) for chunk in job.chunks)
        self.admit(cost, deadline)
        job.future.add_done_callback(lambda _: self._drop_queued(job))
        for chunk in job.chunks:
            self._queue.push(chunk)
        self._add_queued(cost)
        self._arrival.set()
        # One timer per request rather than asyncio.wait_for (a task and two callbacks
        # more per request): at the deadline the job fails unless it was answered first.
        # A handler cancelled meanwhile (client gone) cancels the future it awaits.
        timer = loop.call_at(deadline, _time_out, job)
        job.future.add_done_callback(lambda _: timer.cancel())
        result = await job.future
        if tracing.enabled():  # the request's phases the batcher timed, as its child spans
            queued, now = job.enqueued_at + result.queue_s, loop.time()
            tracing.record("queue wait", job.enqueued_at, queued, now)
            tracing.record("backend", queued, queued + result.backend_s, now)
        return result

    def admit(self, rows: int, deadline: float, prep_s: float = 0.0) -> None:
        """Refuse a request that cannot be served, before anyone spends CPU encoding it.

        ``rows`` counts every row its batches will carry: candidate rows, and its user rows
        once per chunk (each batch holding a chunk carries them all; see :meth:`_cost`).

        Its finish time is estimated as now + ``prep_s`` (the caller's own work before it
        submits, e.g. encoding) + the per-row cost of the rows due before it (queued rows
        with an earlier deadline, half of the rows running) and its own rows, spread over
        the backend's instances, + one fixed batch cost + the minimum slack. The estimate
        is trusted only while the latency model is fresh (see ``LatencyModel.fresh``). A
        request that would fit alone but not behind the work ahead (past
        ``ADMIT_FRACTION`` of its time left) is load to shed: 429, not 504.

        Raises:
            Unavailable: the batcher is not running.
            DeadlineExceeded: the deadline passed, or cannot be met even with nothing ahead.
            Overloaded: more than ``max_queue_rows`` rows would be queued, or the work ahead
                would take it past ``ADMIT_FRACTION`` of its time left.
        """
        if not self.accepting:
            raise Unavailable(f"model '{self.model}' is not being served")
        now = asyncio.get_running_loop().time()
        if deadline <= now:
            raise DeadlineExceeded("the request's budget ran out before it was queued")
        if self.queued_rows and self.queued_rows + rows > self.policy.max_queue_rows:
            raise Overloaded(f"{self.queued_rows} rows are queued; try again later",
                             retry_after_s=self._retry_after())
        ahead = self._queue.rows_due_by(deadline)
        fixed, per_row = self.latency.coefficients
        own = prep_s + fixed + self.policy.min_slack_s + per_row * rows / self.slots.total
        estimate = own + per_row * (ahead + self._running_rows / 2) / self.slots.total
        if not self.latency.fresh(now):
            return
        if own > deadline - now:
            raise DeadlineExceeded("the request's budget cannot be met even with nothing "
                                   "queued before it")
        if estimate > max(ADMIT_FRACTION * (deadline - now), own):
            raise Overloaded(f"the request's budget cannot be met: {ahead} rows are due "
                             f"before it; try again later", retry_after_s=self._retry_after())

    def _drop_queued(self, job: Job) -> None:
        """A job was answered, failed or cancelled: its still-queued chunks leave the queue.

        The queue's entries stay until they surface (lazy deletion); the row count, which
        admission control reads, drops now.
        """
        dropped = chunks = 0
        for chunk in job.chunks:
            if chunk.state is ChunkState.QUEUED:
                chunk.state = ChunkState.DROPPED
                dropped += self._cost(chunk)
                chunks += 1
        if dropped:
            self._add_queued(-dropped)
        if chunks:
            self._queue.dropped(chunks)

    def _retry_after(self) -> float:
        drain = self.latency.predict(self.queued_rows) / max(self.slots.total, 1)
        return float(max(1, math.ceil(drain)))

    def _add_queued(self, rows: int) -> None:
        self.queued_rows += rows
        self.metrics.queue_rows.inc(rows)

    def _cost(self, chunk: Chunk) -> int:
        """Rows a batch carries for ``chunk`` alone: its candidate rows and its request's
        user rows (a batch carries those once per request, see :meth:`_batch_cost`)."""
        return chunk.rows + self.layout.user_rows_of(chunk.job.inputs)

    def _batch_cost(self, chunks: list[Chunk]) -> int:
        """Rows a batch of ``chunks`` carries: every candidate row, user rows once per
        request. What queue, batch and latency limits count."""
        return sum(self._batch_shape(chunks))

    def _batch_shape(self, chunks: list[Chunk]) -> tuple[int, int]:
        """(candidate rows, user rows once per request) of a batch of ``chunks``: what the
        latency model prices (and, with buckets, pads)."""
        jobs = {id(c.job): c.job for c in chunks}
        return (sum(c.rows for c in chunks),
                sum(self.layout.user_rows_of(j.inputs) for j in jobs.values()))

    # -- the dispatcher --------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wait_for_work()
            await self.slots.acquire()
            try:
                chunks = await self._collect()
            except BaseException:
                self.slots.release()
                raise
            if not chunks:  # everything queued was cancelled meanwhile
                self.slots.release()
                continue
            self._launch(chunks)

    async def _wait_for_work(self) -> None:
        while True:
            self._expire(asyncio.get_running_loop().time())
            if self._queue:
                return
            self._arrival.clear()
            await self._arrival.wait()

    async def _collect(self) -> list[Chunk]:
        """Wait, holding an instance, until the head of the queue should be dispatched."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._expire(now, doomed=self.latency.fresh(now))
            if not self._queue:
                return []
            entries, full = self._take(now)
            chunks = [chunk for _, _, chunk in entries]
            wake_at = min(min(c.job.dispatch_by for c in chunks)
                          - self.latency.bound(*self._batch_shape(chunks)),
                          min(c.job.enqueued_at for c in chunks) + self._max_wait())
            if full or now >= wake_at or any(c.job.started for c in chunks):
                return chunks
            self._queue.restore(entries)
            self._arrival.clear()
            # A timer that fakes an arrival at wake_at, not asyncio.wait_for (on Python
            # 3.11 a task, a waiter and a timer per wait): either way the loop re-checks.
            timer = loop.call_at(wake_at, self._arrival.set)
            try:
                await self._arrival.wait()
            finally:
                timer.cancel()

    def _max_wait(self) -> float:
        """How long a batch may wait for more rows: ``max_wait``, but never longer than the
        backend's fixed cost per batch.

        Waiting only pays when merging saves a batch's fixed cost (a GPU kernel launch, a
        Triton round trip); on a CPU session whose cost is almost all per row, waiting for
        company adds latency and saves nothing, so a lone request leaves at once. Batches
        still form from whatever queued while every instance was busy.
        """
        fixed, _ = self.latency.coefficients
        return min(self.policy.max_wait_s, max(fixed, 0.0))

    def _take(self, now: float) -> tuple[list[Entry], bool]:
        """Pop the head of the queue up to a batch; ``full`` when it may not grow further.

        A batch stops growing at the row target, past the largest bucket shape (if any),
        at a request it cannot merge with, when
        one more chunk would make one of its deadlines unreachable (by the latency
        model's pessimistic bound), and, while another instance is idle, at a second chunk
        of the same request.
        """
        policy = self.policy
        mergeable = policy.batching and self.layout.splittable
        taken: list[Entry] = []
        candidates = users = 0  # the batch's rows: user rows once per request
        by = math.inf
        while self._queue:
            chunk = self._queue.head()
            if not chunk.alive:
                self._queue.pop()
                continue
            same_job = any(c.job is chunk.job for _, _, c in taken)
            grown = (candidates + chunk.rows,
                     users + (0 if same_job else self.layout.user_rows_of(chunk.job.inputs)))
            if taken and (not mergeable
                          or chunk.job.signature != taken[0][2].job.signature
                          or sum(grown) > policy.batch_rows
                          or now + self.latency.bound(*grown) > min(by, chunk.job.dispatch_by)
                          or (policy.buckets is not None and not policy.buckets.holds(*grown))
                          or (self.slots.free > 0 and same_job)):
                return taken, True
            taken.append(self._queue.pop())
            candidates, users = grown
            by = min(by, chunk.job.dispatch_by)
            if candidates + users >= policy.batch_rows or not mergeable:
                return taken, True
        return taken, False

    def _expire(self, now: float, doomed: bool = False) -> None:
        """Pop dead chunks off the head; fail (unscored) jobs whose deadline has passed or,
        with ``doomed``, cannot be met even by a batch of the head chunk alone started now.

        Failing doomed work at once is what keeps an overloaded server useful: computing
        rows whose answer will arrive too late only makes the rows behind them late too.
        """
        while self._queue:
            chunk = self._queue.head()
            deadline = chunk.deadline
            late = deadline <= now or (doomed and now + self.latency.predict(
                chunk.rows, self.layout.user_rows_of(chunk.job.inputs)) > deadline)
            if chunk.alive and not late:
                return
            self._queue.pop()
            if chunk.alive:
                set_if_pending(chunk.job.future, error=DeadlineExceeded(
                    "the request's budget ran out while it was queued" if deadline <= now
                    else "the request's budget cannot be met: its rows would finish too late"))

    def _launch(self, chunks: list[Chunk]) -> None:
        """Mark the chunks running and start their batch. Synchronous with :meth:`_take`
        (no await in between), so a job cancelled now cannot be counted out twice."""
        loop = asyncio.get_running_loop()
        dispatched = loop.time()
        rows = 0
        for chunk in chunks:
            chunk.state = ChunkState.RUNNING
            rows += chunk.rows
            self._add_queued(-self._cost(chunk))  # as queued: user rows once per chunk
            self.metrics.queue_wait.observe(dispatched - chunk.job.enqueued_at)
        self._running_rows += self._batch_cost(chunks)
        self.metrics.inflight_batches.inc()
        self.metrics.batch_rows.labels(self.model).observe(rows)
        task = loop.create_task(self._run_batch(chunks, dispatched))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_batch(self, chunks: list[Chunk], dispatched: float) -> None:
        """Score one batch, holding its instance. If the backend fails on a batch of
        several requests, each request is retried alone, so one request's bad tensors
        (say, an id past an embedding table) fail only that request."""
        try:
            with tracing.batch_span("batch", (c.job.trace for c in chunks),
                                    {"rankserve.model": self.model}):
                error = await self._score(chunks, dispatched)
            if error is None:
                return
            jobs: dict[int, list[Chunk]] = {}
            for chunk in chunks:
                jobs.setdefault(id(chunk.job), []).append(chunk)
            if not isinstance(error, BackendError) or len(jobs) == 1:
                self._fail(chunks, error)
                return
            log.warning("a batch of %d requests failed; retrying each alone", len(jobs),
                        extra={"model": self.model})
            for group in jobs.values():
                if not group[0].job.future.done():
                    failed = await self._score(group, asyncio.get_running_loop().time())
                    if failed is not None:
                        self._fail(group, failed)
        finally:
            self._running_rows -= self._batch_cost(chunks)
            self.metrics.inflight_batches.dec()
            self.slots.release()

    async def _score(self, chunks: list[Chunk], dispatched: float) -> RankServeError | None:
        """Merge, infer, split and complete the chunks; the error instead, if any."""
        loop = asyncio.get_running_loop()
        rows = sum(c.rows for c in chunks)
        candidates, users = self._batch_shape(chunks)  # what the latency model learns
        try:
            inputs, rows = self.layout.merge(chunks)
            # Padded up to its bucket shape, if any; padded rows are cut off before split.
            inputs, padded = self.layout.pad(inputs, self.policy.buckets)
            timeout = max(c.deadline for c in chunks) - loop.time()
            with tracing.span("backend", {"rankserve.backend": self.backend.name}):
                output = await self.backend.infer(self.model, inputs, timeout)
            elapsed = loop.time() - dispatched
            parts = self.layout.split(self.layout.unpad(output.outputs, padded, rows),
                                      chunks, rows)
        except DeadlineExceeded as e:
            # Cut off, so at least this slow: learning that lower bound keeps the model
            # current and pessimistic exactly when batches run late. Not while the backend
            # reports itself failing (Triton down): that wait measures the outage, and
            # learning it would shed load with 429s after the backend is back.
            if not self.backend.failing():
                now = loop.time()
                self.latency.observe(candidates, now - dispatched, at=now, user_rows=users)
            return e
        except RankServeError as e:
            return e
        except Exception:
            log.exception("backend failed on a batch", extra={"model": self.model,
                                                              "rows": rows})
            return BackendError("the backend failed on this request's batch")
        # Under the backend that ran it: a failed-over batch is the fallback's, not Triton's.
        self.metrics.backend_latency.labels(output.backend or self.backend.name).observe(elapsed)
        if not output.degraded:
            # A fallback's answer timed the failed primary plus another backend: learning
            # it would leave the model pessimistic, and shedding, after the primary is back.
            error = self.latency.observe(candidates, elapsed, at=loop.time(), user_rows=users)
            self.metrics.latency_model_error.labels(self.backend.name).observe(abs(error))
        for chunk, part in zip(chunks, parts, strict=True):
            pending = not chunk.job.future.done()
            chunk.job.complete(chunk, part, output.degraded, dispatched, elapsed, rows)
            if pending and chunk.job.future.done() and chunk.job.degraded:
                self.metrics.degraded_answers.labels(self.model).inc()  # answered degraded
        return None

    @staticmethod
    def _fail(chunks: list[Chunk], error: RankServeError) -> None:
        for chunk in chunks:
            chunk.state = ChunkState.DONE
            set_if_pending(chunk.job.future, error=error)


def _time_out(job: Job) -> None:
    """The job's deadline passed before all its rows were scored."""
    set_if_pending(job.future, error=DeadlineExceeded(
        "the request's budget ran out before its rows were scored"))
