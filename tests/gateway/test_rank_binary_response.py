"""Binary ``/v1/rank`` answers (``Accept: application/x-rankserve-columns``) over loopback
HTTP, read by serving/client.py: the same ranking as the JSON answer, bit for bit."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from serving.client import RankClient, RankResponse, RankServeClientError, SyncRankClient
from serving.gateway.rank_codec import wants_columns
from serving.wire import columns as columns_codec
from tests.gateway.conftest import GatewayFactory, Reference


def as_answer(ranked: RankResponse) -> dict[str, Any]:
    """A client answer in the JSON answer's shape, for :meth:`Reference.check`."""
    return {"video_id": ranked.video_id, "score": ranked.score, "probs": ranked.probs}


async def test_binary_answers_round_trip_through_the_client(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway()
    async with RankClient(gateway.url, encoding="binary") as binary, \
            RankClient(gateway.url, encoding="binary", binary_response=False) as json_answers:
        for document in heldout[50:58]:
            got = await binary.rank(document, return_tasks=True, budget_ms=5000)
            want = await json_answers.rank(document, return_tasks=True, budget_ms=5000)
            reference.check(document, as_answer(got))
            np.testing.assert_array_equal(got.video_id, want.video_id)
            np.testing.assert_array_equal(got.score, want.score)
            assert got.probs.keys() == want.probs.keys() == set(reference.card.tasks)
            for task, probs in want.probs.items():
                np.testing.assert_array_equal(got.probs[task].astype(np.float64), probs)
            assert got.request_id == document["request_id"]
            assert (got.model, got.version, got.degraded) == ("feed_ranker", 1, False)
            assert got.timings["batch_rows"] >= len(document["candidates"])


async def test_the_answer_is_binary_only_when_accept_asks(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    document = {**heldout[60], "top_k": 3, "return_tasks": ["like"], "budget_ms": 5000}
    body = columns_codec.encode({k: v for k, v in document.items() if k != "candidates"},
                                {"video_id": [c["video_id"] for c in document["candidates"]]})
    for accept, binary in ((columns_codec.CONTENT_TYPE, True), ("application/json", False),
                           (f"{columns_codec.CONTENT_TYPE};q=0, application/json", False),
                           ("", False)):
        response = await gateway.client.post("/v1/rank", data=body, headers={
            "Content-Type": columns_codec.CONTENT_TYPE, "Accept": accept})
        payload = await response.read()
        assert response.status == 200, payload
        if not binary:
            assert response.content_type == "application/json"
            continue
        assert response.content_type == columns_codec.CONTENT_TYPE
        head, columns = columns_codec.decode(payload)
        assert sorted(columns) == ["probs.like", "score", "video_id"]  # only what was asked
        assert len(columns["video_id"]) == 3
        assert columns["probs.like"].dtype == np.float32  # the model's value, exact
        assert head["request_id"] == document["request_id"]


async def test_errors_stay_json_when_binary_is_accepted(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()

    def rank_blocking() -> None:
        with SyncRankClient(gateway.url, encoding="binary") as client:
            client.rank(heldout[0], weights={"no_such_task": 1.0})

    with pytest.raises(RankServeClientError) as error:
        await asyncio.to_thread(rank_blocking)
    assert (error.value.status, error.value.field) == (400, "weights.no_such_task")


@pytest.mark.parametrize(("accept", "binary"), [
    ("application/x-rankserve-columns", True),
    ("application/json;q=0.9, Application/X-Rankserve-Columns ; q=0.5", True),
    ("application/x-rankserve-columns;q=0", False),
    ("application/x-rankserve-columns;q=zero", False),
    ("application/json, */*", False),
    ("", False),
])
def test_accept_header_parsing(accept: str, binary: bool) -> None:
    assert wants_columns(accept) is binary
