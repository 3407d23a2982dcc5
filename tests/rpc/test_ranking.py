"""The Ranking service over real gRPC on loopback: the same answers and errors as
``/v1/rank``, deadlines, cancellation and auth."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import orjson
import pytest

from serving.rpc.client import (
    RankingClient,
    RankingError,
    SyncRankingClient,
    build,
    column_values,
)
from serving.rpc.stubs import ranking_pb2 as pb
from tests.gateway.conftest import Reference
from tests.rpc.conftest import RpcFactory


async def v1_rank(rpc: Any, document: dict[str, Any]) -> dict[str, Any]:
    response = await rpc.gateway.client.post(
        "/v1/rank", data=orjson.dumps(document), headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def test_rank_equals_v1_rank_and_direct_onnx(start_rpc: RpcFactory,
                                                    heldout: list[dict[str, Any]],
                                                    reference: Reference) -> None:
    rpc = await start_rpc()
    async with RankingClient(rpc.target) as client:
        for document in heldout[:8]:
            options = {"return_tasks": True, "weights": {"like": 3.0}}
            http = await v1_rank(rpc, {**document, **options})
            ranked = await client.rank(document, **options)
            assert ranked.ids.tolist() == http["video_id"]
            np.testing.assert_array_equal(ranked.score, http["score"])
            for task, probs in http["probs"].items():
                np.testing.assert_array_equal(ranked.probs[task], np.float32(probs))
            assert (ranked.model, ranked.version, ranked.degraded) == (
                http["model"]["name"], http["model"]["version"], http["degraded"])
            assert ranked.id_field == "video_id"
        # and equal to ONNX Runtime itself (default weights)
        document = heldout[10]
        ranked = await client.rank(document, return_tasks=True)
        reference.check(document, {"video_id": ranked.ids, "score": ranked.score,
                                   "probs": ranked.probs})


async def test_options_top_k_tasks_ignored_features_and_request_id(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc()
    document = max(heldout[:100], key=lambda d: len(d["candidates"]))
    document = {k: v for k, v in document.items() if k != "request_id"}
    document["user"] = {**document["user"], "not_a_feature": 1}
    assert len(document["candidates"]) > 3
    async with RankingClient(rpc.target) as client:
        ranked = await client.rank(document, top_k=3, return_tasks=["click"],
                                   request_id="feed-42")
        http = await v1_rank(rpc, {**document, "top_k": 3, "return_tasks": ["click"]})
    assert ranked.ids.tolist() == http["video_id"]
    assert len(ranked.ids) == 3
    assert list(ranked.probs) == ["click"]
    assert ranked.ignored_features == http["ignored_features"] == ["user.not_a_feature"]
    assert ranked.request_id == "feed-42"


async def test_sync_client(start_rpc: RpcFactory, heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc()

    def call() -> Any:
        with SyncRankingClient(rpc.target) as client:
            return client.rank(heldout[0], top_k=3)

    ranked = await asyncio.to_thread(call)
    http = await v1_rank(rpc, {**heldout[0], "top_k": 3})
    assert ranked.ids.tolist() == http["video_id"]


@pytest.mark.parametrize(("change", "status", "code", "field"), [
    (lambda d: {**d, "candidates": []}, grpc.StatusCode.INVALID_ARGUMENT,
     "missing_feature", "candidates"),
    (lambda d: {**d, "user": {}}, grpc.StatusCode.INVALID_ARGUMENT, "missing_feature",
     "user.user_id"),
    (lambda d: {**d, "weights": {"nope": 1.0}}, grpc.StatusCode.INVALID_ARGUMENT,
     "bad_request", "weights.nope"),
    (lambda d: {**d, "return_tasks": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT,
     "bad_request", "return_tasks"),
    (lambda d: {**d, "budget_ms": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
     "budget_ms"),
    (lambda d: {**d, "model": "nope"}, grpc.StatusCode.NOT_FOUND, "not_found", "model"),
    (lambda d: {**d, "candidates": d["candidates"] * 21}, grpc.StatusCode.INVALID_ARGUMENT,
     "payload_too_large", "candidates"),
])
async def test_errors_carry_status_code_and_field(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]], change: Any,
        status: grpc.StatusCode, code: str, field: str) -> None:
    rpc = await start_rpc(max_candidates=20)
    document = change({k: v for k, v in heldout[0].items() if k != "request_id"})
    async with RankingClient(rpc.target) as client:
        with pytest.raises(RankingError) as raised:
            await client.rank(document, request_id="bad-1")
    error = raised.value
    assert (error.status, error.code, error.field) == (status, code, field), str(error)
    assert error.request_id == "bad-1"
    assert error.message
    assert error.message in str(error)


def typed(message: Any) -> Any:
    """The same request with every candidate column as typed lists (no raw bytes, no
    dictionary), the form other languages' stubs produce most simply."""
    out = pb.RankRequest()
    out.CopyFrom(message)
    for name, column in message.candidates.items():
        values = column_values(column)
        missing = [i for i, v in enumerate(values) if v is None or v != v]
        target = out.candidates[name]
        target.Clear()
        target.missing.extend(missing)
        if column.WhichOneof("values") == "dictionary":
            target.string_values.values.extend(["" if v is None else v for v in values])
        elif column.WhichOneof("values") == "int64_le":
            target.int64_values.values.extend(values.tolist())
        else:
            target.double_values.values.extend(np.nan_to_num(values).tolist())
    return out


async def test_typed_columns_rank_like_raw_ones(start_rpc: RpcFactory,
                                                heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc()
    async with RankingClient(rpc.target) as client:
        for document in heldout[20:26]:
            message = build(document, return_tasks=True)
            raw = await client.rank_message(message)
            plain = await client.rank_message(typed(message))
            assert plain.ids.WhichOneof("values") == "int64_le"
            assert column_values(plain.ids).tolist() == column_values(raw.ids).tolist()
            assert list(plain.scores) == list(raw.scores)


@pytest.mark.parametrize(("column", "field"), [
    (pb.Column(int64_le=b"\0" * 7), "candidates.video_id.int64_le"),
    (pb.Column(), "candidates.video_id"),
    (pb.Column(int64_le=b"\0" * 8, missing=[3]), "candidates.video_id.missing"),
    (pb.Column(dictionary=pb.DictionaryStrings(values=["a"], codes_le=b"\5\0\0\0")),
     "candidates.video_id.dictionary.codes_le"),
])
async def test_malformed_columns_name_the_field(start_rpc: RpcFactory,
                                                heldout: list[dict[str, Any]], column: Any,
                                                field: str) -> None:
    rpc = await start_rpc()
    message = build(heldout[0])
    message.candidates["video_id"].CopyFrom(column)
    async with RankingClient(rpc.target) as client:
        with pytest.raises(RankingError) as raised:
            await client.rank_message(message)
    assert raised.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.field == field
