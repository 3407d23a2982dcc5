"""The served model's schema over HTTP: what a caller may send, and names it may not."""

from __future__ import annotations

from typing import Any

import orjson

from tests.gateway.conftest import GatewayFactory, Reference
from tests.gateway.test_rank import post


def with_unknown(document: dict[str, Any]) -> dict[str, Any]:
    """The document with a feature of some other model on each side."""
    candidates = [{**c, "creator_followed": 1} for c in document["candidates"]]
    return {**document, "user": {**document["user"], "user_tenure_days": 3},
            "context": {**document["context"], "surface": "home"},
            "candidates": candidates, "budget_ms": 5000, "return_tasks": True}


async def test_unknown_features_are_reported_and_not_read(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway()
    status, answer = await post(gateway, with_unknown(heldout[0]))
    assert status == 200, answer
    assert sorted(answer["ignored_features"]) == ["candidates.creator_followed",
                                                  "context.surface", "user.user_tenure_days"]
    reference.check(heldout[0], answer)  # the same scores as without them
    status, plain = await post(gateway, {**heldout[0], "budget_ms": 5000})
    assert status == 200
    assert "ignored_features" not in plain


async def test_strict_mode_refuses_unknown_features(start_gateway: GatewayFactory,
                                                    heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(strict_features=True)
    status, answer = await post(gateway, with_unknown(heldout[0]))
    assert status == 400, answer
    assert answer["error"]["field"] in {"candidates.creator_followed", "context.surface",
                                        "user.user_tenure_days"}
    assert "user.user_tenure_days" in answer["error"]["message"]
    status, _ = await post(gateway, {**heldout[0], "budget_ms": 5000})
    assert status == 200


async def test_model_endpoint_lists_what_a_caller_may_send(
        start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    response = await gateway.client.get("/v1/models/feed_ranker")
    assert response.status == 200
    described = orjson.loads(await response.read())
    fields = {f["field"] for f in described["features"]}
    assert {"user.user_id", "candidates.video_id"} <= fields
    assert described["tasks"][:2] == ["click", "long_view"]
    assert described["versions"] == [1]
    missing = await gateway.client.get("/v1/models/nope")
    assert missing.status == 404
