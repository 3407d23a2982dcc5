"""Load shedding, deadlines and disconnects, with the backend held at a gate so the test
decides what is running; every batch still runs on real ONNX Runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from tests.gateway.conftest import Gateway, GatewayFactory, Reference

JSON = {"Content-Type": "application/json"}


def rows(document: dict[str, Any], n: int) -> dict[str, Any]:
    """``document`` with its candidates repeated up to ``n`` rows."""
    candidates = document["candidates"]
    return {**document, "candidates": [candidates[i % len(candidates)] for i in range(n)]}


async def post(gateway: Gateway, document: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    response = await gateway.client.post("/v1/rank", data=orjson.dumps(document),
                                         headers={**JSON, **(headers or {})})
    return response.status, await response.json(), response.headers


async def until(condition: Callable[[], bool]) -> None:
    """Poll server-side state (the batcher's queue, a metric) for up to 10 s."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in 10 s")


async def test_overload_is_refused_at_once_with_retry_after(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(max_queue_rows=600, max_wait_ms=0.0)
    document = {**heldout[0], "budget_ms": 10_000}
    gateway.backend.gate.clear()
    running = asyncio.ensure_future(post(gateway, rows(document, 100)))
    await gateway.backend.until_waiting(1)
    queued = asyncio.ensure_future(post(gateway, rows(document, 500)))
    await until(lambda: gateway.queued_rows() == 500 + 1)  # and its user row
    status, error, headers = await post(gateway, rows(document, 200))
    assert status == 429
    assert error["error"]["code"] == "overloaded"
    assert int(headers["Retry-After"]) >= 1
    assert not gateway.backend.gate.is_set()  # answered while the backend was still busy
    assert gateway.metric("rankserve_shed_total") == 1
    gateway.backend.gate.set()
    assert [(await t)[0] for t in (running, queued)] == [200, 200]


async def test_impossible_budget_is_504_without_computing(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    status, error, _ = await post(gateway, {**heldout[0], "budget_ms": 0.001})
    assert status == 504
    assert error["error"]["code"] == "deadline_exceeded"
    status, error, _ = await post(gateway, heldout[1], {"X-Request-Budget-Ms": "0.001"})
    assert status == 504
    assert gateway.backend.calls == []
    assert gateway.metric("rankserve_deadline_exceeded_total") == 2


async def test_budget_running_out_in_the_queue_is_504_unscored(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(max_wait_ms=0.0)
    gateway.backend.gate.clear()
    running = asyncio.ensure_future(post(gateway, {**heldout[0], "budget_ms": 10_000}))
    await gateway.backend.until_waiting(1)
    status, error, _ = await post(gateway, {**rows(heldout[1], 77), "budget_ms": 50})
    assert status == 504
    assert error["error"]["code"] == "deadline_exceeded"
    gateway.backend.gate.set()
    assert (await running)[0] == 200
    assert all(len(call["item_id"]) != 77 for call in gateway.backend.calls)


async def test_disconnected_client_leaves_the_queue(start_gateway: GatewayFactory,
                                                    heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(max_wait_ms=0.0)
    gateway.backend.gate.clear()
    running = asyncio.ensure_future(post(gateway, {**heldout[0], "budget_ms": 10_000}))
    await gateway.backend.until_waiting(1)
    leaving = asyncio.ensure_future(post(gateway, {**rows(heldout[1], 333),
                                                   "budget_ms": 10_000}))
    await until(lambda: gateway.queued_rows() == 333 + 1)  # and its user row
    leaving.cancel()  # the client closes its connection
    await until(lambda: gateway.queued_rows() == 0)
    gateway.backend.gate.set()
    assert (await running)[0] == 200
    assert len(gateway.backend.calls) == 1  # the abandoned rows were never scored


async def test_disconnect_during_a_running_batch_spares_the_others(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        reference: Reference) -> None:
    gateway = await start_gateway(max_wait_ms=300.0)
    documents = [{**d, "budget_ms": 10_000, "return_tasks": True} for d in heldout[2:5]]
    gateway.backend.gate.clear()
    tasks = [asyncio.ensure_future(post(gateway, d)) for d in documents]
    await gateway.backend.until_waiting(1)
    assert len(gateway.backend.calls[0]["item_id"]) == sum(
        len(d["candidates"]) for d in documents)  # all three share the running batch
    tasks[1].cancel()
    await until(lambda: gateway.metric("rankserve_request_latency_seconds_count",
                                       {"route": "/v1/rank", "status": "499",
                                        "status_class": "4xx", "model": "feed_ranker",
                                        "version": "1"}) == 1)
    gateway.backend.gate.set()
    for i in (0, 2):
        status, answer, _ = await tasks[i]
        assert status == 200
        reference.check(documents[i], answer)
    status, answer, _ = await post(gateway, documents[1])  # and the batcher still works
    assert status == 200
    reference.check(documents[1], answer)
