"""TritonBackend against a real tritonserver: parity with ONNX Runtime, shared memory, cards."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc.aio import InferenceServerClient

from serving.backends import shared_memory
from serving.backends.circuit_breaker import BreakerState, CircuitBreaker
from serving.backends.triton import TritonBackend
from serving.errors import BadRequest, ModelCardError
from serving.localtriton.server import SHM_DIR, LocalTriton
from serving.repository.served import served_cards
from serving.repository.tensors import TensorSpec
from tests.triton.conftest import SHM_PREFIX
from tests.triton.toy_repository import random_batch

pytestmark = pytest.mark.triton

MODEL = "feed_ranker"
SIZES = (1, 7, 64, 300, 500, 1000, 2500)


def mixed_batches(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_batch(rng, int(rng.integers(1, 4)), int(rng.choice(SIZES)))
            for _ in range(count)]


@pytest.fixture
def reference(toy_repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(toy_repository / MODEL / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


@pytest.fixture(params=[False, True], ids=["grpc", "shared_memory"])
async def backend(request: pytest.FixtureRequest, triton: LocalTriton,
                  toy_repository: Path) -> AsyncIterator[TritonBackend]:
    backend = TritonBackend(triton.grpc_url, served_cards(toy_repository), ready_model=MODEL,
                            instances=2, shared_memory=request.param, shm_prefix=SHM_PREFIX)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_scores_equal_onnx_runtime_under_100_concurrent_mixed_batches(
        backend: TritonBackend, reference: ort.InferenceSession) -> None:
    assert backend.healthy()
    batches = mixed_batches(seed=7, count=100)
    outputs = await asyncio.gather(*(backend.infer(MODEL, b, 30.0) for b in batches))
    for batch, output in zip(batches, outputs, strict=True):
        assert not output.degraded
        expected = reference.run(["probs"], batch)[0]
        np.testing.assert_allclose(output.outputs["probs"], expected, rtol=1e-6, atol=1e-7)


async def test_shared_memory_regions_are_registered_once_and_reused(
        triton: LocalTriton, toy_repository: Path, reference: ort.InferenceSession) -> None:
    backend = TritonBackend(triton.grpc_url, served_cards(toy_repository), ready_model=MODEL,
                            instances=2, shared_memory=True, shm_prefix=SHM_PREFIX)
    await backend.start()
    pool = backend.pool
    assert pool is not None
    try:
        for batch in mixed_batches(seed=3, count=20):  # sequential: every call gets a slot
            output = await backend.infer(MODEL, batch, 30.0)
            np.testing.assert_allclose(output.outputs["probs"],
                                       reference.run(["probs"], batch)[0], rtol=1e-6)
        names = pool.region_names()
        assert pool.acquired == 20
        assert pool.registrations <= 4
        assert len(names) <= 4
        async with InferenceServerClient(triton.grpc_url) as client:
            status = await client.get_system_shared_memory_status(as_json=True)
        assert set(names) <= set(status.get("regions", {}))
        assert all((SHM_DIR / name).exists() for name in names)
    finally:
        await backend.aclose()
    async with InferenceServerClient(triton.grpc_url) as client:
        status = await client.get_system_shared_memory_status(as_json=True)
    assert not set(names) & set(status.get("regions", {}))
    assert not any((SHM_DIR / name).exists() for name in names)


async def test_refused_registration_falls_back_to_plain_grpc(
        triton: LocalTriton, toy_repository: Path, reference: ort.InferenceSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As when Triton runs on another host: the key it is given does not exist on its side.
    monkeypatch.setattr(shared_memory.Region, "key", property(lambda r: f"/{r.name}-elsewhere"))
    backend = TritonBackend(triton.grpc_url, served_cards(toy_repository), ready_model=MODEL,
                            shared_memory=True, shm_prefix=SHM_PREFIX)
    await backend.start()
    try:
        batch = mixed_batches(seed=5, count=1)[0]
        output = await backend.infer(MODEL, batch, 30.0)
        np.testing.assert_allclose(output.outputs["probs"], reference.run(["probs"], batch)[0],
                                   rtol=1e-6)
        assert backend.pool is not None
        assert not backend.pool.enabled
        assert "register" in (backend.pool.disabled_reason or "")
        assert backend.pool.region_names() == []
    finally:
        await backend.aclose()


async def test_card_mismatch_refuses_to_start_and_says_why(
        triton: LocalTriton, toy_repository: Path) -> None:
    card = served_cards(toy_repository)[MODEL]
    inputs = [TensorSpec(t.name, "FP64", t.shape) if t.name == "item_num" else t
              for t in card.inputs]
    wrong = dataclasses.replace(card, inputs=inputs)
    backend = TritonBackend(triton.grpc_url, {MODEL: wrong}, ready_model=MODEL)
    with pytest.raises(ModelCardError) as info:
        await backend.start()
    assert "item_num" in info.value.message
    assert "FP64" in info.value.message
    assert not backend.healthy()


async def test_an_input_the_model_lacks_is_a_bad_request(backend: TritonBackend) -> None:
    batch = mixed_batches(seed=1, count=1)[0]
    batch["item_num"] = batch["item_num"].astype(np.float64)
    with pytest.raises(BadRequest) as info:
        await backend.infer(MODEL, batch, 5.0)
    assert info.value.field == "item_num"
    assert backend.healthy()  # the caller's mistake does not count against Triton


async def test_an_idle_open_breaker_is_closed_by_the_readiness_poll(
        triton: LocalTriton, toy_repository: Path) -> None:
    backend = TritonBackend(triton.grpc_url, served_cards(toy_repository), ready_model=MODEL,
                            breaker=CircuitBreaker(failures=1, reset_s=0.2),
                            poll_interval_s=0.05)
    await backend.start()
    try:
        backend.breaker.record_failure()  # as after a burst of failures, then no traffic
        assert not backend.healthy()
        for _ in range(100):
            if backend.healthy():
                break
            await asyncio.sleep(0.02)
        assert backend.healthy()
        assert backend.breaker.state is BreakerState.CLOSED
    finally:
        await backend.aclose()
