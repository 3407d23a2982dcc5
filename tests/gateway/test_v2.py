"""The KServe v2 / Triton HTTP protocol, spoken by the unmodified ``tritonclient.http``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.ranking.features import MODEL_INPUTS
from tests.batching.tiny_models import (
    AFFINE_CONFIG,
    GATHER_ADD_CONFIG,
    affine,
    gather_add,
    gather_add_expected,
    write_model,
)
from tests.gateway.conftest import REPOSITORY, GatewayFactory, Reference


def triton(gateway: Any) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.url.removeprefix("http://"),
                                            concurrency=4)


def ranker_inputs(tensors: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for name in MODEL_INPUTS:
        value = tensors[name]
        entry = httpclient.InferInput(name, list(value.shape),
                                      "INT64" if value.dtype == np.int64 else "FP32")
        entry.set_data_from_numpy(value, binary_data=binary)
        inputs.append(entry)
    return inputs


async def test_tritonclient_infer_equals_v1_probabilities(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway()
    document = max(heldout[:50], key=lambda d: len(d["candidates"]))
    ranked = await (await gateway.client.post(
        "/v1/rank", data=orjson.dumps({**document, "return_tasks": True, "budget_ms": 5000}),
        headers={"Content-Type": "application/json"})).json()
    tensors = reference.tensors(document)

    def call() -> tuple[Any, ...]:
        client = triton(gateway)
        try:
            metadata = client.get_model_metadata("feed_ranker")
            results = [client.infer("feed_ranker", ranker_inputs(tensors, binary),
                                    outputs=[httpclient.InferRequestedOutput(
                                        "probs", binary_data=binary)]).as_numpy("probs")
                       for binary in (True, False)]
            return (client.is_server_live(), client.is_server_ready(),
                    client.is_model_ready("feed_ranker"), client.get_server_metadata(),
                    metadata, client.get_model_config("feed_ranker"), results)
        finally:
            client.close()

    live, ready, model_ready, server, metadata, config, results = await asyncio.to_thread(call)
    assert live
    assert ready
    assert model_ready
    assert "binary_tensor_data" in server["extensions"]
    assert [i["name"] for i in metadata["inputs"]] == list(MODEL_INPUTS)
    assert config["name"] == "feed_ranker"
    assert config.get("max_batch_size", 0) == 0  # proto3 JSON omits zeros
    ids = [c["video_id"] for c in document["candidates"]]
    by_id = {v: i for i, v in enumerate(ids)}
    assert len(by_id) == len(ids)  # unique ids, so the ranked order maps back
    order = [by_id[v] for v in ranked["video_id"]]
    v1 = np.stack([ranked["probs"][t] for t in reference.card.tasks], axis=1)
    for probs in results:
        assert probs.shape == (len(ids), len(reference.card.tasks))
        np.testing.assert_allclose(probs[order], v1, rtol=0, atol=1e-6)


@pytest.fixture
def mixed_repository(tmp_path: Path) -> Path:
    """The ranker plus two generic ONNX models with no model card."""
    (tmp_path / "feed_ranker").symlink_to(REPOSITORY / "feed_ranker")
    write_model(tmp_path, "affine", affine(), AFFINE_CONFIG)
    write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)
    return tmp_path


async def test_generic_models_and_dynamic_batching(start_gateway: GatewayFactory,
                                                   mixed_repository: Path) -> None:
    gateway = await start_gateway(model_repository=mixed_repository, max_wait_ms=100.0,
                                  instances=1)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32)
               for _ in range(20)]

    def call(x: np.ndarray) -> np.ndarray:
        client = triton(gateway)
        try:
            entry = httpclient.InferInput("x", list(x.shape), "FP32")
            entry.set_data_from_numpy(x)
            return client.infer("affine", [entry]).as_numpy("y")
        finally:
            client.close()

    results = await asyncio.gather(*(asyncio.to_thread(call, x) for x in batches))
    for x, y in zip(batches, results, strict=True):
        np.testing.assert_array_equal(y, 2 * x + 1)
    assert len(gateway.backend.calls) < len(batches)  # merged like Triton's dynamic batcher
    assert max(len(c["x"]) for c in gateway.backend.calls) <= 8  # max_batch_size holds

    u = rng.normal(size=(2, 2)).astype(np.float32)
    x = rng.normal(size=(5, 2)).astype(np.float32)
    idx = np.array([0, 1, 1, 0, 1], dtype=np.int64)
    response = await gateway.client.post("/v2/models/gather_add/versions/1/infer", json={
        "inputs": [{"name": "u", "datatype": "FP32", "shape": [2, 2], "data": u.ravel().tolist()},
                   {"name": "x", "datatype": "FP32", "shape": [5, 2], "data": x.tolist()},
                   {"name": "idx", "datatype": "INT64", "shape": [5], "data": idx.tolist()}]})
    answer = await response.json()
    assert response.status == 200, answer
    (y,) = answer["outputs"]
    np.testing.assert_allclose(np.array(y["data"], np.float32).reshape(y["shape"]),
                               gather_add_expected(u, x, idx))
    # No model card: /v1/rank refuses it with a clear 404.
    refused = await gateway.client.post("/v1/rank", json={
        "model": "affine", "user": {"user_id": 1}, "candidates": [{"video_id": 1}]})
    assert refused.status == 404
    assert (await refused.json())["error"]["field"] == "model"


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/v2/models/nope/infer", {"inputs": []}, 404, "model"),
    ("/v2/models/affine/versions/7/infer", {"inputs": []}, 404, "version"),
    # Digits to str.isdigit() but not to int(): once a 500.
    ("/v2/models/affine/versions/\u00b2/infer", {"inputs": []}, 404, "version"),
    ("/v2/models/affine/versions/\u0661/infer", {"inputs": []}, 404, "version"),
    ("/v2/models/affine/infer", {"inputs": []}, 400, "inputs"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3],
                                             "data": [1, 2, 3]}]}, 400, "inputs.z"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 3],
                                             "data": [1, 2, 3]}]}, 400, "inputs.x"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                             "data": [1, 2, 3, 4]}]}, 400, "inputs.x"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                             "data": [1, 2, 3]}]}, 400, "inputs.x"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [9, 3],
                                             "data": [0] * 27}]}, 400, "inputs.x"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                             "parameters": {"binary_data_size": 12}}]},
     400, "inputs.x"),
    ("/v2/models/affine/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                             "data": [1, 2, 3]}],
                                 "outputs": [{"name": "q"}]}, 400, "outputs[0]"),
])
async def test_v2_bad_requests(start_gateway: GatewayFactory, mixed_repository: Path,
                               path: str, body: dict[str, Any], status: int, field: str) -> None:
    gateway = await start_gateway(model_repository=mixed_repository)
    response = await gateway.client.post(path, json=body)
    error = await response.json()
    assert response.status == status, error
    assert error["field"] == field  # the KServe shape: {"error": "<message>", "field", ...}
    assert isinstance(error["error"], str)


async def test_tritonclient_sees_errors_as_exceptions(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()

    def call() -> None:
        client = triton(gateway)
        try:
            client.get_model_metadata("nope")
        finally:
            client.close()

    with pytest.raises(InferenceServerException) as raised:
        await asyncio.to_thread(call)
    assert raised.value.status() == "404"


async def test_ranker_ids_past_the_vocabulary_are_400(start_gateway: GatewayFactory,
                                                      heldout: list[dict[str, Any]],
                                                      reference: Reference) -> None:
    gateway = await start_gateway()
    tensors = reference.tensors(heldout[0])
    tensors["item_cat"] = tensors["item_cat"].copy()
    tensors["item_cat"][0, 0] = 10**9
    body = {"inputs": [{"name": name, "datatype": "INT64" if v.dtype == np.int64 else "FP32",
                        "shape": list(v.shape), "data": v.ravel().tolist()}
                       for name, v in tensors.items()]}
    response = await gateway.client.post("/v2/models/feed_ranker/infer", json=body)
    error = await response.json()
    assert response.status == 400, error
    assert error["field"] == "inputs.item_cat"
