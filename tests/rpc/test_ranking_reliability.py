"""The Ranking service under load, deadlines, cancellation, auth and size limits, with the
backend held at a gate so the test decides what is running (real ONNX Runtime batches)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from serving.gateway.dataplane import DataPlane
from serving.ranking.features import ITEM_TO_USER
from serving.rpc.client import RankingClient, RankingError
from serving.rpc.server import RpcServer
from serving.settings import Settings
from serving.telemetry.metrics import Metrics
from tests.gateway.conftest import REPOSITORY
from tests.gateway.test_overload import rows, until
from tests.rpc.conftest import RpcFactory


def plain(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "request_id"}


async def failure(client: RankingClient, document: dict[str, Any], **options: Any
                  ) -> RankingError:
    with pytest.raises(RankingError) as raised:
        await client.rank(document, **options)
    return raised.value


async def test_shed_load_is_resource_exhausted_with_retry_after(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc(max_queue_rows=600, max_wait_ms=0.0)
    gateway = rpc.gateway
    document = plain(heldout[0])
    gateway.backend.gate.clear()
    async with RankingClient(rpc.target) as client:
        running = asyncio.ensure_future(client.rank(rows(document, 100), budget_ms=10_000))
        await gateway.backend.until_waiting(1)
        queued = asyncio.ensure_future(client.rank(rows(document, 500), budget_ms=10_000))
        await until(lambda: gateway.queued_rows() == 500 + 1)
        error = await failure(client, rows(document, 200), budget_ms=10_000)
        assert error.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.code == "overloaded"
        assert error.retry_after_s is not None
        assert error.retry_after_s >= 1
        assert gateway.metric("rankserve_shed_total") == 1
        gateway.backend.gate.set()
        assert [len((await t).ids) for t in (running, queued)] == [100, 500]


async def test_grpc_deadline_is_the_budget(start_rpc: RpcFactory,
                                           heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc(max_wait_ms=0.0)
    gateway = rpc.gateway
    gateway.backend.gate.clear()
    async with RankingClient(rpc.target) as client:
        running = asyncio.ensure_future(client.rank(plain(heldout[0]), timeout_s=30))
        await gateway.backend.until_waiting(1)
        # queued behind the held batch: its 0.3 s gRPC deadline passes in the queue
        error = await failure(client, rows(plain(heldout[1]), 77), timeout_s=0.3)
        assert error.status == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: gateway.queued_rows() == 0)  # it left the queue, unscored
        gateway.backend.gate.set()
        assert len((await running).ids) == len(heldout[0]["candidates"])
    assert len(gateway.backend.calls) == 1


async def test_grpc_deadline_orders_the_queue(start_rpc: RpcFactory,
                                              heldout: list[dict[str, Any]]) -> None:
    """Earliest deadline first by the gRPC deadline: a later call with a shorter
    ``grpc-timeout`` is scored first (with the server default budget for both, arrival
    order would decide)."""
    rpc = await start_rpc(max_wait_ms=0.0, batch_rows=60)
    gateway = rpc.gateway
    gateway.backend.gate.clear()
    async with RankingClient(rpc.target) as client:
        running = asyncio.ensure_future(client.rank(rows(plain(heldout[0]), 5), timeout_s=30))
        await gateway.backend.until_waiting(1)
        relaxed = asyncio.ensure_future(client.rank(rows(plain(heldout[1]), 40), timeout_s=30))
        await until(lambda: gateway.queued_rows() == 41)
        urgent = asyncio.ensure_future(client.rank(rows(plain(heldout[2]), 50), timeout_s=5))
        await until(lambda: gateway.queued_rows() == 41 + 51)
        gateway.backend.gate.set()
        await asyncio.gather(running, relaxed, urgent)
    assert [len(c[ITEM_TO_USER]) for c in gateway.backend.calls] == [5, 50, 40]


async def test_impossible_deadline_is_refused_without_computing(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc()
    async with RankingClient(rpc.target) as client:
        error = await failure(client, plain(heldout[0]), budget_ms=0.001)
    assert error.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.code == "deadline_exceeded"
    assert rpc.gateway.backend.calls == []
    assert rpc.gateway.metric("rankserve_deadline_exceeded_total") == 1


async def test_cancelled_call_leaves_the_queue_and_spares_the_others(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc(max_wait_ms=0.0)
    gateway = rpc.gateway
    gateway.backend.gate.clear()
    async with RankingClient(rpc.target) as client:
        running = asyncio.ensure_future(client.rank(plain(heldout[0])))
        await gateway.backend.until_waiting(1)
        leaving = asyncio.ensure_future(client.rank(rows(plain(heldout[1]), 300)))
        staying = asyncio.ensure_future(client.rank(rows(plain(heldout[2]), 50)))
        await until(lambda: gateway.queued_rows() == 300 + 1 + 50 + 1)
        leaving.cancel()  # the client cancels its call: the server's handler is cancelled
        await until(lambda: gateway.queued_rows() == 50 + 1)
        gateway.backend.gate.set()
        assert len((await staying).ids) == 50
        await running
    assert leaving.cancelled()
    assert all(len(c[ITEM_TO_USER]) != 300 for c in gateway.backend.calls)


async def test_bearer_token_in_metadata(start_rpc: RpcFactory,
                                        heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc(auth_token="s3cret")
    document = plain(heldout[0])
    for token in (None, "wrong"):
        async with RankingClient(rpc.target, token=token) as client:
            error = await failure(client, document)
        assert (error.status, error.code, error.field) == (
            grpc.StatusCode.UNAUTHENTICATED, "unauthorized", "Authorization")
    async with RankingClient(rpc.target, token="s3cret") as client:
        assert len((await client.rank(document)).ids) == len(document["candidates"])
    assert len(rpc.gateway.backend.calls) == 1  # the refused calls never reached it


async def test_message_size_limit_is_max_body_bytes(start_rpc: RpcFactory,
                                                    heldout: list[dict[str, Any]]) -> None:
    rpc = await start_rpc(max_body_bytes=4096)
    async with RankingClient(rpc.target) as client:
        error = await failure(client, rows(plain(heldout[0]), 400))
        assert error.status == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc's own refusal
        assert len((await client.rank(plain(heldout[0]))).ids) > 0
    assert len(rpc.gateway.backend.calls) == 1  # only the small request reached it


async def test_not_loaded_is_unavailable(heldout: list[dict[str, Any]]) -> None:
    settings = Settings.load(None, model_repository=REPOSITORY, host="127.0.0.1", grpc_port=0)
    server = RpcServer(DataPlane(settings, Metrics()), settings, Metrics())
    await server.start()
    try:
        async with RankingClient(f"127.0.0.1:{server.port}") as client:
            error = await failure(client, plain(heldout[0]))
    finally:
        await server.stop(0)
    assert (error.status, error.code) == (grpc.StatusCode.UNAVAILABLE, "unavailable")
