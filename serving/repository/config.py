"""Triton ``config.pbtxt``: write it from a model card, and parse it into Triton's protobuf.

Parsing uses ``tritonclient.grpc.model_config_pb2.ModelConfig`` with protobuf's
``text_format``, the same schema tritonserver validates against, so a typo in a field name
fails here (offline) and not at deploy time on a GPU node. The file is written by hand
rather than by ``text_format.MessageToString`` because it carries comments explaining the
choices (and proto3 would drop ``max_batch_size: 0``, the most important line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.errors import ModelCardError
from serving.repository.card import ModelCard
from serving.repository.tensors import TensorSpec, config_spelling

CONFIG_FILE = "config.pbtxt"

WARMUP_REQUESTS, WARMUP_CANDIDATES = 1, 300
"""The warm-up sample: one request with 300 candidates, a typical feed call."""


def parse_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` into ``ModelConfig``.

    Raises:
        ModelCardError: the file is missing or not valid Triton config text; the message
            carries protobuf's line/column and the offending field name.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelCardError(f"{path}: config.pbtxt not found", field=str(path)) from None
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise ModelCardError(f"{path}: not a valid Triton ModelConfig: {e}",
                             field=str(path)) from None


def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor(spec: TensorSpec) -> str:
    return (f'  {{ name: "{spec.name}", data_type: {config_spelling(spec.dtype)}, '
            f"dims: {_dims(spec.shape)} }}")


def _warmup_shape(spec: TensorSpec, user_inputs: set[str]) -> list[int]:
    rows = WARMUP_REQUESTS if spec.name in user_inputs else WARMUP_CANDIDATES
    return [rows if d < 0 else d for d in spec.shape]


def _warmup_input(spec: TensorSpec, user_inputs: set[str]) -> str:
    # Zeros are valid for every integer input (id 0 = OOV, item_to_user 0 = the one request
    # row); float inputs get random values so the kernels see realistic data.
    data = "zero_data: true" if spec.dtype.startswith("INT") else "random_data: true"
    return (f'      key: "{spec.name}"\n      value: {{ data_type: {config_spelling(spec.dtype)}, '
            f"dims: {_dims(_warmup_shape(spec, user_inputs))}, {data} }}")


def render_config(card: ModelCard, user_inputs: Sequence[str], instances: int = 2) -> str:
    """The ``config.pbtxt`` text for a card's model (inputs in card order).

    ``user_inputs`` names the per-request inputs (leading dim R); the others are
    per-candidate (leading dim N) and get that many rows in the warm-up sample.
    """
    users = set(user_inputs)
    warm_inputs = "\n    },\n    {\n".join(_warmup_input(s, users) for s in card.inputs)
    inputs = ",\n".join(_tensor(s) for s in card.inputs)
    outputs = ",\n".join(_tensor(s) for s in card.outputs)
    return f"""\
# Triton model configuration for {card.name} (written by `rankserve export`; checked by
# `rankserve check-repo`). Model card: {card.version}/model_card.json.
name: "{card.name}"
platform: "onnxruntime_onnx"

# max_batch_size 0: Triton must not add or merge a batch dimension. User inputs have one
# row per request (R) and candidate inputs one row per candidate (N), tied by item_to_user,
# so Triton's dynamic batcher cannot concatenate two requests; the rankserve gateway does
# that batching itself (rebasing item_to_user) and Triton runs several instances instead.
max_batch_size: 0

input [
{inputs}
]
output [
{outputs}
]

# Serve only the newest version in the repository.
version_policy: {{ latest {{ num_versions: 1 }} }}

# Two instances per GPU: one batch copies in while the other computes.
instance_group [
  {{ count: {instances}, kind: KIND_GPU }}
]

# TensorRT through ONNX Runtime, FP16 kernels; ONNX Runtime's CUDA provider runs any node
# TensorRT does not take.
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
        parameters {{ key: "precision_mode" value: "FP16" }}
        parameters {{ key: "max_workspace_size_bytes" value: "1073741824" }}
      }}
    ]
  }}
}}

# Warm-up before the model is marked ready (TensorRT builds its engine on first use):
# one request with {WARMUP_CANDIDATES} candidates.
model_warmup [
  {{
    name: "one_request_{WARMUP_CANDIDATES}_candidates"
    batch_size: 1
    inputs [
    {{
{warm_inputs}
    }}
    ]
  }}
]
"""


def write_config(card: ModelCard, model_dir: Path, user_inputs: Sequence[str]) -> Path:
    """Write ``model_dir/config.pbtxt`` and check that it parses back.

    Raises:
        ModelCardError: the rendered text does not parse (a bug here, caught at export).
    """
    path = model_dir / CONFIG_FILE
    path.write_text(render_config(card, user_inputs))
    parse_config(path)
    return path
