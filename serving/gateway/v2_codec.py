"""KServe v2 / Triton HTTP inference bodies, including the binary tensor extension.

A request is a JSON header, optionally followed by raw tensor bytes; the header's length is
in ``Inference-Header-Content-Length`` and each binary input says its size in
``parameters.binary_data_size``. Responses mirror that: outputs asked for with
``binary_data`` (or all outputs with ``binary_data_output``) follow the JSON header as raw
little-endian bytes. This is what ``tritonclient.http`` speaks, so it works unchanged.
Every tensor is checked against the model's config (name, datatype, shape) before any
work is queued, and errors name the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.errors import BadRequest
from serving.gateway.rules import parse_json
from serving.repository.served import ServedModel
from serving.repository.tensors import TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool]  # requested output -> send as binary
    request_id: str | None = None
    timeout_us: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decode(body: bytes, header_length: str | None, model: ServedModel) -> InferRequest:
    """Parse and validate an infer request for ``model``.

    Raises:
        BadRequest: malformed header or tensor, unknown or missing input, wrong datatype
            or shape, binary sizes that do not add up; the field names the input.
    """
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise BadRequest(f"'{HEADER_LENGTH}' must be the JSON header's byte length",
                             field=HEADER_LENGTH)
        json_part, binary = body[:length], body[length:]
    doc = parse_json(json_part)
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise BadRequest("'inputs' must be a non-empty list", field="inputs")
    specs = {t.name: t for t in model.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(entries):
        name, tensor, offset = _decode_input(entry, i, specs, binary, offset)
        inputs[name] = tensor
    if offset != len(binary):
        raise BadRequest(f"binary data holds {len(binary)} bytes but the inputs use {offset}",
                         field="inputs")
    limit = model.max_batch_size
    for name, tensor in inputs.items():
        if limit > 0 and tensor.shape[0] > limit:
            raise BadRequest(f"'{name}' has batch size {tensor.shape[0]}; the model's "
                             f"max_batch_size is {limit}", field=f"inputs.{name}")
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise BadRequest(f"missing input '{missing[0]}'", field=f"inputs.{missing[0]}")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object", field="parameters")
    request_id = doc.get("id")
    timeout = parameters.get("timeout")
    return InferRequest(inputs, _requested_outputs(doc, model, parameters),
                        request_id if isinstance(request_id, str) else None,
                        float(timeout) if isinstance(timeout, (int, float)) else None,
                        parameters)


def _decode_input(entry: Any, i: int, specs: Mapping[str, TensorSpec], binary: bytes,
                  offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequest(f"'inputs[{i}]' must be an object with a name", field=f"inputs[{i}]")
    name = entry["name"]
    where = f"inputs.{name}"
    spec = specs.get(name)
    if spec is None:
        raise BadRequest(f"model has no input '{name}'", field=where)
    if entry.get("datatype") != spec.dtype:
        raise BadRequest(f"'{name}' must have datatype {spec.dtype}, got "
                         f"{entry.get('datatype')!r}", field=where)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"'{name}' shape must be a list of non-negative integers", field=where)
    if len(shape) != len(spec.shape) or any(w >= 0 and d != w
                                            for d, w in zip(shape, spec.shape, strict=True)):
        raise BadRequest(f"'{name}' has shape {shape}; the model takes {list(spec.shape)}",
                         field=where)
    count = int(np.prod(shape))
    size = (entry.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * spec.numpy_dtype.itemsize or offset + size > len(binary):
            raise BadRequest(f"'{name}' binary_data_size does not match its shape or the body",
                             field=where)
        data = np.frombuffer(binary, dtype=spec.numpy_dtype.newbyteorder("<"), count=count,
                             offset=offset).astype(spec.numpy_dtype, copy=False)
        _check_finite(data, name)
        return name, data.reshape(shape), offset + size
    try:
        with np.errstate(over="ignore"):  # a float too large becomes inf: refused just below
            data = np.asarray(entry.get("data"), dtype=spec.numpy_dtype)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"'{name}' data must hold {spec.dtype} values", field=where) \
            from None
    if data.size != count:
        raise BadRequest(f"'{name}' has {data.size} values for shape {shape}", field=where)
    _check_finite(data, name)
    return name, data.reshape(shape), offset


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise BadRequest(f"'{name}' must hold finite numbers", field=f"inputs.{name}")


def _requested_outputs(doc: Mapping[str, Any], model: ServedModel,
                       parameters: Mapping[str, Any]) -> dict[str, bool]:
    default_binary = bool(parameters.get("binary_data_output", False))
    names = {t.name for t in model.outputs}
    entries = doc.get("outputs")
    if entries is None:
        return dict.fromkeys(names, default_binary)
    if not isinstance(entries, list):
        raise BadRequest("'outputs' must be a list", field="outputs")
    requested = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in names:
            raise BadRequest(f"model has no output {name!r}", field=f"outputs[{i}]")
        binary = (entry.get("parameters") or {}).get("binary_data", default_binary)
        requested[name] = bool(binary)
    return requested


def encode(model: ServedModel, outputs: Mapping[str, np.ndarray], request: InferRequest
           ) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (the header length when binary follows)."""
    datatypes = {t.name: t.dtype for t in model.outputs}
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in request.outputs.items():
        value = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatypes[name],
                                 "shape": list(value.shape)}
        if binary:
            blob = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1)
        described.append(entry)
    header: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version),
                              "outputs": described}
    if request.request_id is not None:
        header["id"] = request.request_id
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}
