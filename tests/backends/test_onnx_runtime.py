"""The embedded ONNX Runtime backend: real sessions on the committed ranker and a tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serving.backends.onnx_runtime import OnnxRuntimeBackend, choose_providers
from serving.errors import BackendError, DeadlineExceeded, ModelCardError
from serving.ranking.features import ITEM_NUMERIC, MODEL_INPUTS, USER_NUMERIC
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model

RANKER = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker" / "1" / \
    "model.onnx"


def ranker_inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(0, 100, 1), "user_cat": rng.integers(0, 3, (1, 27)),
        "user_num": rng.normal(size=(1, len(USER_NUMERIC))).astype(np.float32),
        "history": rng.integers(0, 100, (1, 20)), "item_id": rng.integers(0, 100, rows),
        "item_cat": rng.integers(0, 3, (rows, 6)),
        "item_num": rng.normal(size=(rows, len(ITEM_NUMERIC))).astype(np.float32),
        "item_to_user": np.zeros(rows, dtype=np.int64)}


async def test_outputs_equal_a_direct_session() -> None:
    backend = OnnxRuntimeBackend({"feed_ranker": RANKER}, instances=2)
    await backend.start()
    try:
        assert backend.healthy()
        inputs = ranker_inputs(300)
        assert set(inputs) == set(MODEL_INPUTS)
        output = await backend.infer("feed_ranker", inputs, 30.0)
        direct = ort.InferenceSession(str(RANKER), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(output.outputs["probs"], direct.run(["probs"], inputs)[0],
                                   rtol=0, atol=1e-6)
        assert output.degraded is False
        assert backend.providers("feed_ranker") == ["CPUExecutionProvider"]
    finally:
        await backend.aclose()
    assert not backend.healthy()


async def test_event_loop_keeps_running_during_a_batch() -> None:
    backend = OnnxRuntimeBackend({"feed_ranker": RANKER})
    await backend.start()
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0)

    try:
        task = asyncio.ensure_future(ticker())
        await backend.infer("feed_ranker", ranker_inputs(4000), 60.0)
        running = False
        await task
    finally:
        await backend.aclose()
    assert ticks > 10  # the loop ran other work while ONNX Runtime computed


async def test_timeout_stops_the_run_and_the_backend_recovers() -> None:
    backend = OnnxRuntimeBackend({"feed_ranker": RANKER})
    await backend.start()
    try:
        with pytest.raises(DeadlineExceeded):
            await backend.infer("feed_ranker", ranker_inputs(20_000), 0.001)
        output = await backend.infer("feed_ranker", ranker_inputs(10), 30.0)
        assert output.outputs["probs"].shape[0] == 10
    finally:
        await backend.aclose()


async def test_bad_batches_and_unknown_models_are_backend_errors(tmp_path: Path) -> None:
    path = write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)
    backend = OnnxRuntimeBackend({"gather_add": path})
    await backend.start()
    try:
        with pytest.raises(BackendError, match="not loaded"):
            await backend.infer("nope", {}, 1.0)
        with pytest.raises(BackendError):
            await backend.infer("gather_add", {"u": np.zeros((1, 2), np.float32)}, 1.0)
    finally:
        await backend.aclose()


async def test_unloadable_model_fails_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx file")
    backend = OnnxRuntimeBackend({"broken": broken})
    with pytest.raises(ModelCardError, match="broken"):
        await backend.start()
    await backend.aclose()


def test_unavailable_providers_are_left_out_in_order() -> None:
    # The warning for each one left out, with its reason, comes once the sessions exist:
    # tests/backends/test_ort_providers.py.
    chosen = choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                               "CPUExecutionProvider"])
    available = set(ort.get_available_providers())
    assert chosen == [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                  "CPUExecutionProvider") if p in available]
    assert choose_providers(["CUDAExecutionProvider"])[-1] == "CPUExecutionProvider"
