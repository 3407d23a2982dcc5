"""Bound I/O with reused buffers gives exactly what ``session.run`` gives, on CPU OrtValues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.backends.ort_binding import BoundRunner
from tests.backends.test_onnx_runtime import RANKER, ranker_inputs
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bound_runs_equal_session_run_across_shapes_and_reuse() -> None:
    reference, bound = session(RANKER), BoundRunner(session(RANKER), shapes=2)
    names = [o.name for o in reference.get_outputs()]
    kept = []
    for i, rows in enumerate([300, 7, 300, 1, 7, 300, 300]):  # shapes come back, evicted
        inputs = ranker_inputs(rows, seed=i)
        got = bound.run(inputs)
        want = dict(zip(names, reference.run(names, inputs), strict=True))
        assert set(got) == set(want)
        for name in names:
            np.testing.assert_array_equal(got[name], want[name])
        kept.append((got, want))
        assert bound.cached_shapes <= 2
    for got, want in kept:  # earlier answers are not views of buffers reused since
        for name in names:
            np.testing.assert_array_equal(got[name], want[name])


def test_bound_runs_of_a_gathering_model(tmp_path: Path) -> None:
    path = write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)
    bound = BoundRunner(session(path))
    rng = np.random.default_rng(1)
    for _ in range(5):
        u = rng.normal(size=(3, 2)).astype(np.float32)
        x = rng.normal(size=(11, 2)).astype(np.float32)
        idx = rng.integers(0, 3, 11).astype(np.int64)
        np.testing.assert_array_equal(bound.run({"u": u, "x": x, "idx": idx})["y"], x + u[idx])
    assert bound.cached_shapes == 1


async def test_the_backend_serves_through_bound_io_when_asked() -> None:
    bound = OnnxRuntimeBackend({"feed_ranker": RANKER}, instances=2, io_binding="on")
    plain = OnnxRuntimeBackend({"feed_ranker": RANKER}, io_binding="off")
    await bound.start()
    await plain.start()
    try:
        for rows in (5, 400, 5):
            inputs = ranker_inputs(rows, seed=rows)
            a = await bound.infer("feed_ranker", inputs, 30.0)
            b = await plain.infer("feed_ranker", inputs, 30.0)
            np.testing.assert_array_equal(a.outputs["probs"], b.outputs["probs"])
    finally:
        await bound.aclose()
        await plain.aclose()
