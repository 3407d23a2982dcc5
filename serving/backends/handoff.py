"""Worker threads that take a batch from the event loop and hand its outcome back cheaply.

``loop.run_in_executor`` costs, per call, a ``concurrent.futures.Future``, its chaining
into an asyncio future (callbacks and state copies on both sides) and the executor's own
bookkeeping; ``asyncio.wait_for(asyncio.shield(...))`` on top adds a shield future, a
waiter and, on Python 3.11, a task. On a CPU-bound gateway that is paid once per batch
out of a budget of a few hundred microseconds. Here a call is one item on a
``queue.SimpleQueue`` that a dedicated thread takes, and its outcome is one
``loop.call_soon_threadsafe`` that resolves a plain asyncio future (one wake-up of the
loop per batch, the least a thread hand-off can cost).

A call's future can be cancelled by its awaiting task while the thread still runs it;
:meth:`Call.returned` then waits for the thread itself, so a caller holding an instance
slot keeps it until the instance is really free.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None


class Call:
    """One function call queued for a worker thread; ``future`` gets its outcome."""

    __slots__ = ("_waiter", "args", "done", "fn", "future", "loop")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.done = False
        """Whether the thread has returned from ``fn`` (read and written on the loop)."""
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """On the loop: the thread returned; resolve the future unless it was cancelled."""
        self.done = True
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def returned(self) -> None:
        """Wait until the thread has returned from the call, whatever happens meanwhile:
        a cancellation of this wait is re-raised only once the thread is back."""
        if self.done:
            return
        if self._waiter is None:
            self._waiter = self.loop.create_future()
        cancelled = False
        while not self._waiter.done():
            try:
                await asyncio.shield(self._waiter)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


class WorkerThreads:
    """``count`` daemon threads serving one queue of :class:`Call` s.

    Open with :meth:`start`, close with :meth:`aclose` (queued calls still run first).
    """

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.busy = 0
        """Calls submitted whose thread has not returned yet (counted on the loop)."""

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._serve, name=f"{self._name}-{i}",
                                          daemon=True) for i in range(self._count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Call:
        """Queue ``fn(*args)`` for the next free thread (call on the event loop).

        Raises:
            RuntimeError: the threads are not running.
        """
        if not self._threads:
            raise RuntimeError(f"worker threads {self._name} are not running")
        call = Call(fn, args, asyncio.get_running_loop())
        self.busy += 1
        self._queue.put(call)
        return call

    def _serve(self) -> None:
        while (call := self._queue.get()) is not _STOP:
            try:
                result, error = call.fn(*call.args), None
            except BaseException as e:  # handed to the awaiting caller
                result, error = None, e
            # A closed loop raises RuntimeError: nobody waits for this call any more.
            with contextlib.suppress(RuntimeError):
                call.loop.call_soon_threadsafe(self._returned, call, result, error)

    def _returned(self, call: Call, result: Any, error: BaseException | None) -> None:
        self.busy -= 1
        call.deliver(result, error)

    async def aclose(self) -> None:
        """Let queued calls finish, stop the threads and wait for them to exit."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        if threads:
            await asyncio.get_running_loop().run_in_executor(None, _join, threads)


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()
