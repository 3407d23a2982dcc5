"""``/v2`` errors in the KServe v2 shape, as ``tritonclient.http`` reads them: the message
is the protocol's ``{"error": "<message>"}`` string, so ``str(exc)`` and ``exc.message()``
work; code, field and request id travel as extra keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_v2 import triton


def one_input() -> list[httpclient.InferInput]:
    entry = httpclient.InferInput("user_id", [1], "INT64")
    entry.set_data_from_numpy(np.array([1], dtype=np.int64))
    return [entry]


@pytest.mark.parametrize(("call", "status", "text"), [
    (lambda c: c.infer("feed_ranker", one_input()), "400", "missing input"),
    (lambda c: c.get_model_metadata("nope"), "404", "unknown model 'nope'"),
    (lambda c: c.get_model_metadata("feed_ranker", model_version="7"), "404",
     "has no version 7"),
    (lambda c: c.infer("feed_ranker", one_input(), model_version="7"), "404",
     "has no version 7"),
    (lambda c: c.get_inference_statistics(), "404", "statistics extension is not supported"),
    (lambda c: c.get_inference_statistics("feed_ranker"), "404",
     "statistics extension is not supported"),
])
async def test_tritonclient_errors_are_readable(start_gateway: GatewayFactory,
                                                call: Callable[[Any], Any], status: str,
                                                text: str) -> None:
    gateway = await start_gateway()

    def run() -> None:
        client = triton(gateway)
        try:
            call(client)
        finally:
            client.close()

    with pytest.raises(InferenceServerException) as raised:
        await asyncio.to_thread(run)
    error = raised.value
    assert text in str(error)  # once a TypeError: the message was an object
    assert text in error.message()
    assert error.status() == status


async def test_error_body_is_the_protocol_string_with_extra_keys(
        start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    response = await gateway.client.get("/v2/models/nope", headers={"X-Request-Id": "r-1"})
    body = await response.json()
    assert response.status == 404
    assert body == {"error": "unknown model 'nope'", "code": "not_found", "field": "model",
                    "request_id": "r-1"}
    assert response.headers["X-Request-Id"] == "r-1"
    # /v1 keeps its own shape
    response = await gateway.client.post("/v1/rank", json={})
    assert isinstance((await response.json())["error"], dict)


async def test_health_is_open_with_auth_and_statistics_is_not_listed(
        start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(auth_token="s3cret")

    def run() -> tuple[bool, bool, dict[str, Any]]:
        client = triton(gateway)
        try:
            with pytest.raises(InferenceServerException) as refused:
                client.get_server_metadata()
            assert refused.value.status() == "401"
            assert "bearer token" in str(refused.value)
            metadata = client.get_server_metadata(headers={"Authorization": "Bearer s3cret"})
            return client.is_server_live(), client.is_server_ready(), metadata
        finally:
            client.close()

    live, ready, metadata = await asyncio.to_thread(run)
    assert live
    assert ready
    assert "statistics" not in metadata["extensions"]
    assert "binary_tensor_data" in metadata["extensions"]
