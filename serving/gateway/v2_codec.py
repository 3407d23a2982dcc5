"""KServe v2 / Triton HTTP inference bodies, including the binary tensor extension.

A request is a JSON header, optionally followed by raw tensor bytes; the header's length is
in ``Inference-Header-Content-Length`` and each binary input says its size in
``parameters.binary_data_size``. Responses mirror that: outputs asked for with
``binary_data`` (or all outputs with ``binary_data_output``) follow the JSON header as raw
little-endian bytes. This is what ``tritonclient.http`` speaks, so it works unchanged.
Every tensor is checked against the model's config (name, datatype, shape) before any
work is queued, and errors name the input.

The tensor rules themselves (:func:`check_tensor`, :func:`from_bytes`, :func:`from_values`,
:func:`check_inputs`, :func:`check_size`, :func:`check_outputs`) are transport-neutral: the
KServe v2 gRPC service (:mod:`serving.rpc.kserve`) decodes ``ModelInferRequest`` with the
same functions, so HTTP and gRPC accept and refuse exactly the same tensors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.batching.layout import CandidateLayout, layout_for
from serving.errors import BadRequest, NotFound, PayloadTooLarge
from serving.gateway.rules import parse_count, parse_json
from serving.repository.served import ServedModel
from serving.repository.tensors import TensorSpec
from serving.settings import Settings

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPES: dict[str, frozenset[type]] = {
    "b": frozenset({bool}), "i": frozenset({int}), "u": frozenset({int}),
    "f": frozenset({int, float})}
"""Python types (as orjson decodes them) that JSON ``data`` may hold, by numpy dtype kind:
integers are never read from strings, fractions or booleans, booleans only from ``true``
and ``false``."""


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
        length = parse_count(header_length)
        if length is None or length > len(body):
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
        name, tensor, offset = _decode_input(entry, i, specs, binary, offset, len(body))
        add_input(inputs, name, tensor)
    if offset != len(binary):
        raise BadRequest(f"binary data holds {len(binary)} bytes but the inputs use {offset}",
                         field="inputs")
    check_inputs(inputs, model)
    parameters = _parameters(doc, "parameters")
    request_id = doc.get("id")
    return InferRequest(inputs, _requested_outputs(doc, model, parameters),
                        request_id if isinstance(request_id, str) else None,
                        _timeout_us(parameters), parameters)


def _parameters(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An entry's ``parameters`` object (empty when absent).

    Raises:
        BadRequest: present but not an object.
    """
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"'{where}' must be an object", field=where)
    return parameters


def _timeout_us(parameters: Mapping[str, Any]) -> float | None:
    """``parameters.timeout`` in microseconds (Triton's unit), if given.

    Raises:
        BadRequest: not a positive number (``true`` is not 1 microsecond).
    """
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise BadRequest("'parameters.timeout' must be a positive number of microseconds",
                         field="parameters.timeout")
    return float(timeout)


