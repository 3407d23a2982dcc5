"""A batch cut off at its deadline holds its instance until the worker thread returns.

Real ONNX Runtime on a one-node MatMul (``tests/backends/slow_model.py``): told to stop,
ONNX Runtime finishes the running node first, so the thread stays busy past the timeout,
as a stuck GPU run would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.errors import DeadlineExceeded
from serving.telemetry.metrics import Metrics
from tests.backends.slow_model import write


async def slow_rows(backend: OnnxRuntimeBackend, at_least_s: float = 0.15) -> int:
    """Rows for which one run of the MatMul takes at least ``at_least_s`` here."""
    rows = 256
    while True:
        started = time.monotonic()
        await backend.infer("slow", {"x": np.ones((rows, 512), np.float32)}, 60.0)
        if time.monotonic() - started >= at_least_s or rows >= 1 << 17:
            return rows
        rows *= 2


@pytest.fixture
async def backend(tmp_path: Path) -> OnnxRuntimeBackend:
    b = OnnxRuntimeBackend({"slow": write(tmp_path)}, instances=1)
    await b.start()
    yield b  # type: ignore[misc]
    await b.aclose()


async def test_infer_returns_only_after_the_cut_off_run_has_returned(
        backend: OnnxRuntimeBackend) -> None:
    rows = await slow_rows(backend)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await backend.infer("slow", {"x": np.ones((rows, 512), np.float32)}, 0.005)
    assert backend.busy_workers == 0  # the thread is back before the caller hears
    assert time.monotonic() - started > 0.05  # the run outlived its 5 ms timeout
    out = await backend.infer("slow", {"x": np.ones((3, 512), np.float32)}, 30.0)
    assert out.outputs["y"].shape == (3, 512)


async def test_cancelling_infer_also_waits_for_the_worker(backend: OnnxRuntimeBackend) -> None:
    rows = await slow_rows(backend)
    task = asyncio.ensure_future(
        backend.infer("slow", {"x": np.ones((rows, 512), np.float32)}, 60.0))
    await asyncio.sleep(0.01)
    assert backend.busy_workers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.busy_workers == 0


async def test_the_batcher_slot_is_held_while_the_worker_runs(
        backend: OnnxRuntimeBackend) -> None:
    rows = await slow_rows(backend)
    slots = Slots(1)
    batcher = Batcher(backend, "slow", CandidateLayout((), ("x",)),
                      BatchPolicy(batch_rows=1 << 18, chunk_rows=1 << 18, max_wait_s=0.0),
                      Metrics(), slots)
    await batcher.start()
    violations = samples = 0
    watching = True

    async def watch() -> None:
        nonlocal violations, samples
        while watching:
            samples += 1
            if backend.busy_workers > slots.busy:  # a thread busy with no slot held
                violations += 1
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    try:
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit({"x": np.ones((rows, 512), np.float32)}, loop.time() + 0.02)
        for _ in range(2000):  # the cut-off run finishing
            if not (backend.busy_workers or slots.busy):
                break
            await asyncio.sleep(0.005)
        small = await batcher.submit({"x": np.ones((2, 512), np.float32)}, loop.time() + 30)
        assert small.outputs["y"].shape == (2, 512)
    finally:
        watching = False
        await watcher
        await batcher.aclose()
    assert samples > 20
    assert violations == 0
