"""/v1/rank end to end over loopback HTTP, against direct ONNX Runtime scores."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from serving.client import RankClient, SyncRankClient, encode_request
from tests.gateway.conftest import GatewayFactory, Reference


async def post(gateway: Any, document: dict[str, Any], **headers: str) -> tuple[int, Any]:
    response = await gateway.client.post("/v1/rank", data=orjson.dumps(document),
                                         headers={"Content-Type": "application/json",
                                                  **headers})
    return response.status, await response.json()


async def test_scores_equal_direct_onnx_runtime(start_gateway: GatewayFactory,
                                                heldout: list[dict[str, Any]],
                                                reference: Reference) -> None:
    gateway = await start_gateway()
    for document in heldout[:15]:
        status, answer = await post(gateway, {**document, "return_tasks": True,
                                              "budget_ms": 5000})
        assert status == 200, answer
        reference.check(document, answer)
        assert answer["request_id"] == document["request_id"]
        assert answer["model"] == {"name": "feed_ranker", "version": 1}
        assert answer["degraded"] is False


async def test_100_concurrent_requests_batched_each_get_their_own(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway(max_wait_ms=20.0)
    documents = sorted(heldout, key=lambda d: len(d["candidates"]))[-100:]
    assert len({len(d["candidates"]) for d in documents}) > 10
    answers = await asyncio.gather(*(
        post(gateway, {**d, "return_tasks": True, "budget_ms": 10_000}) for d in documents))
    for document, (status, answer) in zip(documents, answers, strict=True):
        assert status == 200, answer
        reference.check(document, answer)
    batches = gateway.metric("rankserve_batch_rows_count", {"model": "feed_ranker"})
    assert 0 < batches < 100  # requests really shared batches
    assert max(a["timings"]["batch_rows"] for _, a in answers) > max(
        len(d["candidates"]) for d in documents)


async def test_row_columnar_and_binary_encodings_agree(start_gateway: GatewayFactory,
                                                       heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    async with RankClient(gateway.url) as client:
        for document in heldout[20:30]:
            answers = [await client.rank(document, return_tasks=True, budget_ms=5000,
                                         encoding=encoding)
                       for encoding in ("json", "columnar", "binary")]
            first = answers[0]
            for other in answers[1:]:
                np.testing.assert_array_equal(other.video_id, first.video_id)
                np.testing.assert_array_equal(other.score, first.score)
                assert other.probs.keys() == first.probs.keys()
                for task in first.probs:
                    np.testing.assert_array_equal(other.probs[task], first.probs[task])


async def test_top_k_weights_and_task_selection(start_gateway: GatewayFactory,
                                                heldout: list[dict[str, Any]],
                                                reference: Reference) -> None:
    gateway = await start_gateway()
    document = max(heldout, key=lambda d: len(d["candidates"]))
    status, answer = await post(gateway, {**document, "top_k": 5, "budget_ms": 5000,
                                          "weights": {"like": 0.0, "follow": 100.0},
                                          "return_tasks": ["follow", "click"]})
    assert status == 200, answer
    assert len(answer["video_id"]) == 5
    assert set(answer["probs"]) == {"follow", "click"}
    probs = reference.probs(document)
    weights = dict(zip(reference.card.tasks, reference.weights(), strict=True))
    weights.update(like=0.0, follow=100.0)
    scores = probs.astype(np.float64) @ np.array([weights[t] for t in reference.card.tasks])
    np.testing.assert_allclose(answer["score"], np.sort(scores)[::-1][:5], atol=1e-6)


async def test_budget_header_and_sync_client(start_gateway: GatewayFactory,
                                             heldout: list[dict[str, Any]],
                                             reference: Reference) -> None:
    gateway = await start_gateway()
    document = heldout[40]
    status, answer = await post(gateway, {**document, "return_tasks": True},
                                **{"X-Request-Budget-Ms": "5000"})
    assert status == 200
    reference.check(document, answer)

    def rank_blocking() -> Any:
        with SyncRankClient(gateway.url, encoding="binary") as client:
            return [client.rank(document, return_tasks=True, budget_ms=5000)
                    for _ in range(2)]  # the second call reuses the connection

    for ranked in await asyncio.to_thread(rank_blocking):
        np.testing.assert_array_equal(ranked.video_id, answer["video_id"])
    body, content_type = encode_request(document, "binary")
    assert content_type == "application/x-rankserve-columns"
    assert body[:4] == b"RSC1"
