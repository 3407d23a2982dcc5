"""KServe v2 GRPCInferenceService on the gateway, spoken by the unmodified
``tritonclient.grpc`` (sync and aio) and by the protocol's generated stub with typed
contents: every ranker input, raw and typed, equal to ONNX Runtime itself."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from serving.ranking.features import MODEL_INPUTS
from tests.gateway.conftest import Reference
from tests.rpc.conftest import RpcFactory

DATATYPE = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def triton_inputs(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name in MODEL_INPUTS:
        entry = grpcclient.InferInput(name, list(tensors[name].shape),
                                      DATATYPE[tensors[name].dtype])
        entry.set_data_from_numpy(tensors[name])  # raw_input_contents
        inputs.append(entry)
    return inputs


def typed_request(tensors: dict[str, np.ndarray]) -> Any:
    """A ModelInferRequest with typed ``contents`` (no raw bytes)."""
    request = pb.ModelInferRequest(model_name="feed_ranker")
    for name in MODEL_INPUTS:
        value = tensors[name]
        entry = request.inputs.add(name=name, datatype=DATATYPE[value.dtype],
                                   shape=list(value.shape))
        field = "int64_contents" if value.dtype == np.int64 else "fp32_contents"
        getattr(entry.contents, field).extend(value.ravel().tolist())
    return request


async def test_every_input_raw_and_typed_equals_onnx_runtime(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]], reference: Reference) -> None:
    rpc = await start_rpc()
    document = max(heldout[:50], key=lambda d: len(d["candidates"]))
    tensors = reference.tensors(document)
    expected = reference.session.run(["probs"], tensors)[0]

    def sync_calls() -> tuple[Any, ...]:
        client = grpcclient.InferenceServerClient(rpc.target)
        try:
            result = client.infer("feed_ranker", triton_inputs(tensors),
                                  outputs=[grpcclient.InferRequestedOutput("probs")])
            return (client.is_server_live(), client.is_server_ready(),
                    client.is_model_ready("feed_ranker"), client.get_server_metadata(),
                    client.get_model_metadata("feed_ranker"),
                    client.get_model_config("feed_ranker"), result.as_numpy("probs"))
        finally:
            client.close()

    live, ready, model_ready, server, metadata, config, probs = await asyncio.to_thread(
        sync_calls)
    assert (live, ready, model_ready) == (True, True, True)
    assert server.name == "rankserve"
    assert "statistics" not in server.extensions
    assert [i.name for i in metadata.inputs] == list(MODEL_INPUTS)
    assert config.config.name == "feed_ranker"
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)

    client = aioclient.InferenceServerClient(rpc.target)
    try:
        result = await client.infer("feed_ranker", triton_inputs(tensors), model_version="1")
        np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=0, atol=1e-6)
        assert await client.is_server_ready()
    finally:
        await client.close()

    async with grpc.aio.insecure_channel(rpc.target) as channel:
        typed = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            typed_request(tensors))
    (output,) = typed.outputs
    assert (output.name, output.datatype, list(output.shape)) == (
        "probs", "FP32", list(expected.shape))
    typed_probs = np.frombuffer(typed.raw_output_contents[0], "<f4").reshape(expected.shape)
    np.testing.assert_allclose(typed_probs, expected, rtol=0, atol=1e-6)


async def test_shares_batches_with_http(start_rpc: RpcFactory, heldout: list[dict[str, Any]],
                                        reference: Reference) -> None:
    rpc = await start_rpc()
    tensors = reference.tensors(heldout[0])
    client = aioclient.InferenceServerClient(rpc.target)
    try:
        await client.infer("feed_ranker", triton_inputs(tensors))
    finally:
        await client.close()
    # one data plane: the gRPC request went through the gateway's batcher and backend
    assert len(rpc.gateway.backend.calls) == 1
    assert rpc.gateway.metric(
        "rankserve_request_latency_seconds_count",
        {"route": "/inference.GRPCInferenceService/ModelInfer", "status": "200",
         "status_class": "2xx", "model": "feed_ranker", "version": "1"}) == 1


@pytest.mark.parametrize(("change", "status", "text"), [
    ("missing", grpc.StatusCode.INVALID_ARGUMENT, "missing input 'item_to_user'"),
    ("model", grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    ("version", grpc.StatusCode.NOT_FOUND, "has no version 7"),
    ("shape", grpc.StatusCode.INVALID_ARGUMENT, "'user_id' has shape"),
    ("typed_count", grpc.StatusCode.INVALID_ARGUMENT, "values for"),
    ("raw_count", grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has"),
])
async def test_errors_are_statuses_tritonclient_can_print(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]], reference: Reference,
        change: str, status: grpc.StatusCode, text: str) -> None:
    rpc = await start_rpc()
    tensors = reference.tensors(heldout[0])
    request = typed_request(tensors)
    if change == "missing":
        del request.inputs[-1]
    elif change == "model":
        request.model_name = "nope"
    elif change == "version":
        request.model_version = "7"
    elif change == "shape":
        request.inputs[0].shape[:] = [1, 1]  # wrong rank
    elif change == "typed_count":
        request.inputs[0].contents.int64_contents.append(5)
    else:
        request.raw_input_contents.append(b"\0" * 8)
    async with grpc.aio.insecure_channel(rpc.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    error = raised.value
    assert error.code() == status
    assert text in (error.details() or "")
    trailing = dict(error.trailing_metadata() or ())
    assert trailing["rankserve-error-code"]
    # and tritonclient's own exception prints it
    client = aioclient.InferenceServerClient(rpc.target)
    try:
        with pytest.raises(InferenceServerException) as wrapped:
            await client.get_model_metadata("nope")
        assert "unknown model 'nope'" in str(wrapped.value)
        assert wrapped.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as unsupported:
            await client.get_inference_statistics("feed_ranker")
        assert "statistics extension is not supported" in str(unsupported.value)
    finally:
        await client.close()


async def test_auth_spares_health_only(start_rpc: RpcFactory) -> None:
    rpc = await start_rpc(auth_token="s3cret")
    client = aioclient.InferenceServerClient(rpc.target)
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            await client.get_model_metadata("feed_ranker")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in str(refused.value)
        metadata = await client.get_model_metadata(
            "feed_ranker", headers={"authorization": "Bearer s3cret"})
        assert metadata.name == "feed_ranker"
    finally:
        await client.close()
