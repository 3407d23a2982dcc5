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

TENSORRT_CACHE = "/cache/tensorrt"
"""Where Triton's TensorRT engines and timing cache live: the Helm chart mounts a volume
there (``triton.tensorrtCache``), so a restarted pod does not rebuild its engines."""
PROFILE_KEYS = {"min": "trt_profile_min_shapes", "opt": "trt_profile_opt_shapes",
                "max": "trt_profile_max_shapes"}
CACHE_KEYS = {"trt_engine_cache_enable": "1", "trt_engine_cache_path": TENSORRT_CACHE,
              "trt_timing_cache_enable": "1", "trt_timing_cache_path": TENSORRT_CACHE}


TENSORRT_PROFILE = {"min": (1, 1), "opt": (2048, 4), "max": (8192, 64)}
"""TensorRT's shape profile as ``(candidate rows, user rows)`` per point: min one of each
(any request fits), opt a typical merged batch, max the largest bucket shape the gateway
pads to. These are the GPU settings profile's buckets (``serving.settings.PROFILES``; a
test keeps them equal: the repository layer, which local Triton tooling uses, does not
read settings)."""


def profile_points() -> dict[str, tuple[int, int]]:
    """:data:`TENSORRT_PROFILE`'s points (a copy)."""
    return dict(TENSORRT_PROFILE)


def tensorrt_precision(card: ModelCard) -> str:
    """``FP16`` where the card's ``parity.precision`` section says FP16 may be served,
    else ``FP32`` (TensorRT's default: no ``precision_mode`` parameter)."""
    section = card.parity.get("precision", {})
    return "FP16" if section.get("fp16", {}).get("supported") is True else "FP32"


def profile_shapes(inputs: Sequence[TensorSpec], user_inputs: set[str], rows: int,
                   users: int) -> str:
    """``name:AxB,...`` for every input at one profile point (TensorRT's option syntax)."""
    return ",".join(f"{s.name}:" + "x".join(str(d) for d in _rows_shape(
        s, users if s.name in user_inputs else rows)) for s in inputs)


def _rows_shape(spec: TensorSpec, rows: int) -> list[int]:
    return [rows if d < 0 else d for d in spec.shape]


def tensorrt_parameters(card: ModelCard, user_inputs: Sequence[str]) -> dict[str, str]:
    """The TensorRT accelerator's parameters for a card's model: precision as the card
    supports, workspace, engine and timing caches, and the shape profile."""
    users = set(user_inputs)
    params = {"precision_mode": "FP16"} if tensorrt_precision(card) == "FP16" else {}
    params["max_workspace_size_bytes"] = "1073741824"
    params.update(CACHE_KEYS)
    for point, (rows, user_rows) in profile_points().items():
        params[PROFILE_KEYS[point]] = profile_shapes(card.inputs, users, rows, user_rows)
    return params


def _accelerator_parameters(config: mc.ModelConfig) -> dict[str, str] | None:
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            return dict(accelerator.parameters)
    return None


def tensorrt_problems(config: mc.ModelConfig, card: ModelCard, user_inputs: Sequence[str],
                      where: str) -> list[str]:
    """Where a config's TensorRT accelerator disagrees with its card: a precision the
    card's parity does not support, a missing cache key, a shape profile that is not the
    one the card's inputs and the GPU buckets give; and warm-up samples missing at the
    profile points. No TensorRT accelerator: nothing to check."""
    params = _accelerator_parameters(config)
    if params is None:
        return []
    problems = []
    supported = tensorrt_precision(card)
    mode = params.get("precision_mode", "FP32").upper()
    if mode != supported:
        problems.append(f"{where}: TensorRT precision_mode {mode} but the model card's "
                        f"parity.precision supports {supported} (rankserve export measures "
                        f"it; python -m serving.train.precision adds it to an older card)")
    want = tensorrt_parameters(card, user_inputs)
    for key in (*CACHE_KEYS, *PROFILE_KEYS.values()):
        if params.get(key) != want[key]:
            problems.append(f"{where}: TensorRT parameter {key} is {params.get(key)!r}, "
                            f"expected {want[key]!r}")
    warmed = {_sample_point(sample, set(user_inputs)) for sample in config.model_warmup}
    for point, shape in profile_points().items():
        if shape not in warmed:
            problems.append(f"{where}: no model_warmup sample at the TensorRT profile's "
                            f"{point} point ({shape[0]} candidates, {shape[1]} user rows)")
    return problems


def _sample_point(sample: mc.ModelWarmup, user_inputs: set[str]) -> tuple[int, int]:
    rows = users = 0
    for name, value in sample.inputs.items():
        lead = value.dims[0] if value.dims else 0
        if name in user_inputs:
            users = lead
        else:
            rows = lead
    return rows, users

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


def _warmup_input(spec: TensorSpec, user_inputs: set[str], rows: int, users: int) -> str:
    # Zeros are valid for every integer input (id 0 = OOV, item_to_user 0 = the first request
    # row); float inputs get random values so the kernels see realistic data.
    data = "zero_data: true" if spec.dtype.startswith("INT") else "random_data: true"
    shape = _rows_shape(spec, users if spec.name in user_inputs else rows)
    return (f'      key: "{spec.name}"\n      value: {{ data_type: {config_spelling(spec.dtype)}, '
            f"dims: {_dims(shape)}, {data} }}")


def _warmup_sample(card: ModelCard, users: set[str], name: str, rows: int,
                   user_rows: int) -> str:
    inputs = "\n    },\n    {\n".join(_warmup_input(s, users, rows, user_rows)
                                       for s in card.inputs)
    return f"""  {{
    name: "{name}"
    batch_size: 1
    inputs [
    {{
{inputs}
    }}
    ]
  }}"""


def render_config(card: ModelCard, user_inputs: Sequence[str], instances: int = 2) -> str:
    """The ``config.pbtxt`` text for a card's model (inputs in card order).

    ``user_inputs`` names the per-request inputs (leading dim R); the others are
    per-candidate (leading dim N) and get that many rows in the warm-up sample.
    """
    users = set(user_inputs)
    points = [("one_request_300_candidates", WARMUP_CANDIDATES, WARMUP_REQUESTS)] + [
        (f"profile_{point}_{rows}_candidates_{user_rows}_users", rows, user_rows)
        for point, (rows, user_rows) in profile_points().items()]
    warmups = ",\n".join(_warmup_sample(card, users, *p) for p in points)
    precision = tensorrt_precision(card)
    params = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}'
                       for k, v in tensorrt_parameters(card, user_inputs).items())
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

# TensorRT through ONNX Runtime, {precision} kernels (what the model card's
# parity.precision supports); ONNX Runtime's CUDA provider runs any node TensorRT does not
# take. Engines and timing caches persist in {TENSORRT_CACHE} (the chart's volume); one shape
# profile spans every bucket shape the gateway pads batches to (min / opt / max).
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
{params}
      }}
    ]
  }}
}}

# Warm-up before the model is marked ready (TensorRT builds its engine on first use): a
# typical feed call, then the shape profile's min, opt and max points.
model_warmup [
{warmups}
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
