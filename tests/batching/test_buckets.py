"""Shape buckets: padded batches answer exactly what unpadded ones do, padded rows never
reach an answer, the backend only ever sees bucket shapes, and the latency model keeps
one estimate per bucket (a slow first run of a bucket causes no 504 afterwards).

Real ONNX Runtime on the tiny gather-add model (``y = x + u[idx]``: a wrong re-indexing or
a leaked padded row changes outputs); the recording wrapper only looks at shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.backends.base import BackendOutput
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.buckets import Buckets
from serving.batching.latency import BucketedLatency
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.batching.work import Job
from serving.settings import Settings
from serving.telemetry.metrics import Metrics
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model
from tests.wrapped_backend import WrappedBackend

LAYOUT = CandidateLayout(("u",), ("x",), "idx")
BUCKETS = Buckets((8, 32, 64), (1, 2, 4, 8))


class Recording(WrappedBackend):
    """Records each batch's (candidate rows, user rows); the first run of every new shape
    sleeps ``first_run_s`` first, as an engine build or graph capture would."""

    def __init__(self, inner: OnnxRuntimeBackend, first_run_s: float = 0.0) -> None:
        super().__init__(inner)
        self.shapes: list[tuple[int, int]] = []
        self.first_run_s = first_run_s

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        shape = (len(inputs["x"]), len(inputs["u"]))
        if self.first_run_s and shape not in self.shapes:
            await asyncio.sleep(self.first_run_s)
        self.shapes.append(shape)
        return await self.inner.infer(model, inputs, timeout_s)


def request(rng: np.random.Generator, users: int, rows: int) -> dict[str, np.ndarray]:
    return {"u": rng.normal(size=(users, 2)).astype(np.float32),
            "x": rng.normal(size=(rows, 2)).astype(np.float32),
            "idx": rng.integers(0, users, rows).astype(np.int64)}


async def serve_all(path: Path, mix: list[tuple[int, int]], seed: int,
                    buckets: Buckets | None, io_binding: str = "off"
                    ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Every request of ``mix`` submitted at once; their outputs and the batch shapes."""
    backend = Recording(OnnxRuntimeBackend({"m": path}, instances=2, io_binding=io_binding))
    await backend.start()
    policy = BatchPolicy(batch_rows=64, chunk_rows=16, max_wait_s=0.002, buckets=buckets)
    batcher = Batcher(backend, "m", LAYOUT, policy, Metrics(), Slots(2))
    await batcher.start()
    try:
        rng = np.random.default_rng(seed)
        loop = asyncio.get_running_loop()
        inputs = [request(rng, u, n) for u, n in mix]
        results = await asyncio.gather(*(batcher.submit(i, loop.time() + 30.0) for i in inputs))
        for i, r in zip(inputs, results, strict=True):
            assert r.outputs["y"].shape == i["x"].shape  # exactly its rows, none padded
        return [r.outputs["y"] for r in results], backend.shapes
    finally:
        await batcher.aclose()
        await backend.aclose()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("repo"), "m", gather_add(), GATHER_ADD_CONFIG)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 40)), min_size=1,
                    max_size=8), seed=st.integers(0, 2**16))
def test_bucketed_answers_equal_unpadded_ones_and_only_bucket_shapes_run(
        model_path: Path, mix: list[tuple[int, int]], seed: int) -> None:
    # Padded batches through bound, packed buffers per bucket; plain ones through run().
    padded, shapes = asyncio.run(serve_all(model_path, mix, seed, BUCKETS, io_binding="on"))
    plain, _ = asyncio.run(serve_all(model_path, mix, seed, None))
    rng = np.random.default_rng(seed)
    for got, want, (u, n) in zip(padded, plain, mix, strict=True):
        inputs = request(rng, u, n)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, inputs["x"] + inputs["u"][inputs["idx"]])
    assert shapes
    assert all(BUCKETS.fixed(n, r) and (n, r) == BUCKETS.pad(n, r) for n, r in shapes), shapes


