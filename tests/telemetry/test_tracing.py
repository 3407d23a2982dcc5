"""OpenTelemetry traces of real ``/v1/rank`` requests over HTTP, exported to memory: the span
tree of one request, the caller's ``traceparent`` honoured, batches linked to the requests
they carry, and nothing recorded (nor any header added) with tracing off."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving.gateway.keys import DATA_PLANE
from serving.settings import Settings
from serving.telemetry import tracing
from serving.train.data import load_requests
from tests.rollout.conftest import MODEL, GatedBackend, gateways
from tests.rollout.test_shadow import until
from tests.trace_export import PARENT_ID, TRACE_ID, TRACEPARENT
from tests.triton.rank_requests import running_gateway

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
PHASES = {"decode", "encode", "queue wait", "backend", "rank"}


def settings(**overrides: Any) -> Settings:
    return Settings(**{"model_repository": REPOSITORY, "port": 0,
                       "providers": ["CPUExecutionProvider"], "default_budget_ms": 10_000.0,
                       **overrides})


async def post(session: aiohttp.ClientSession, url: str, document: dict[str, Any],
               headers: dict[str, str] | None = None) -> int:
    async with session.post(f"{url}/v1/rank", json=document, headers=headers) as response:
        await response.read()
        return response.status


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_one_request_has_the_expected_span_tree(
        exported: InMemorySpanExporter) -> None:
    document = load_requests(limit=1)[0]
    async with running_gateway(settings()) as (url, _), aiohttp.ClientSession() as session:
        exported.clear()  # warm-up batches at start are not a request's
        assert await post(session, url, document, {"traceparent": TRACEPARENT}) == 200
    spans = list(exported.get_finished_spans())
    (request,) = named(spans, "POST /v1/rank")
    assert request.kind is SpanKind.SERVER
    assert request.context is not None
    assert request.parent is not None
    assert f"{request.context.trace_id:032x}" == TRACE_ID  # the caller's trace...
    assert f"{request.parent.span_id:016x}" == PARENT_ID   # ...under the caller's span
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    children = [s for s in spans
                if s.parent is not None and s.parent.span_id == request.context.span_id]
    assert {s.name for s in children} == PHASES
    for child in children:
        assert child.start_time is not None
        assert child.end_time is not None
        assert request.start_time is not None
        assert request.end_time is not None
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    (batch,) = named(spans, "batch")
    assert batch.context is not None
    assert batch.parent is None  # a root of its own...
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    batch_children = [s for s in spans
                      if s.parent is not None and s.parent.span_id == batch.context.span_id]
    assert [s.name for s in batch_children] == ["backend"]  # ...with the backend call in it


async def test_a_batch_links_every_request_it_carries(exported: InMemorySpanExporter) -> None:
    """One request holds the only instance (its batch waits at a gate); three more queue
    meanwhile and so leave together in the next batch, which must link all three."""
    first, *rest = load_requests(limit=4)
    async with gateways() as start:
        gateway = await start(gated={MODEL}, model_repository=REPOSITORY, instances=1)
        backend = gateway.backends[0]
        assert isinstance(backend, GatedBackend)
        batcher = gateway.app[DATA_PLANE].batchers[MODEL]
        exported.clear()
        backend.gate.clear()
        held = asyncio.ensure_future(gateway.rank(first))
        await until(lambda: backend.held > 0)
        queued = [asyncio.ensure_future(gateway.rank(d)) for d in rest]
        rows = sum(len(d["candidates"]) for d in rest)
        await until(lambda: batcher.queued_rows >= rows)
        backend.gate.set()
        answers = await asyncio.gather(held, *queued)
    assert [status for status, _ in answers] == [200] * 4
    spans = list(exported.get_finished_spans())
    requests = [s for s in named(spans, "POST /v1/rank") if s.context is not None]
    assert len(requests) == 4
    by_links = sorted(len(b.links) for b in named(spans, "batch"))
    assert by_links == [1, 3]
    linked = {link.context.span_id for b in named(spans, "batch") for link in b.links}
    assert linked == {s.context.span_id for s in requests if s.context is not None}


async def test_tracing_off_records_nothing_and_injects_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.inject() is None
    assert tracing.extract({"traceparent": TRACEPARENT}) is None
    with tracing.request_span("x", {"traceparent": TRACEPARENT}) as started:
        assert started is None
        assert tracing.current() is None


def test_inject_carries_the_current_span(exported: InMemorySpanExporter) -> None:
    with tracing.request_span("x", [("traceparent", TRACEPARENT)]):  # gRPC metadata pairs
        headers = tracing.inject()
    assert headers is not None
    assert headers["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert tracing.extract([("traceparent", b"not a traceparent")]) is not None  # ignored


def test_configure_reads_the_standard_variables() -> None:
    try:
        assert not tracing.configure({})
        assert not tracing.configure({"OTEL_TRACES_EXPORTER": "none"})
        assert not tracing.configure({"OTEL_TRACES_EXPORTER": "console",
                                      "OTEL_SDK_DISABLED": "true"})
        assert not tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin-ish"})  # warned, off
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"})
        assert tracing.enabled()
    finally:
        tracing.shutdown()
    assert not tracing.enabled()
