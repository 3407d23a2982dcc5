"""KServe v2 ``GRPCInferenceService`` on the gateway's data plane: translation only.

The messages and the service base class are the protocol's own generated code, shipped in
``tritonclient.grpc`` (``service_pb2``, ``service_pb2_grpc``), so ``tritonclient.grpc`` and
``tritonclient.grpc.aio`` work unchanged. Tensors are decoded and checked by the same
functions as ``/v2`` over HTTP (:mod:`serving.gateway.v2_codec`): typed ``contents`` like
JSON ``data``, ``raw_input_contents`` like the binary extension, one size rule, one error
per field. Outputs always go back as ``raw_output_contents`` (what Triton does, and what
``InferResult.as_numpy`` reads first).

Served: ServerLive, ServerReady (both open when auth is on), ModelReady, ServerMetadata,
ModelMetadata, ModelConfig, ModelInfer. ModelStatistics answers UNIMPLEMENTED with the
same message as HTTP; the repository, shared-memory, trace and log RPCs are the base
class's UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.errors import BadRequest
from serving.gateway import v2_codec
from serving.gateway.dataplane import DataPlane
from serving.gateway.rules import parse_budget, version_in_path
from serving.gateway.v2_handlers import EXTENSIONS, STATISTICS_UNSUPPORTED, server_version
from serving.repository.served import ServedModel
from serving.repository.tensors import TensorSpec
from serving.rpc.calls import Call, rpc
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

SERVICE = "/inference.GRPCInferenceService/"
CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents"}
"""The typed ``InferTensorContents`` field of each datatype (FP16 and BF16 have none:
they travel as raw bytes only)."""


class KServeService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The v2 inference service over one :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics

    def _model(self, name: str, version: str) -> ServedModel:
        return self.plane.model(name, version_in_path(version))

    @rpc(SERVICE + "ServerLive", open_=True)
    async def ServerLive(self, request: Any, call: Call) -> Any:
        return pb.ServerLiveResponse(live=True)

    @rpc(SERVICE + "ServerReady", open_=True)
    async def ServerReady(self, request: Any, call: Call) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.readiness() is None)

    @rpc(SERVICE + "ModelReady")
    async def ModelReady(self, request: Any, call: Call) -> Any:
        self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.plane.readiness() is None)

    @rpc(SERVICE + "ServerMetadata")
    async def ServerMetadata(self, request: Any, call: Call) -> Any:
        return pb.ServerMetadataResponse(name="rankserve", version=server_version(),
                                         extensions=EXTENSIONS)

    @rpc(SERVICE + "ModelMetadata")
    async def ModelMetadata(self, request: Any, call: Call) -> Any:
        model = self._model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name, platform="onnxruntime_onnx",
            versions=[str(v) for v in self.plane.versions(model.name)],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t.to_metadata())
                    for t in model.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t.to_metadata())
                     for t in model.outputs])

    @rpc(SERVICE + "ModelConfig")
    async def ModelConfig(self, request: Any, call: Call) -> Any:
        return pb.ModelConfigResponse(config=self._model(request.name, request.version).config)

    @rpc(SERVICE + "ModelStatistics")
    async def ModelStatistics(self, request: Any, call: Call) -> Any:
        await call.context.abort(grpc.StatusCode.UNIMPLEMENTED, STATISTICS_UNSUPPORTED)

    @rpc(SERVICE + "ModelInfer")
    async def ModelInfer(self, request: Any, call: Call) -> Any:
        model = self._model(request.model_name, request.model_version)
        decoded = decode(request, model)
        v2_codec.check_size(model, decoded.inputs, self.settings)
        timeout_ms = None if decoded.timeout_us is None else decoded.timeout_us / 1e3
        budget_ms = parse_budget(timeout_ms, "parameters.timeout", self.settings.max_budget_ms)
        result = await self.plane.infer(model, decoded.inputs, call.deadline(budget_ms))
        v2_codec.check_outputs(decoded.outputs, result.outputs)
        return encode(model, result.outputs, decoded)


def decode(request: Any, model: ServedModel) -> v2_codec.InferRequest:
    """A ``ModelInferRequest`` as validated tensors (the HTTP codec's rules).

    Raises:
        BadRequest: as :func:`serving.gateway.v2_codec.decode`, and ``raw_input_contents``
            that is not one entry per input.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for "
                         f"{len(request.inputs)} inputs", field="raw_input_contents")
    if not request.inputs:
        raise BadRequest("'inputs' must be a non-empty list", field="inputs")
    specs = {t.name: t for t in model.inputs}
    size = request.ByteSize()
    inputs: dict[str, np.ndarray] = {}
    for i, entry in enumerate(request.inputs):
        spec, shape = v2_codec.check_tensor(specs, entry.name, entry.datatype,
                                            list(entry.shape), size)
        tensor = (v2_codec.from_bytes(spec, raw[i], shape, entry.name) if raw
                  else _from_contents(entry, spec, shape))
        v2_codec.add_input(inputs, entry.name, tensor)
    v2_codec.check_inputs(inputs, model)
    names = {t.name for t in model.outputs}
    outputs: dict[str, bool] = {}
    for i, entry in enumerate(request.outputs):
        if entry.name not in names:
            raise BadRequest(f"model has no output {entry.name!r}", field=f"outputs[{i}]")
        outputs[entry.name] = True
    return v2_codec.InferRequest(inputs, outputs or dict.fromkeys(names, True),
                                 request.id or None, _timeout_us(request))


def _from_contents(entry: Any, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    field = CONTENTS.get(spec.dtype)
    if field is None:
        raise BadRequest(f"'{entry.name}' ({spec.dtype}) must be sent in raw_input_contents",
                         field=f"inputs.{entry.name}")
    return v2_codec.from_values(list(getattr(entry.contents, field)), spec, entry.name, shape)


def _timeout_us(request: Any) -> float | None:
    """``parameters["timeout"]`` in microseconds (what ``tritonclient``'s ``timeout=``
    sends), if given.

    Raises:
        BadRequest: not a positive integer.
    """
    if "timeout" not in request.parameters:
        return None
    parameter = request.parameters["timeout"]
    if parameter.WhichOneof("parameter_choice") != "int64_param" \
            or parameter.int64_param <= 0:
        raise BadRequest("'parameters.timeout' must be a positive number of microseconds",
                         field="parameters.timeout")
    return float(parameter.int64_param)


def encode(model: ServedModel, outputs: dict[str, np.ndarray],
           request: v2_codec.InferRequest) -> Any:
    """The ``ModelInferResponse``: requested outputs as little-endian raw bytes."""
    datatypes = {t.name: t.dtype for t in model.outputs}
    tensors, raw = [], []
    for name in request.outputs:
        value = np.ascontiguousarray(outputs[name])
        tensors.append(pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype=datatypes[name], shape=list(value.shape)))
        raw.append(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    return pb.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                 id=request.request_id or "", outputs=tensors,
                                 raw_output_contents=raw)
