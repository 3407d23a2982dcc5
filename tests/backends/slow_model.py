"""A model whose one node runs long: ``y = x @ W`` with ``x [N, K]``, ``W [K, K]``.

ONNX Runtime checks ``RunOptions.terminate`` between nodes only, so a run of this
one-node graph that is told to stop keeps its worker thread busy until the MatMul ends:
what a stuck GPU run looks like to the backend. Its time grows with ``N``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.batching.tiny_models import OPSET


def matmul(k: int = 512) -> onnx.ModelProto:
    weight = np.random.default_rng(0).normal(size=(k, k)).astype(np.float32) / k
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "slow_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=OPSET)


def write(folder: Path, k: int = 512) -> Path:
    path = folder / "slow_matmul.onnx"
    onnx.save(matmul(k), path)
    return path
