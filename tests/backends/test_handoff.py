"""The hand-off to ONNX Runtime's worker threads answers every request of a batch.

Real ONNX Runtime on a one-node MatMul (``tests/backends/slow_model.py``) behind the real
batcher: a batch of four requests is cancelled into while its rows are inside the worker
thread; the other three get their own rows, the cancelled one stays cancelled, the
instance is free afterwards and the next request is answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from serving.backends.handoff import Call, WorkerThreads
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.telemetry.metrics import Metrics
from tests.backends.slow_model import matmul, write
from tests.backends.test_slot_held import slow_rows


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[OnnxRuntimeBackend]:
    b = OnnxRuntimeBackend({"slow": write(tmp_path)}, instances=1)
    await b.start()
    yield b
    await b.aclose()


def expected(x: np.ndarray) -> np.ndarray:
    weight = next(iter(matmul().graph.initializer))
    w = np.frombuffer(weight.raw_data, dtype=np.float32).reshape(tuple(weight.dims))
    return x @ w


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def test_a_batch_answers_every_request_when_one_is_cancelled_inside_ort(
        backend: OnnxRuntimeBackend) -> None:
    rows = await slow_rows(backend, at_least_s=0.1)
    slots = Slots(1)
    batcher = Batcher(backend, "slow", CandidateLayout((), ("x",)),
                      BatchPolicy(batch_rows=1 << 20, chunk_rows=1 << 20, max_wait_s=0.0),
                      Metrics(), slots)
    await batcher.start()
    rng = np.random.default_rng(3)
    loop = asyncio.get_running_loop()
    try:
        first = asyncio.ensure_future(batcher.submit(
            {"x": np.ones((rows, 512), np.float32)}, loop.time() + 60))
        await until(lambda: backend.busy_workers == 1)  # the first batch is in ORT
        jobs = [rng.normal(size=(rows // 4 + i, 512)).astype(np.float32) for i in range(4)]
        tasks = [asyncio.ensure_future(batcher.submit({"x": x}, loop.time() + 60))
                 for x in jobs]
        await asyncio.sleep(0.01)  # all four queued behind the running batch
        await first
        # The four merge into one batch; cancel one while its rows are in the worker thread.
        await until(lambda: backend.busy_workers == 1)
        assert not any(t.done() for t in tasks)
        tasks[2].cancel()
        for x, task in ((jobs[0], tasks[0]), (jobs[1], tasks[1]), (jobs[3], tasks[3])):
            result = await asyncio.wait_for(task, 30)  # fails, not hangs, if lost
            np.testing.assert_allclose(result.outputs["y"], expected(x), rtol=1e-4, atol=1e-4)
            assert result.batch_rows == sum(len(j) for j in jobs)  # one batch of all four
        assert tasks[2].cancelled()
        await until(lambda: backend.busy_workers == 0 and slots.busy == 0)
        after = rng.normal(size=(3, 512)).astype(np.float32)
        answer = await batcher.submit({"x": after}, loop.time() + 30)
        np.testing.assert_allclose(answer.outputs["y"], expected(after), rtol=1e-4, atol=1e-4)
    finally:
        await batcher.aclose()


async def test_worker_threads_hand_back_results_errors_and_wait_when_cancelled() -> None:
    threads = WorkerThreads(2, "test")
    threads.start()
    try:
        assert await threads.submit(sum, [1, 2, 3]).future == 6
        with pytest.raises(ZeroDivisionError):
            await threads.submit(divmod, 1, 0).future
        release = asyncio.Event()
        gate = threading.Event()
        call = threads.submit(gate.wait, 30.0)
        waiter = asyncio.ensure_future(_cancel_then_wait(call, release))
        await asyncio.sleep(0.01)
        assert threads.busy == 1
        assert not waiter.done()
        release.set()
        await asyncio.sleep(0.05)
        assert not waiter.done()  # cancelled, but the thread has not returned yet
        gate.set()
        await waiter
        assert threads.busy == 0
        assert call.done
        assert call.future.cancelled()
    finally:
        await threads.aclose()
    with pytest.raises(RuntimeError):
        threads.submit(sum, [1])


async def _cancel_then_wait(call: Call, release: asyncio.Event) -> None:
    await release.wait()
    call.future.cancel()
    await call.returned()