def _flag(parameters: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{where}.{name}' must be true or false", field=f"{where}.{name}")
    return value


def _decode_input(entry: Any, i: int, specs: Mapping[str, TensorSpec], binary: bytes,
                  offset: int, body_size: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequest(f"'inputs[{i}]' must be an object with a name", field=f"inputs[{i}]")
    name = entry["name"]
    where = f"inputs.{name}"
    spec, shape = check_tensor(specs, name, entry.get("datatype"), entry.get("shape"),
                               body_size)
    size = _parameters(entry, f"{where}.parameters").get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise BadRequest(f"'{name}' binary_data_size must be an integer",
                             field=f"{where}.parameters.binary_data_size")
        if offset + size > len(binary):
            raise BadRequest(f"'{name}' binary_data_size does not match its shape or the body",
                             field=where)
        data = from_bytes(spec, binary[offset:offset + size], shape, name)
        return name, data, offset + size
    return name, from_values(entry.get("data"), spec, name, shape), offset


def check_tensor(specs: Mapping[str, TensorSpec], name: str, datatype: Any, shape: Any,
                 max_values: int) -> tuple[TensorSpec, list[int]]:
    """The spec of input ``name`` and its validated shape (HTTP and gRPC alike).

    ``max_values`` bounds the element count before anything is allocated: every value
    takes at least one byte of the request, so a shape with more values than the request
    has bytes is refused.

    Raises:
        BadRequest: unknown input, wrong datatype, a shape that is not a list of
            non-negative integers, does not match the model's, or holds more values than
            the request could carry; the field names the input.
    """
    where = f"inputs.{name}"
    spec = specs.get(name)
    if spec is None:
        raise BadRequest(f"model has no input '{name}'", field=where)
    if datatype != spec.dtype:
        raise BadRequest(f"'{name}' must have datatype {spec.dtype}, got {datatype!r}",
                         field=where)
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"'{name}' shape must be a list of non-negative integers", field=where)
    if len(shape) != len(spec.shape) or any(w >= 0 and d != w
                                            for d, w in zip(shape, spec.shape, strict=True)):
        raise BadRequest(f"'{name}' has shape {shape}; the model takes {list(spec.shape)}",
                         field=where)
    if math.prod(shape) > max_values:  # exact: no int64 overflow
        raise BadRequest(f"'{name}' has shape {shape}: more values than the body holds",
                         field=where)
    return spec, shape


def from_bytes(spec: TensorSpec, raw: bytes, shape: list[int], name: str) -> np.ndarray:
    """A tensor from raw little-endian bytes (the binary extension, gRPC's
    ``raw_input_contents``).

    Raises:
        BadRequest: the byte count does not match the shape, or a float is not finite.
    """
    count = math.prod(shape)
    if len(raw) != count * spec.numpy_dtype.itemsize:
        raise BadRequest(f"'{name}' binary_data_size does not match its shape or the body",
                         field=f"inputs.{name}")
    data = np.frombuffer(raw, dtype=spec.numpy_dtype.newbyteorder("<"), count=count
                         ).astype(spec.numpy_dtype, copy=False)
    _check_finite(data, name)
    return data.reshape(shape)


def add_input(inputs: dict[str, np.ndarray], name: str, tensor: np.ndarray) -> None:
    """Add a decoded input, refusing a name given twice.

    Raises:
        BadRequest: ``name`` is already in ``inputs``.
    """
    if name in inputs:
        raise BadRequest(f"input '{name}' is given twice", field=f"inputs.{name}")
    inputs[name] = tensor


def check_inputs(inputs: Mapping[str, np.ndarray], model: ServedModel) -> None:
    """Every input of ``model`` present, none past its ``max_batch_size``.

    Raises:
        BadRequest: naming the first input that is missing or too large.
    """
    limit = model.max_batch_size
    for name, tensor in inputs.items():
        if limit > 0 and tensor.shape[0] > limit:
            raise BadRequest(f"'{name}' has batch size {tensor.shape[0]}; the model's "
                             f"max_batch_size is {limit}", field=f"inputs.{name}")
    missing = [t.name for t in model.inputs if t.name not in inputs]
    if missing:
        raise BadRequest(f"missing input '{missing[0]}'", field=f"inputs.{missing[0]}")


def check_size(model: ServedModel, inputs: Mapping[str, np.ndarray],
               settings: Settings) -> None:
    """The per-request limits ``/v1/rank`` has, counted the way the batcher counts rows:
    at most ``max_candidates`` candidate rows (a model's batch rows) and ``max_user_rows``
    user rows, and at least one row (a request with none is not sent to the model).

    Raises:
        PayloadTooLarge: past either limit, naming the input.
        BadRequest: the tensors' rows are inconsistent, or there are none.
    """
    layout = layout_for(model)
    rows, users = layout.rows_of(inputs), layout.user_rows_of(inputs)
    row_input = user_input = model.inputs[0].name
    if isinstance(layout, CandidateLayout):
        row_input, user_input = layout.rows[0], (layout.shared or layout.rows)[0]
    if rows > settings.max_candidates:
        raise PayloadTooLarge(f"'{row_input}' has {rows} rows; at most "
                              f"{settings.max_candidates} per request", field=f"inputs.{row_input}")
    if users > settings.max_user_rows:
        raise PayloadTooLarge(f"'{user_input}' has {users} user rows; at most "
                              f"{settings.max_user_rows} per request", field=f"inputs.{user_input}")
    if rows == 0:
        raise BadRequest(f"'{row_input}' has no rows to score", field=f"inputs.{row_input}")


def check_outputs(requested: Mapping[str, Any], produced: Mapping[str, np.ndarray]) -> None:
    """Every requested output was produced by the model.

    Raises:
        NotFound: naming the first one missing.
    """
    missing = [name for name in requested if name not in produced]
    if missing:
        raise NotFound(f"the model produced no output '{missing[0]}'", field="outputs")


def from_values(values: Any, spec: TensorSpec, name: str, shape: list[int]) -> np.ndarray:
    """A tensor from listed values (JSON ``data``; gRPC typed ``contents``) in row-major
    order, as one flat list or as lists nested exactly as its shape (``[[1, 2], [3, 4]]``
    for ``[2, 2]``).

    Raises:
        BadRequest: not a list, nested other than the shape, values of another type
            (``"1"``, ``1.7`` or ``true`` for an integer), out of range or non-finite, or
            the wrong number of them.
    """
    where = f"inputs.{name}"
    count = math.prod(shape)
    if isinstance(values, list) and values and type(values[0]) is list:
        values = _flatten(values, shape, name)
    if not isinstance(values, list) \
            or not set(map(type, values)) <= JSON_TYPES[spec.numpy_dtype.kind]:
        raise BadRequest(f"'{name}' data must be a list of {spec.dtype} values, flat or "
                         f"nested as its shape {shape}", field=where)
    try:
        with np.errstate(over="ignore"):  # a float too large becomes inf: refused just below
            data = np.asarray(values, dtype=spec.numpy_dtype)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"'{name}' data must hold {spec.dtype} values", field=where) \
            from None
    if data.size != count:
        raise BadRequest(f"'{name}' has {data.size} values for {count} in its shape",
                         field=where)
    _check_finite(data, name)
    return data.reshape(shape)


