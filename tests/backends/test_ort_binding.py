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


def test_inputs_live_packed_in_one_device_buffer_per_shape() -> None:
    """One host-to-device copy per batch: every input is bound at its offset inside the
    shape's one device buffer, whose bytes are the packed inputs after a run."""
    runner = BoundRunner(session(RANKER))
    inputs = ranker_inputs(37, seed=5)
    runner.run(inputs)
    (bound,) = runner._bound.values()
    start, size = bound.device.data_ptr(), bound.device.shape()[0]
    packed = bound.device.numpy()
    for name, value in inputs.items():
        view = bound.views[name]
        offset = view.ctypes.data - bound.host.ctypes.data
        assert offset % 256 == 0
        assert start <= start + offset < start + size
        got = packed[offset:offset + value.nbytes].view(value.dtype).reshape(value.shape)
        np.testing.assert_array_equal(got, value)
    assert not runner.pinned  # CPU: nothing to page-lock


def test_each_bucket_shape_gets_its_own_fixed_graph_id() -> None:
    reference, runner = session(RANKER), BoundRunner(session(RANKER), shapes=2, graphs=True)
    names = [o.name for o in reference.get_outputs()]
    seen: dict[int, int] = {}
    for i, rows in enumerate([64, 128, 64, 128, 64]):
        inputs = ranker_inputs(rows, seed=i)
        got = runner.run(inputs)  # CPU ignores the graph id: answers are session.run's
        for name, want in zip(names, reference.run(names, inputs), strict=True):
            np.testing.assert_array_equal(got[name], want)
        ids = {k[2][1][0]: g for k, g in runner.graph_ids().items()}  # item_id rows -> id
        for r, g in ids.items():
            assert seen.setdefault(r, g) == g  # the same shape replays the same graph
    assert sorted(seen.values()) == [0, 1]
    runner.run(ranker_inputs(256))  # a third shape: graph ids are never reused
    assert runner.graph_ids()[max(runner.graph_ids(), key=lambda k: k[2][1][0])] == -1
