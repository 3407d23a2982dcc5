"""Admission counts what a request really costs: every row a batch carries (user rows too)
counts against the queue and batch limits, and ``/v2`` obeys ``/v1/rank``'s per-request
limits (413 past them). Real HTTP to a gateway whose real backend is held at a gate.

Before: a ``/v2`` request with 80,000 user rows and one candidate was admitted as one row,
and a 200,000-row ``/v2`` request was admitted whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from serving.train.data import DEFAULT_SCHEMA
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.test_overload import until
from tests.reliability.live_gateway import error_of

JSON = {"Content-Type": "application/json"}
INFER = "/v2/models/feed_ranker/infer"
WIDTHS = {name: width or 0 for name, _, width in DEFAULT_SCHEMA.inputs()}
USER_SIDE = frozenset({"user_id", "user_cat", "user_num", "history"})


def ranker_body(users: int, items: int) -> bytes:
    """A valid ``/v2`` request for the ranker: ``users`` user rows, ``items`` candidates
    (every id 0, the out-of-vocabulary id; every candidate belongs to user row 0)."""
    inputs: list[dict[str, Any]] = []
    for name, width in WIDTHS.items():
        rows = users if name in USER_SIDE else items
        shape = [rows, width] if width else [rows]
        count = rows * max(width, 1)
        datatype = "FP32" if name.endswith("_num") else "INT64"
        inputs.append({"name": name, "shape": shape, "datatype": datatype,
                       "data": [0.0 if datatype == "FP32" else 0] * count})
    return orjson.dumps({"inputs": inputs})


async def infer(gateway: Gateway, body: bytes) -> tuple[int, Any]:
    response = await gateway.client.post(INFER, data=body, headers=JSON)
    return response.status, await response.json()


async def test_v2_obeys_the_per_request_row_limits(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(max_candidates=100, max_user_rows=8)
    status, error = await infer(gateway, ranker_body(1, 101))
    assert (status, error_of(error)["field"]) == (413, "inputs.item_id"), error
    assert "at most 100" in error_of(error)["message"]
    status, error = await infer(gateway, ranker_body(9, 1))
    assert (status, error_of(error)["field"]) == (413, "inputs.user_id"), error
    status, answer = await infer(gateway, ranker_body(8, 100))
    assert status == 200, answer
    assert answer["outputs"][0]["shape"] == [100, 7]


async def test_user_rows_count_against_the_queue_and_the_batch(
        start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(max_queue_rows=800, max_wait_ms=0.0, batch_rows=512)
    gateway.backend.gate.clear()
    running = asyncio.ensure_future(infer(gateway, ranker_body(1, 1)))
    await gateway.backend.until_waiting(1)
    queued = [asyncio.ensure_future(infer(gateway, ranker_body(300, 10))) for _ in range(2)]
    await until(lambda: gateway.queued_rows() == 2 * 310)
    status, error = await infer(gateway, ranker_body(200, 1))  # 620 + 201 > 800 rows
    assert status == 429, error
    assert error_of(error)["code"] == "overloaded"
    gateway.backend.gate.set()
    assert [(await task)[0] for task in (running, *queued)] == [200, 200, 200]
    carried = [len(call["user_id"]) + len(call["item_id"]) for call in gateway.backend.calls]
    assert carried == [2, 310, 310]  # 620 rows do not fit one 512-row batch


async def test_v2_with_no_rows_never_reaches_the_model(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    for users, items in ((0, 0), (1, 0)):
        status, error = await infer(gateway, ranker_body(users, items))
        assert (status, error_of(error)["field"]) == (400, "inputs.item_id"), error
    assert gateway.backend.calls == []
