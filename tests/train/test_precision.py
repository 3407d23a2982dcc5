"""FP16/TF32 parity measured on CPU (serving/train/precision.py): the emulations really
change the arithmetic, stay close on the committed ranker, and a model that reduced
precision breaks is marked unsupported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.train.precision import (
    SERVING_TOLERANCE,
    cpu_session,
    fp16_model,
    measure,
    round_tf32,
    tf32_model,
)
from tests.backends.test_onnx_runtime import RANKER, ranker_inputs


def test_tf32_rounding_keeps_ten_mantissa_bits_ties_to_even() -> None:
    one_ulp = np.float32(2.0 ** -10)
    values = np.array([1.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -12,
                       -3.0e-30, 0.0], dtype=np.float32)
    got = round_tf32(values)
    np.testing.assert_array_equal(got[:4], [1.0, 1.0, 1.0 + 2 * one_ulp, 1.0])
    assert got[5] == 0.0
    assert abs(got[4] + 3.0e-30) <= 3.0e-30 * 2.0 ** -10
    assert np.all((round_tf32(np.float32([np.pi])).view(np.uint32) & 0x1FFF) == 0)


def test_emulations_change_the_committed_rankers_scores_a_little() -> None:
    model = onnx.load(str(RANKER))
    inputs = ranker_inputs(500, seed=3)
    want = cpu_session(str(RANKER)).run(["probs"], inputs)[0]
    for emulate in (fp16_model, tf32_model):
        got = cpu_session(emulate(model)).run(["probs"], inputs)[0]
        diff = float(np.abs(got - want).max())
        assert 0.0 < diff < SERVING_TOLERANCE, (emulate.__name__, diff)


def steep_model() -> onnx.ModelProto:
    """``probs = sigmoid(3000 * x @ w)``: reduced-precision rounding of x and w moves the
    logits by whole units, so FP16/TF32 scores are far from FP32's."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Mul", ["m", "k"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["probs"])],
        "steep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("item_to_user", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(3000.0), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_precisions_that_move_scores_are_not_supported(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    batches = [{"x": (rng.normal(size=(60, 16)) * 1e-3).astype(np.float32),
                "item_to_user": np.repeat(np.arange(3), 20).astype(np.int64)}
               for _ in range(2)]
    section = measure(steep_model(), batches, [1.0, 1.0], top_k=(10,))
    for precision in ("fp16", "tf32"):
        entry = section[precision]
        assert entry["max_abs_diff"] > SERVING_TOLERANCE
        assert entry["supported"] is False
    assert section["candidates"] == 120
    assert section["requests"] == 6
    same = measure(steep_model(), batches, [1.0, 1.0], precisions=(), top_k=(10,))
    assert "fp16" not in same
