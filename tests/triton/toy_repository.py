"""A small ONNX model with the ranker's signature, built with onnx.helper.

Backend-level tests use it so they do not depend on the trained model: same input and output
names, dtypes and dynamic shapes as ``feed_ranker``, every input influencing the scores, and a
user-side gather through ``item_to_user`` like the real graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from serving.repository.card import ModelCard, sha256_of
from serving.repository.tensors import TensorSpec

TASKS = ["click", "long_view", "like"]
INPUTS: dict[str, tuple[str, list[int]]] = {
    "user_id": ("INT64", [-1]),
    "user_cat": ("INT64", [-1, 27]),
    "user_num": ("FP32", [-1, 4]),
    "history": ("INT64", [-1, 20]),
    "item_id": ("INT64", [-1]),
    "item_cat": ("INT64", [-1, 6]),
    "item_num": ("FP32", [-1, 4]),
    "item_to_user": ("INT64", [-1]),
}
_ONNX_TYPE = {"INT64": TensorProto.INT64, "FP32": TensorProto.FLOAT}
_CONFIG_TYPE = {"INT64": model_config_pb2.TYPE_INT64, "FP32": model_config_pb2.TYPE_FP32}


def _graph(tasks: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inputs = [helper.make_tensor_value_info(
        name, _ONNX_TYPE[dtype], ["R" if name in ("user_id", "user_cat", "user_num", "history")
                                  else "N", *shape[1:]])
        for name, (dtype, shape) in INPUTS.items()]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1e-3], dtype=np.float32), "small"),
        numpy_helper.from_array(rng.normal(0, 0.5, (18, tasks)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (tasks,)).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["user_cat", "axis1"], ["ucat_sum"], keepdims=1),
        helper.make_node("ReduceSum", ["history", "axis1"], ["hist_sum"], keepdims=1),
        helper.make_node("Unsqueeze", ["user_id", "axis1"], ["uid_col"]),
        helper.make_node("Concat", ["ucat_sum", "hist_sum", "uid_col"], ["uints"], axis=1),
        helper.make_node("Cast", ["uints"], ["ufloat"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ufloat", "small"], ["uscaled"]),
        helper.make_node("Concat", ["user_num", "uscaled"], ["user_vec"], axis=1),
        helper.make_node("Gather", ["user_vec", "item_to_user"], ["user_rows"], axis=0),
        helper.make_node("Unsqueeze", ["item_id", "axis1"], ["iid_col"]),
        helper.make_node("Concat", ["item_cat", "iid_col"], ["iints"], axis=1),
        helper.make_node("Cast", ["iints"], ["ifloat"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ifloat", "small"], ["iscaled"]),
        helper.make_node("Concat", ["user_rows", "item_num", "iscaled"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    output = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", tasks])
    graph = helper.make_graph(nodes, "toy_ranker", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _config(name: str, tasks: int) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name=name, platform="onnxruntime_onnx",
                                          max_batch_size=0)
    for tensor, (dtype, shape) in INPUTS.items():
        config.input.add(name=tensor, data_type=_CONFIG_TYPE[dtype], dims=shape)
    config.output.add(name="probs", data_type=model_config_pb2.TYPE_FP32, dims=[-1, tasks])
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=2)
    return config


def write_toy_repository(root: Path, name: str = "feed_ranker") -> Path:
    """Write ``root/name/{config.pbtxt,1/model.onnx,1/model_card.json}``; returns ``root``."""
    version_dir = root / name / "1"
    version_dir.mkdir(parents=True)
    onnx.save(_graph(len(TASKS)), version_dir / "model.onnx")
    (root / name / "config.pbtxt").write_text(
        text_format.MessageToString(_config(name, len(TASKS))))
    card = ModelCard(
        name=name, version=1, tasks=list(TASKS),
        inputs=[TensorSpec(t, dtype, shape) for t, (dtype, shape) in INPUTS.items()],
        outputs=[TensorSpec("probs", "FP32", [-1, len(TASKS)])],
        features={}, value_weights=dict.fromkeys(TASKS, 1.0), opset=17,
        onnx_sha256=sha256_of(version_dir / "model.onnx"))
    card.save(version_dir / "model_card.json")
    return root


def random_batch(rng: np.random.Generator, requests: int, candidates: int
                 ) -> dict[str, np.ndarray]:
    """Encoded tensors for ``requests`` users and ``candidates`` rows spread over them."""
    return {
        "user_id": rng.integers(0, 1000, requests),
        "user_cat": rng.integers(0, 50, (requests, 27)),
        "user_num": rng.normal(size=(requests, 4)).astype(np.float32),
        "history": rng.integers(0, 1000, (requests, 20)),
        "item_id": rng.integers(0, 5000, candidates),
        "item_cat": rng.integers(0, 50, (candidates, 6)),
        "item_num": rng.normal(size=(candidates, 4)).astype(np.float32),
        "item_to_user": np.sort(rng.integers(0, requests, candidates)),
    }
