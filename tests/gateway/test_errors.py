"""Bad input: each is a 4xx JSON error naming the field, and none disturbs a good request
being scored at the same time."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest

from serving.client import encode_request
from tests.gateway.conftest import GatewayFactory, Reference

JSON = "application/json"


def cases(good: dict[str, Any]) -> list[tuple[str, bytes, dict[str, str], int, str]]:
    """(name, body, headers, status, field) for each bad input."""
    def doc(**changes: Any) -> bytes:
        return orjson.dumps({**good, **changes})

    rows = good["candidates"]
    columns = {"video_id": [r["video_id"] for r in rows], "author_id": [1] * (len(rows) + 1)}
    binary_doc = {k: v for k, v in good.items() if k != "candidates"}
    inf_body, _ = encode_request({**binary_doc, "candidates": {
        "video_id": [r["video_id"] for r in rows],
        "duration_ms": [math.inf] * len(rows)}}, "binary")
    first = dict(rows[0])
    del first["video_id"]
    return [
        ("not json", b"{nope", {}, 400, "body"),
        ("json array", b"[1, 2]", {}, 400, "body"),
        ("nan literal", b'{"user": {"user_id": NaN}}', {}, 400, "body"),
        ("no user", doc(user=None), {}, 400, "user"),
        ("user not object", doc(user=[1]), {}, 400, "user"),
        ("no user id", doc(user={"fans_user_num": 3}), {}, 400, "user.user_id"),
        ("user feature is a list", doc(user={**good["user"], "fans_user_num": [1]}), {}, 400,
         "user.fans_user_num"),
        ("no candidates", doc(candidates=None), {}, 400, "candidates"),
        ("empty candidates", doc(candidates=[]), {}, 400, "candidates"),
        ("too many candidates", doc(candidates=[{"video_id": 1}] * 1001), {}, 413,
         "candidates"),
        ("candidate without id", doc(candidates=[first, *rows[1:]]), {}, 400,
         "candidates.video_id"),
        ("id is a string", doc(candidates=[{"video_id": "abc"}]), {}, 400,
         "candidates.video_id"),
        ("fractional category", doc(candidates=[{"video_id": 1, "author_id": 1.5}]), {}, 400,
         "candidates.author_id"),
        ("candidate row not object", doc(candidates=[1, 2]), {}, 400, "candidates[0]"),
        ("ragged columns", doc(candidates=columns), {}, 400, "candidates.author_id"),
        ("infinite number (binary)", inf_body,
         {"Content-Type": "application/x-rankserve-columns"}, 400, "candidates.duration_ms"),
        ("bad binary magic", b"XXXX\x02\x00\x00\x00{}",
         {"Content-Type": "application/x-rankserve-columns"}, 400, "body"),
        ("history not a list", doc(history=5), {}, 400, "history"),
        ("unknown task weight", doc(weights={"nope": 1.0}), {}, 400, "weights.nope"),
        ("weight not a number", doc(weights={"click": "high"}), {}, 400, "weights.click"),
        ("unknown return task", doc(return_tasks=["nope"]), {}, 400, "return_tasks"),
        ("top_k zero", doc(top_k=0), {}, 400, "top_k"),
        ("negative budget", doc(budget_ms=-5), {}, 400, "budget_ms"),
        ("budget header not a number", doc(), {"X-Request-Budget-Ms": "soon"}, 400,
         "X-Request-Budget-Ms"),
        ("unknown model", doc(model="nope"), {}, 404, "model"),
        ("unknown field", doc(candidate=[]), {}, 400, "candidate"),
        ("wrong content type", doc(), {"Content-Type": "text/plain"}, 415, "Content-Type"),
        ("body over the limit", b"{" + b" " * 70_000 + b"}", {}, 413, "body"),
    ]


async def test_bad_inputs_are_4xx_naming_the_field_and_harm_no_one(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway(max_candidates=1000, max_body_bytes=65_536, max_wait_ms=50.0)
    good = max(heldout, key=lambda d: len(d["candidates"]))
    bad = cases({**good, "budget_ms": 10_000})
    assert len(bad) >= 15

    async def send(body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        response = await gateway.client.post("/v1/rank", data=body,
                                             headers={"Content-Type": JSON, **headers})
        return response.status, await response.json()

    good_body = orjson.dumps({**good, "return_tasks": True, "budget_ms": 10_000})
    results = await asyncio.gather(send(good_body, {}),
                                   *(send(body, headers) for _, body, headers, _, _ in bad))
    status, answer = results[0]
    assert status == 200, answer
    reference.check(good, answer)
    for (name, _, _, want_status, want_field), (status, error) in zip(bad, results[1:],
                                                                      strict=True):
        assert status == want_status, (name, error)
        assert error["error"]["field"] == want_field, (name, error)
        assert error["error"]["code"], name
        assert error["error"]["message"], name
        assert error["request_id"], name


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nope", 404, "not_found"),
    ("GET", "/v1/rank", 405, "method_not_allowed"),
])
async def test_routing_errors_have_the_same_shape(start_gateway: GatewayFactory, method: str,
                                                  path: str, status: int, code: str) -> None:
    gateway = await start_gateway()
    response = await gateway.client.request(method, path, headers={"X-Request-Id": "abc"})
    assert response.status == status
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["request_id"] == "abc" == response.headers["X-Request-Id"]


async def test_auth_token_is_required_when_set(start_gateway: GatewayFactory,
                                               heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(auth_token="s3cret")
    body = orjson.dumps({**heldout[0], "budget_ms": 5000})
    denied = await gateway.client.post("/v1/rank", data=body, headers={"Content-Type": JSON})
    assert denied.status == 401
    assert (await denied.json())["error"]["field"] == "Authorization"
    allowed = await gateway.client.post("/v1/rank", data=body, headers={
        "Content-Type": JSON, "Authorization": "Bearer s3cret"})
    assert allowed.status == 200
    assert (await gateway.client.get("/healthz")).status == 200  # probes need no token