def test_padded_rows_never_reach_an_answer() -> None:
    loop = asyncio.new_event_loop()
    try:
        rng = np.random.default_rng(3)
        jobs = [Job(request(rng, 1, n), n, 0.0, 0.0, loop.create_future()) for n in (5, 6)]
    finally:
        loop.close()
    for job in jobs:
        job.split(0)
    chunks = [job.chunks[0] for job in jobs]
    merged, rows = LAYOUT.merge(chunks)
    padded, padded_rows = LAYOUT.pad(merged, BUCKETS)
    assert (rows, padded_rows) == (11, 32)
    assert padded["u"].shape == (2, 2)
    assert padded["idx"].shape == (32,)
    assert not np.shares_memory(padded["x"], merged["x"])  # requests' tensors untouched
    y = padded["x"] + padded["u"][padded["idx"]]
    y[rows:] = np.nan  # whatever the model makes of padded rows
    parts = LAYOUT.split(LAYOUT.unpad({"y": y}, padded_rows, rows), chunks, rows)
    for job, part in zip(jobs, parts, strict=True):
        assert part["y"].shape == (job.rows, 2)
        assert not np.isnan(part["y"]).any()


def test_batches_past_the_largest_bucket_run_at_their_own_shape() -> None:
    assert BUCKETS.pad(65, 9) == (65, 9)
    assert not BUCKETS.fixed(65, 1)
    assert BUCKETS.pad(9, 3) == (32, 4)
    assert BUCKETS.fixed(9, 3)


def test_the_latency_model_keeps_one_estimate_per_bucket() -> None:
    latency = BucketedLatency(Buckets((1024, 8192), (1, 4)))
    for _ in range(60):  # a staircase: no line fits both buckets
        latency.observe(700, 0.004, user_rows=1)
        latency.observe(5000, 0.005, user_rows=3)
    assert latency.predict(1000, 1) == pytest.approx(0.004, rel=0.05)
    assert latency.predict(300, 1) == latency.predict(1024, 1)  # one bucket, one estimate
    assert latency.predict(8000, 2) == pytest.approx(0.005, rel=0.05)
    assert set(latency.estimates()) == {(1024, 1), (8192, 4)}
    # A bucket never seen is priced by the linear model at its padded size.
    assert latency.predict(100, 3) == latency.linear.predict(1024, 4)


def test_one_slow_first_run_of_a_bucket_does_not_poison_its_estimate() -> None:
    latency = BucketedLatency(Buckets((1024,), (1,)))
    latency.observe(1000, 0.002, user_rows=1)
    latency.observe(1000, 10.0, user_rows=1)  # an engine build
    assert latency.bound(1000, 1) < 0.05
    for _ in range(10):
        latency.observe(1000, 0.002, user_rows=1)
    assert latency.predict(1000, 1) < 0.004


async def test_a_slow_first_run_per_bucket_causes_no_504_afterwards(model_path: Path) -> None:
    backend = Recording(OnnxRuntimeBackend({"m": model_path}), first_run_s=0.4)
    await backend.start()
    policy = BatchPolicy(batch_rows=64, chunk_rows=64, max_wait_s=0.0, buckets=BUCKETS)
    batcher = Batcher(backend, "m", LAYOUT, policy, Metrics(), Slots(1))
    await batcher.start()
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)
    try:
        for rows in (5, 20, 50):  # each bucket's first batch is slow (no warm-up here)
            await batcher.submit(request(rng, 1, rows), loop.time() + 5.0)
        for i in range(60):  # then 50 ms budgets in every bucket: each one served
            result = await batcher.submit(request(rng, 1, (3, 17, 40)[i % 3]),
                                          loop.time() + 0.05)
            assert not result.degraded
        assert all(latency < 0.05 for latency in batcher.latency.estimates().values())
    finally:
        await batcher.aclose()
        await backend.aclose()


def test_settings_profiles_and_bucket_checks() -> None:
    gpu = Settings.load(None, profile="gpu", instances=3)
    assert (gpu.batch_rows, gpu.instances, gpu.io_binding, gpu.cuda_graphs) == \
        (8192, 3, "on", True)  # what is given beats the profile
    policy = BatchPolicy.from_settings(gpu)
    assert policy.buckets is not None
    assert max(policy.buckets.rows) >= policy.batch_rows
    assert all(policy.buckets.fixed(n, r) for n, r in policy.warmup_shapes())
    assert BatchPolicy.from_settings(Settings.load(None)).buckets is None  # CPU: off
    with pytest.raises(ValueError, match="largest bucket"):
        Settings.load(None, buckets="256,512", batch_rows=1024)
    with pytest.raises(ValueError, match="cuda_graphs needs buckets"):
        Settings.load(None, cuda_graphs=True)
