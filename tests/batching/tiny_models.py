"""Tiny ONNX models built with onnx.helper, and a Triton-layout repository around them.

``gather_add``: the ranker's shape in miniature. ``u [R, 2]`` per request row, ``x [N, 2]``
per candidate, ``idx [N]`` mapping candidates to request rows; ``y = x + u[idx]``, so a
wrong re-indexing in the batcher changes every affected output.

``affine``: a plain row-wise model ``y = 2 x + 1`` on ``x [B, 3]`` for ``max_batch_size > 0``
(Triton dynamic batching) tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def gather_add() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["u", "idx"], ["g"], axis=0),
         helper.make_node("Add", ["x", "g"], ["y"])],
        "gather_add",
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["R", 2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    return helper.make_model(graph, opset_imports=OPSET)


def gather_add_expected(u: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return x + u[idx]


def affine() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["m"]),
         helper.make_node("Add", ["m", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return helper.make_model(graph, opset_imports=OPSET)


def embedding(size: int = 10) -> onnx.ModelProto:
    """``y = table[ids]`` on ``ids [B]``: an id outside ``[0, size)`` makes ONNX Runtime fail
    the whole run, like an id past a real embedding table."""
    table = np.arange(size * 2, dtype=np.float32).reshape(size, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2])],
        [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=OPSET)


EMBEDDING_CONFIG = """\
name: "embedding"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "ids", data_type: TYPE_INT64, dims: [ ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""

AFFINE_CONFIG = """\
name: "affine"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""

GATHER_ADD_CONFIG = """\
name: "gather_add"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "u", data_type: TYPE_FP32, dims: [ -1, 2 ] },
  { name: "x", data_type: TYPE_FP32, dims: [ -1, 2 ] },
  { name: "idx", data_type: TYPE_INT64, dims: [ -1 ] }
]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 2 ] } ]
"""


def write_model(repository: Path, name: str, model: onnx.ModelProto, config: str,
                version: int = 1) -> Path:
    """``repository/name/{config.pbtxt, version/model.onnx}``; returns the ONNX path."""
    version_dir = repository / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(config)
    path = version_dir / "model.onnx"
    onnx.save(model, path)
    return path
