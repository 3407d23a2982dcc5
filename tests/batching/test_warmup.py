"""Warm-up repeats until stable and never teaches the latency model; slow first runs
(an engine build per new shape) do not turn into 504s afterwards.

Real ONNX Runtime on the tiny gather-add model; the first run of every new batch shape
is made slow by a wrapper, as TensorRT's engine build makes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from serving.backends.base import BackendOutput
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout
from serving.batching.policy import WARMUP_ROWS, BatchPolicy, Slots
from serving.repository.served import load_model
from serving.rollout.generation import _warm_up, stable
from serving.telemetry.metrics import Metrics
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model
from tests.wrapped_backend import WrappedBackend

LAYOUT = CandidateLayout(("u",), ("x",), "idx")
BUILD_S = 0.4


class SlowFirstShapes(WrappedBackend):
    """The first run of each new candidate-row count sleeps ``BUILD_S`` before computing."""

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        super().__init__(inner)
        self.seen: dict[int, int] = {}

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        rows = len(inputs["x"])
        self.seen[rows] = self.seen.get(rows, 0) + 1
        if self.seen[rows] == 1:
            await asyncio.sleep(BUILD_S)
        return await self.inner.infer(model, inputs, timeout_s)


def test_stable_needs_a_settled_window_after_the_first_run() -> None:
    assert not stable([0.5], 2)
    assert not stable([0.5, 0.001], 2)
    assert stable([0.5, 0.001, 0.0011], 2)
    assert not stable([0.5, 0.001, 0.0011, 0.01], 2)
    assert stable([0.5, 0.001, 0.0011, 0.001], 3)


@pytest.mark.parametrize("instances", [1, 2])
async def test_warm_up_never_teaches_and_slow_first_runs_cause_no_504(
        tmp_path: Path, instances: int) -> None:
    write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)
    model = load_model(tmp_path / "gather_add")
    backend = SlowFirstShapes(OnnxRuntimeBackend({"gather_add": model.onnx_path},
                                                 instances=instances))
    await backend.start()
    batcher = Batcher(backend, "gather_add", LAYOUT,
                      BatchPolicy(batch_rows=256, chunk_rows=256, max_wait_s=0.0),
                      Metrics(), Slots(instances))
    prior = batcher.latency.coefficients
    try:
        await _warm_up(backend, batcher, model)
        warmed = [r for r in WARMUP_ROWS if r <= 256]
        assert sorted(backend.seen) == warmed
        assert all(backend.seen[r] >= max(2, instances) + 1 for r in warmed)
        assert batcher.latency.coefficients == prior  # taught nothing
        loop = asyncio.get_running_loop()
        assert not batcher.latency.fresh(loop.time())
        await batcher.start()
        rng = np.random.default_rng(0)

        async def request(rows: int, budget_s: float) -> None:
            inputs = {"u": rng.normal(size=(1, 2)).astype(np.float32),
                      "x": rng.normal(size=(rows, 2)).astype(np.float32),
                      "idx": np.zeros(rows, dtype=np.int64)}
            result = await batcher.submit(inputs, loop.time() + budget_s)
            np.testing.assert_array_equal(result.outputs["y"], inputs["x"] + inputs["u"][0])

        await request(7, 5.0)  # a shape warm-up never saw: its first run is a slow build
        for _ in range(30):  # then 50 ms budgets, each one served, none refused with 504
            await request(7, 0.05)
        assert batcher.latency.predict(7) < 0.05
    finally:
        await batcher.aclose()
        await backend.aclose()


async def test_warm_up_runs_every_bucket_shape_and_teaches_nothing(tmp_path: Path) -> None:
    from serving.batching.buckets import Buckets

    write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)
    model = load_model(tmp_path / "gather_add")
    backend = SlowFirstShapes(OnnxRuntimeBackend({"gather_add": model.onnx_path}))
    await backend.start()
    buckets = Buckets((64, 256), (1, 4))
    batcher = Batcher(backend, "gather_add", LAYOUT,
                      BatchPolicy(batch_rows=256, chunk_rows=256, max_wait_s=0.0,
                                  buckets=buckets), Metrics(), Slots(1))
    try:
        await _warm_up(backend, batcher, model)
        assert sorted(backend.seen) == [64, 256]  # candidate rows of every bucket shape
        assert all(n >= 3 for n in backend.seen.values())  # repeated until stable
        assert batcher.latency.estimates() == {}  # taught nothing
        await batcher.start()
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(1)
        for rows in (5, 100, 7, 200):  # every bucket warm: no slow first run, no 504
            inputs = {"u": rng.normal(size=(1, 2)).astype(np.float32),
                      "x": rng.normal(size=(rows, 2)).astype(np.float32),
                      "idx": np.zeros(rows, dtype=np.int64)}
            result = await batcher.submit(inputs, loop.time() + 0.3)
            np.testing.assert_array_equal(result.outputs["y"], inputs["x"] + inputs["u"][0])
    finally:
        await batcher.aclose()
        await backend.aclose()
