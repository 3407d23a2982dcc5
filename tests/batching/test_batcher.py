"""The batcher against a real ONNX Runtime backend (tiny gather-add model).

The backend is held at a gate where a test needs to control what is running; nothing is
mocked: every batch really runs through ONNX Runtime and outputs are checked row by row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.latency import LatencyModel
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.errors import BackendError, BadRequest, DeadlineExceeded, Overloaded, Unavailable
from serving.telemetry.metrics import Metrics
from tests.batching.pausable import PausableBackend
from tests.batching.tiny_models import EMBEDDING_CONFIG, embedding, gather_add_expected, write_model

LAYOUT = CandidateLayout(("u",), ("x",), "idx")
Factory = Callable[..., Batcher]


def make_inputs(rng: np.random.Generator, users: int, rows: int) -> dict[str, np.ndarray]:
    return {"u": rng.normal(size=(users, 2)).astype(np.float32),
            "x": rng.normal(size=(rows, 2)).astype(np.float32),
            "idx": rng.integers(0, users, size=rows).astype(np.int64)}


def expected(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return gather_add_expected(inputs["u"], inputs["x"], inputs["idx"])


@pytest.fixture
async def make_batcher(ort_backend: PausableBackend) -> AsyncIterator[Factory]:
    batchers: list[Batcher] = []

    async def factory(**policy: object) -> Batcher:
        batcher = Batcher(ort_backend, "gather_add", LAYOUT, BatchPolicy(**policy),  # type: ignore[arg-type]
                          Metrics(), Slots(ort_backend.instances))
        await batcher.start()
        batchers.append(batcher)
        return batcher

    yield factory  # type: ignore[misc]
    for batcher in batchers:
        await batcher.aclose()


def deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_concurrent_jobs_merge_and_each_gets_its_own_rows(
        make_batcher: Factory, ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=64, chunk_rows=16, max_wait_s=0.05)
    rng = np.random.default_rng(0)
    jobs = [make_inputs(rng, int(rng.integers(1, 4)), int(rng.integers(1, 40)))
            for _ in range(40)]
    results = await asyncio.gather(*(batcher.submit(j, deadline(30)) for j in jobs))
    for job, result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], expected(job))
    assert len(ort_backend.calls) < sum(-(-len(j["x"]) // 16) for j in jobs)  # merged
    assert max(len(c["x"]) for c in ort_backend.calls) <= 64
    assert batcher.queued_rows == 0


async def test_user_rows_appear_once_per_batch(make_batcher: Factory,
                                               ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=64, chunk_rows=8, max_wait_s=0.05)
    job = make_inputs(np.random.default_rng(1), 3, 30)
    result = await batcher.submit(job, deadline(30))
    np.testing.assert_array_equal(result.outputs["y"], expected(job))
    # One instance: all four chunks ride in one batch, which holds the 3 user rows once.
    assert [len(c["u"]) for c in ort_backend.calls] == [3]


async def test_earliest_deadline_runs_first(make_batcher: Factory,
                                            ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0)
    rng = np.random.default_rng(2)
    ort_backend.gate.clear()
    first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await ort_backend.until_waiting(1)
    late, early = make_inputs(rng, 1, 4), make_inputs(rng, 1, 4)
    late_task = asyncio.ensure_future(batcher.submit(late, deadline(20)))
    early_task = asyncio.ensure_future(batcher.submit(early, deadline(10)))
    await asyncio.sleep(0.01)
    ort_backend.gate.set()
    await asyncio.gather(first, late_task, early_task)
    assert np.array_equal(ort_backend.calls[1]["x"], early["x"])
    assert np.array_equal(ort_backend.calls[2]["x"], late["x"])


@pytest.mark.parametrize("ort_backend", [2], indirect=True)
async def test_large_request_chunks_run_in_parallel(make_batcher: Factory,
                                                    ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=64, chunk_rows=10, max_wait_s=0.0)
    job = make_inputs(np.random.default_rng(3), 1, 20)
    ort_backend.gate.clear()
    task = asyncio.ensure_future(batcher.submit(job, deadline(30)))
    await ort_backend.until_waiting(2)  # both chunks are running at once
    ort_backend.gate.set()
    result = await task
    assert [len(c["x"]) for c in ort_backend.calls] == [10, 10]
    np.testing.assert_array_equal(result.outputs["y"], expected(job))


async def test_deadline_dispatches_before_max_wait(make_batcher: Factory) -> None:
    # The row target is never reached and max_wait is far away: only the deadline rule
    # can send this batch in time.
    # A large fixed cost per batch lifts the cap on waiting to 30 s, beyond the budget.
    batcher = await make_batcher(batch_rows=10_000, chunk_rows=10_000, max_wait_s=60.0)
    batcher.latency = LatencyModel(fixed_s=30.0)
    job = make_inputs(np.random.default_rng(4), 1, 5)
    result = await batcher.submit(job, deadline(1.0))
    np.testing.assert_array_equal(result.outputs["y"], expected(job))


async def test_lone_request_does_not_wait_when_batches_have_no_fixed_cost(
        make_batcher: Factory) -> None:
    # Merging saves nothing when a batch costs only per row: the request must leave at
    # once, not after max_wait (60 s) or near its deadline (120 s).
    batcher = await make_batcher(batch_rows=10_000, chunk_rows=10_000, max_wait_s=60.0)
    batcher.latency = LatencyModel(fixed_s=0.0, per_row_s=1e-5)
    job = make_inputs(np.random.default_rng(5), 1, 5)
    result = await asyncio.wait_for(batcher.submit(job, deadline(120.0)), 10.0)
    np.testing.assert_array_equal(result.outputs["y"], expected(job))


async def test_expired_work_is_not_computed(make_batcher: Factory,
                                            ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0)
    rng = np.random.default_rng(5)
    ort_backend.gate.clear()
    first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await ort_backend.until_waiting(1)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(make_inputs(rng, 1, 3), deadline(0.05))
    ort_backend.gate.set()
    await first
    await asyncio.sleep(0.01)
    assert [len(c["x"]) for c in ort_backend.calls] == [4]
    assert batcher.queued_rows == 0
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(make_inputs(rng, 1, 3), deadline(-1))


async def test_cancelled_job_leaves_the_queue_unscored(make_batcher: Factory,
                                                       ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0)
    rng = np.random.default_rng(6)
    ort_backend.gate.clear()
    first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await ort_backend.until_waiting(1)
    gone = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 7), deadline(30)))
    await asyncio.sleep(0.01)
    assert batcher.queued_rows == 7 + 2  # its rows, and its user row in each of 2 chunks
    gone.cancel()
    await asyncio.sleep(0.01)
    assert batcher.queued_rows == 0
    ort_backend.gate.set()
    await first
    assert [len(c["x"]) for c in ort_backend.calls] == [4]


async def test_cancel_during_batch_does_not_stop_the_others(make_batcher: Factory,
                                                            ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=64, chunk_rows=64, max_wait_s=0.05)
    rng = np.random.default_rng(7)
    jobs = [make_inputs(rng, 1, n) for n in (3, 5, 7)]
    ort_backend.gate.clear()
    tasks = [asyncio.ensure_future(batcher.submit(j, deadline(30))) for j in jobs]
    await ort_backend.until_waiting(1)
    assert len(ort_backend.calls[0]["x"]) == 15  # all three in the running batch
    tasks[1].cancel()
    await asyncio.sleep(0.01)
    ort_backend.gate.set()
    for job, task in ((jobs[0], tasks[0]), (jobs[2], tasks[2])):
        np.testing.assert_array_equal((await task).outputs["y"], expected(job))
    assert tasks[1].cancelled()
    after = make_inputs(rng, 1, 2)  # the batcher still works
    np.testing.assert_array_equal((await batcher.submit(after, deadline(30))).outputs["y"],
                                  expected(after))


async def test_full_queue_refuses_at_once(make_batcher: Factory,
                                          ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0, max_queue_rows=10)
    rng = np.random.default_rng(8)
    ort_backend.gate.clear()
    first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await ort_backend.until_waiting(1)
    queued = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 8), deadline(30)))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit(make_inputs(rng, 1, 5), deadline(30))
    assert refused.value.retry_after_s >= 1
    assert not ort_backend.gate.is_set()  # refused while the backend was still busy
    ort_backend.gate.set()
    await asyncio.gather(first, queued)


async def test_batching_off_runs_each_request_alone(make_batcher: Factory,
                                                    ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=64, chunk_rows=4, max_wait_s=0.05, batching=False)
    rng = np.random.default_rng(9)
    jobs = [make_inputs(rng, 1, 10) for _ in range(6)]
    results = await asyncio.gather(*(batcher.submit(j, deadline(30)) for j in jobs))
    assert sorted(len(c["x"]) for c in ort_backend.calls) == [10] * 6
    for job, result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], expected(job))


async def test_inconsistent_tensors_are_rejected_naming_the_input(make_batcher: Factory) -> None:
    batcher = await make_batcher()
    job = make_inputs(np.random.default_rng(10), 2, 5)
    job["idx"][0] = 2  # only rows 0 and 1 exist
    with pytest.raises(BadRequest) as bad:
        await batcher.submit(job, deadline(30))
    assert bad.value.field == "idx"


class TruncatingBackend(PausableBackend):
    """Returns one row fewer than it was given: a broken backend."""

    async def infer(self, model: str, inputs: dict[str, np.ndarray],  # type: ignore[override]
                    timeout_s: float) -> object:
        output = await self.inner.infer(model, inputs, timeout_s)
        output.outputs = {k: v[:-1] for k, v in output.outputs.items()}
        return output


async def test_wrong_row_count_from_backend_fails_only_that_batch(
        ort_backend: PausableBackend) -> None:
    broken = TruncatingBackend(ort_backend.inner)
    batcher = Batcher(broken, "gather_add", LAYOUT, BatchPolicy(max_wait_s=0.0), Metrics(),
                      Slots(1))
    await batcher.start()
    try:
        with pytest.raises(BackendError, match="5 rows"):
            await batcher.submit(make_inputs(np.random.default_rng(11), 1, 5), deadline(30))
    finally:
        await batcher.aclose()


async def test_close_fails_queued_work_and_finishes_running(make_batcher: Factory,
                                                            ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0)
    rng = np.random.default_rng(12)
    ort_backend.gate.clear()
    running_job = make_inputs(rng, 1, 4)
    running = asyncio.ensure_future(batcher.submit(running_job, deadline(30)))
    await ort_backend.until_waiting(1)
    queued = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0.01)
    ort_backend.gate.set()
    await closing
    np.testing.assert_array_equal((await running).outputs["y"], expected(running_job))
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await batcher.submit(make_inputs(rng, 1, 1), deadline(30))


async def test_one_poisoned_request_fails_alone(tmp_path: Path) -> None:
    path = write_model(tmp_path, "embedding", embedding(10), EMBEDDING_CONFIG)
    backend = PausableBackend(OnnxRuntimeBackend({"embedding": path}))
    await backend.start()
    batcher = Batcher(backend, "embedding", CandidateLayout((), ("ids",)),
                      BatchPolicy(max_wait_s=0.05), Metrics(), Slots(1))
    await batcher.start()
    try:
        backend.gate.clear()
        jobs = [np.array([1, 2]), np.array([3, 1000]), np.array([9])]  # 1000: no such row
        tasks = [asyncio.ensure_future(batcher.submit({"ids": ids}, deadline(30)))
                 for ids in jobs]
        await backend.until_waiting(1)
        assert len(backend.calls[0]["ids"]) == 5  # all three in one batch
        backend.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], BackendError)
        for ids, result in ((jobs[0], results[0]), (jobs[2], results[2])):
            assert not isinstance(result, BaseException)
            np.testing.assert_array_equal(result.outputs["y"][:, 0], ids * 2)
    finally:
        await batcher.aclose()
        await backend.aclose()


async def slow_batcher(backend: PausableBackend, per_row_s: float,
                       fresh: bool = True) -> Batcher:
    """A batcher whose latency model believes each row costs ``per_row_s`` (and, if
    ``fresh``, has just seen a batch confirm it)."""
    latency = LatencyModel(fixed_s=0.001, per_row_s=per_row_s)
    if fresh:
        latency.observe(4, 0.001 + 4 * per_row_s, at=asyncio.get_running_loop().time())
    batcher = Batcher(backend, "gather_add", LAYOUT,
                      BatchPolicy(batch_rows=4, chunk_rows=4, max_wait_s=0.0), Metrics(),
                      Slots(1), latency)
    await batcher.start()
    return batcher


async def test_unmeetable_deadline_is_refused_before_queueing(
        ort_backend: PausableBackend) -> None:
    batcher = await slow_batcher(ort_backend, per_row_s=0.1)
    rng = np.random.default_rng(13)
    try:
        ort_backend.gate.clear()
        first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
        await ort_backend.until_waiting(1)
        # 40 rows in 10 chunks, each carrying the user row: 50 rows, 5 s of its 11 s.
        ahead = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 40), deadline(11)))
        await asyncio.sleep(0.01)
        # 40 rows due earlier, then 20 own rows, at 0.1 s each: 6 s of 11.5 s is past the
        # admission line behind them (load to shed: 429), though 2 s alone would fit.
        with pytest.raises(Overloaded, match="40 rows are due before it"):
            batcher.admit(20, deadline(11.5))
        with pytest.raises(Overloaded):
            await batcher.submit(make_inputs(rng, 1, 20), deadline(11.5))
        with pytest.raises(DeadlineExceeded, match="nothing queued"):  # alone: 6 s > 5.2 s
            batcher.admit(60, deadline(5.2))
        # the refused request was never queued: 40 rows, and the user row of each chunk
        assert batcher.queued_rows == 40 + 10
        batcher.admit(3, deadline(4))  # due before the 40 rows (EDF): it can make it
        ort_backend.gate.set()
        await asyncio.gather(first, ahead)
        assert sorted(len(c["x"]) for c in ort_backend.calls) == [4] * 11
    finally:
        ort_backend.gate.set()
        await batcher.aclose()


async def test_work_that_would_finish_too_late_is_not_started(
        ort_backend: PausableBackend) -> None:
    # 4 rows at 10 ms each: once 280 ms of the 300 ms budget have gone, they cannot make it
    # (by the model's own estimate; the held batch is an outlier it must not learn whole).
    batcher = await slow_batcher(ort_backend, per_row_s=0.01)
    rng = np.random.default_rng(14)
    try:
        ort_backend.gate.clear()
        first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
        await ort_backend.until_waiting(1)
        late = make_inputs(rng, 1, 4)
        late["x"] = np.full((4, 2), 7.0, dtype=np.float32)
        task = asyncio.ensure_future(batcher.submit(late, deadline(0.3)))
        await asyncio.sleep(0.28)  # the running batch holds the only instance...
        ort_backend.gate.set()     # ...until the waiting rows can no longer make it
        with pytest.raises(DeadlineExceeded):
            await task
        await first
        assert not any((c["x"] == 7.0).all(axis=1).any() for c in ort_backend.calls)
    finally:
        ort_backend.gate.set()
        await batcher.aclose()


async def test_a_wave_of_cancellations_does_not_pin_tensors_in_the_queue(
        make_batcher: Factory, ort_backend: PausableBackend) -> None:
    batcher = await make_batcher(batch_rows=4, chunk_rows=4, max_wait_s=0.0)
    rng = np.random.default_rng(15)
    ort_backend.gate.clear()
    first = asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 4), deadline(30)))
    await ort_backend.until_waiting(1)
    gone = [asyncio.ensure_future(batcher.submit(make_inputs(rng, 1, 8), deadline(30)))
            for _ in range(100)]
    kept = make_inputs(rng, 1, 3)
    stays = asyncio.ensure_future(batcher.submit(kept, deadline(30)))
    await asyncio.sleep(0.01)
    for task in gone:
        task.cancel()
    await asyncio.sleep(0.01)
    assert batcher.queued_rows == 3 + 1  # its rows and its user row
    assert len(batcher._queue) < 100  # compacted, not 200 dead chunks waiting to surface
    ort_backend.gate.set()
    await first
    np.testing.assert_array_equal((await stays).outputs["y"], expected(kept))


async def test_a_stale_pessimistic_model_does_not_refuse_everything(
        ort_backend: PausableBackend) -> None:
    # The model believes 10 s per row but has seen no real batch: predictions must not
    # refuse work, or it would never see one and never learn better.
    batcher = await slow_batcher(ort_backend, per_row_s=10.0, fresh=False)
    try:
        job = make_inputs(np.random.default_rng(16), 1, 4)
        result = await batcher.submit(job, deadline(2.0))
        np.testing.assert_array_equal(result.outputs["y"], expected(job))
        assert batcher.latency.predict(4) < 4.0  # it learned from that batch (was 40 s)
        assert batcher.latency.fresh(asyncio.get_running_loop().time())
    finally:
        await batcher.aclose()
