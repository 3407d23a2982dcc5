"""Metrics that tell the truth about failover: which backend ran a batch, how many answers
were degraded, and what the primary's circuit breaker is doing.

The batcher, the failover backend, the circuit breaker and the fallback (a real embedded
ONNX Runtime backend on a tiny model) are the production classes; only the primary is a
stand-in whose outage the test switches on and off (the real-Triton version of these
checks is in ``tests/triton/test_failover.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serving.backends.base import Backend, BackendOutput
from serving.backends.circuit_breaker import CircuitBreaker
from serving.backends.failover import FailoverBackend
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.errors import Unavailable
from serving.telemetry.metrics import Metrics
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model

MODEL = "gather_add"
LAYOUT = CandidateLayout(("u",), ("x",), "idx")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SwitchablePrimary(Backend):
    """A primary named ``triton`` guarded by a real circuit breaker: while ``down`` every
    call fails as a dead Triton's would; while up it scores on its own ONNX Runtime."""

    name = "triton"

    def __init__(self, scorer: OnnxRuntimeBackend, breaker: CircuitBreaker) -> None:
        self.scorer = scorer
        self.breaker = breaker
        self.down = True

    @property
    def instances(self) -> int:
        return 1

    async def start(self) -> None:
        await self.scorer.start()

    async def aclose(self) -> None:
        await self.scorer.aclose()

    def healthy(self) -> bool:
        return not self.down

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        if not self.breaker.allow():
            raise Unavailable("breaker open")
        if self.down:
            self.breaker.record_failure()
            raise Unavailable("Triton is down")
        output = await self.scorer.infer(model, inputs, timeout_s)
        self.breaker.record_success()
        return BackendOutput(output.outputs)


@dataclass
class Rig:
    metrics: Metrics
    primary: SwitchablePrimary
    clock: Clock
    batcher: Batcher

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def breaker(self) -> dict[str, float]:
        return {state: self.value("rankserve_circuit_breaker_state", backend="triton",
                                  state=state) for state in ("closed", "open", "half_open")}

    async def rank(self, rows: int) -> bool:
        rng = np.random.default_rng(rows)
        inputs = {"u": rng.normal(size=(1, 2)).astype(np.float32),
                  "x": rng.normal(size=(rows, 2)).astype(np.float32),
                  "idx": np.zeros(rows, np.int64)}
        deadline = asyncio.get_running_loop().time() + 30.0
        result = await self.batcher.submit(inputs, deadline)
        assert result.outputs["y"].shape == (rows, 2)
        return result.degraded


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = write_model(tmp_path, MODEL, gather_add(), GATHER_ADD_CONFIG)
    clock = Clock()
    primary = SwitchablePrimary(OnnxRuntimeBackend({MODEL: path}, instances=1),
                                CircuitBreaker(2, 1.0, clock=clock))
    backend = FailoverBackend(primary, OnnxRuntimeBackend({MODEL: path}, instances=1))
    metrics = Metrics()
    backend.bind_metrics(metrics)
    await backend.start()
    batcher = Batcher(backend, MODEL, LAYOUT, BatchPolicy(chunk_rows=2, max_wait_s=0.0),
                      metrics, Slots(1))
    await batcher.start()
    yield Rig(metrics, primary, clock, batcher)
    await batcher.aclose()
    await backend.aclose()


async def test_fallback_batches_are_recorded_under_the_backend_that_ran_them(
        rig: Rig) -> None:
    assert rig.breaker() == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    assert await rig.rank(2)  # the primary fails: the fallback answers, degraded
    assert rig.value("rankserve_backend_latency_seconds_count", backend="onnxruntime") == 1
    assert rig.value("rankserve_backend_latency_seconds_count", backend="triton") == 0
    assert rig.value("rankserve_failover_batches_total", primary="triton",
                     fallback="onnxruntime") == 1
    assert rig.value("rankserve_degraded_answers_total", model=MODEL) == 1

    assert await rig.rank(2)  # the second failure opens the breaker
    assert rig.breaker() == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    # A 5-row request is 3 chunks (on one instance they share a batch): one answer.
    assert await rig.rank(5)
    assert rig.value("rankserve_degraded_answers_total", model=MODEL) == 3
    assert rig.value("rankserve_failover_batches_total", primary="triton",
                     fallback="onnxruntime") == 3
    assert rig.value("rankserve_backend_latency_seconds_count", backend="onnxruntime") == 3

    rig.primary.down = False
    rig.clock.now += 1.5  # the breaker's pause is over: the next call probes, and succeeds
    assert not await rig.rank(2)
    assert rig.breaker() == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    assert rig.value("rankserve_backend_latency_seconds_count", backend="triton") == 1
    assert rig.value("rankserve_backend_latency_seconds_count", backend="onnxruntime") == 3
    assert rig.value("rankserve_degraded_answers_total", model=MODEL) == 3


async def test_half_open_probe_shows_in_the_gauge_and_a_closed_backend_stops_reporting(
        rig: Rig) -> None:
    breaker = rig.primary.breaker
    breaker.record_failure()
    breaker.record_failure()
    assert rig.breaker()["open"] == 1.0
    rig.clock.now += 1.5
    assert breaker.allow()  # the one probe
    assert rig.breaker() == {"closed": 0.0, "open": 0.0, "half_open": 1.0}
    await rig.batcher.backend.aclose()  # an old generation after a reload
    breaker.record_success()
    assert rig.breaker()["half_open"] == 1.0  # the new generation's backend reports now


def test_process_metrics_are_on_the_apps_registry() -> None:
    text = Metrics().render().decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds"):
        assert f"\n{name} " in text, name