def _flatten(values: list[Any], shape: list[int], name: str) -> list[Any]:
    """Row-major values of lists nested exactly as ``shape``.

    Raises:
        BadRequest: the nesting does not match the shape.
    """
    level = values
    for i in range(len(shape) - 1):
        if len(level) != math.prod(shape[:i + 1]) \
                or set(map(type, level)) != {list} or set(map(len, level)) != {shape[i + 1]}:
            raise BadRequest(f"'{name}' data is not nested as its shape {shape}",
                             field=f"inputs.{name}")
        level = list(itertools.chain.from_iterable(level))
    return level


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise BadRequest(f"'{name}' must hold finite numbers", field=f"inputs.{name}")


def _requested_outputs(doc: Mapping[str, Any], model: ServedModel,
                       parameters: Mapping[str, Any]) -> dict[str, bool]:
    default_binary = _flag(parameters, "binary_data_output", False, "parameters")
    names = {t.name for t in model.outputs}
    entries = doc.get("outputs")
    if entries is None:
        return dict.fromkeys(names, default_binary)
    if not isinstance(entries, list):
        raise BadRequest("'outputs' must be a list", field="outputs")
    requested = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in names:
            raise BadRequest(f"model has no output {name!r}", field=f"outputs[{i}]")
        where = f"outputs[{i}].parameters"
        requested[name] = _flag(_parameters(entry, where), "binary_data", default_binary, where)
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
