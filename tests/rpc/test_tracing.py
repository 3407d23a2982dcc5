"""gRPC calls are traced like HTTP requests: a SERVER span per call, parented by the
caller's W3C ``traceparent`` metadata, with the data plane's phases beneath it."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving.rpc.client import RankingClient, build
from serving.rpc.ranking import ROUTE
from tests.rpc.conftest import RpcFactory
from tests.trace_export import TRACE_ID, TRACEPARENT


async def test_rank_call_span_continues_the_callers_trace(
        start_rpc: RpcFactory, heldout: list[dict[str, Any]],
        exported: InMemorySpanExporter) -> None:
    rpc = await start_rpc()
    async with RankingClient(rpc.target) as client:
        await client.rank_message(build(heldout[0]), metadata=(("traceparent", TRACEPARENT),))
    spans = exported.get_finished_spans()
    (server,) = [s for s in spans if s.name == ROUTE]
    assert server.kind == SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    children = {s.name for s in spans if s.parent is not None
                and s.parent.span_id == server.context.span_id}
    assert "encode" in children
