"""Request tracing with OpenTelemetry: off unless the standard ``OTEL_*`` variables ask.

One request is one SERVER span (``rank`` for ``/v1/rank``, the route otherwise), started
from the caller's W3C ``traceparent`` when it sends one (HTTP headers, or gRPC metadata
through :func:`extract`), with child spans for its phases: ``decode``, ``encode``, ``queue
wait``, ``backend`` and ``rank``. A batch is its own span (``batch``), since it carries
many requests: it is *linked* to the span of every request it holds, and the backend call
inside it is its child, so the ``traceparent`` passed on to Triton (:func:`inject`) names
the batch.

Off (the default) every function here returns after one test of a module variable, with
no OpenTelemetry call: tens to a few hundred nanoseconds a hook, a couple of microseconds
a request (``python -m loadtests.experiments.tracing_overhead`` measures it). On, spans go
to the exporter that :func:`configure` builds from the environment, or to the provider a
test hands :func:`use` (an in-memory exporter).

Environment read by :func:`configure` (the OpenTelemetry names):

* ``OTEL_SDK_DISABLED=true``: off, whatever else is set;
* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none``; unset means ``otlp`` when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else off;
* ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: ``grpc`` (default) or ``http/protobuf``; the
  OTLP exporter package (``opentelemetry-exporter-otlp``) must be installed;
* the SDK itself reads ``OTEL_SERVICE_NAME`` (default here ``rankserve``),
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)`` and ``OTEL_BSP_*``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

Carrier = Mapping[str, str] | Iterable[tuple[str, str | bytes]]
"""HTTP headers (a mapping) or gRPC metadata (key/value pairs)."""

_PROPAGATOR = TraceContextTextMapPropagator()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether spans are being recorded (a provider is configured)."""
    return _tracer is not None


def use(provider: TracerProvider | None) -> None:
    """Record spans through ``provider`` (``None``: off). For tests and embedders; the
    gateway calls :func:`configure`."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("rankserve")


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on if the environment asks for it (module docstring); whether it is.

    An exporter that cannot be built (its package is missing, an unknown name) is a
    WARNING and tracing stays off: a tracing setting never stops the gateway.
    """
    exporter_name = _exporter_name(environ)
    if exporter_name is None:
        use(None)
        return False
    try:
        exporter = _exporter(exporter_name, environ)
    except (ImportError, ValueError) as e:
        log.warning("tracing stays off: %s", e)
        use(None)
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME", "rankserve")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    log.info("tracing on: %s exporter", exporter_name)
    return True


def shutdown() -> None:
    """Flush and stop the configured provider (the gateway's shutdown); then off."""
    provider = _provider
    use(None)
    if provider is not None:
        provider.shutdown()


def _exporter_name(environ: Mapping[str, str]) -> str | None:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
             if n.strip()]
    if not names:
        endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        return "otlp" if endpoint else None
    return None if names == ["none"] else names[0]


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    """The span exporter called ``name``.

    Raises:
        ImportError: its package is not installed (the message says which).
        ValueError: an exporter name or OTLP protocol this module does not know.
    """
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not one of otlp, console, none")
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        else:
            raise ValueError(f"OTLP protocol {protocol!r} is not grpc or http/protobuf")
    except ImportError as e:
        raise ImportError(f"the OTLP exporter needs `pip install opentelemetry-exporter-otlp` "
                          f"({e})") from e
    return OTLPSpanExporter()


# -- propagation ------------------------------------------------------------------------


class _Getter(Getter[Any]):
    """Reads a carrier that is either a mapping (HTTP headers, case-insensitive in aiohttp)
    or gRPC metadata pairs (lower-case keys by the protocol)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if isinstance(carrier, Mapping):
            value = carrier.get(key)
            return None if value is None else [value]
        values = [v.decode() if isinstance(v, bytes) else v for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier) if isinstance(carrier, Mapping) else [k for k, _ in carrier]


_GETTER = _Getter()


def extract(carrier: Carrier | None) -> otel_context.Context | None:
    """The caller's trace context from its W3C ``traceparent`` (and ``tracestate``), for
    :func:`request_span`; ``None`` when off or none was sent. A malformed ``traceparent``
    is ignored (a new trace starts), never an error."""
    if _tracer is None or carrier is None:
        return None
    if isinstance(carrier, Mapping):
        if "traceparent" not in carrier:
            return None
    else:
        carrier = list(carrier)
    return _PROPAGATOR.extract(carrier, getter=_GETTER)


def inject(headers: MutableMapping[str, str] | None = None) -> MutableMapping[str, str] | None:
    """``headers`` (a new dict if ``None``) with the current span's ``traceparent`` added,
    for an outgoing call (Triton's gRPC metadata); ``headers`` unchanged when off."""
    if _tracer is None:
        return headers
    out: MutableMapping[str, str] = {} if headers is None else headers
    _PROPAGATOR.inject(out)
    return out


# -- spans --------------------------------------------------------------------------------


def request_span(name: str, carrier: Carrier | None = None,
                 attributes: Mapping[str, Any] | None = None
                 ) -> contextlib.AbstractContextManager[trace.Span | None]:
    """The SERVER span of one request, current inside the ``with`` (so the phases nest
    under it), parented by the caller's ``traceparent`` in ``carrier`` if any."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, context=extract(carrier),
                                         kind=trace.SpanKind.SERVER, attributes=attributes)


def span(name: str, attributes: Mapping[str, Any] | None = None
         ) -> contextlib.AbstractContextManager[trace.Span | None]:
    """A child of the current span for one phase (``decode``, ``encode``, ``rank``...)."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def set_status(started: trace.Span | None, status: int) -> None:
    """Record a request's HTTP status on its span; a 5xx marks the span as an error."""
    if started is None:
        return
    started.set_attribute("http.response.status_code", status)
    if status >= 500:
        started.set_status(trace.StatusCode.ERROR)


def current() -> trace.SpanContext | None:
    """The current span's context, to link a batch to (``None`` when off or outside one)."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def record(name: str, start: float, end: float, now: float,
           attributes: Mapping[str, Any] | None = None) -> None:
    """A finished child span of the current one, from ``start`` to ``end``: times on the
    clock that gave ``now`` (``loop.time()``), which is mapped to the wall clock here. For
    phases timed elsewhere (a request's queue wait and backend time, measured by the
    batcher)."""
    if _tracer is None:
        return
    wall = time.time_ns()
    started = _tracer.start_span(name, start_time=wall - int((now - start) * 1e9),
                                 attributes=attributes)
    started.end(end_time=wall - int((now - end) * 1e9))


@contextlib.contextmanager
def _batch(name: str, links: list[trace.Link], attributes: Mapping[str, Any] | None
           ) -> Iterator[trace.Span]:
    assert _tracer is not None
    # A root of its own (not a child of whichever request's task dispatched it): a batch
    # belongs to every request it carries equally, hence links.
    with _tracer.start_as_current_span(name, context=otel_context.Context(), links=links,
                                       attributes=attributes) as started:
        yield started


def batch_span(name: str, carried: Iterable[trace.SpanContext | None],
               attributes: Mapping[str, Any] | None = None
               ) -> contextlib.AbstractContextManager[trace.Span | None]:
    """The span of one batch, linked to the spans of the requests it carries (their
    :func:`current` at submit time), current inside the ``with``."""
    if _tracer is None:
        return _NULL
    unique = {(c.trace_id, c.span_id): c for c in carried if c is not None}  # one per job
    return _batch(name, [trace.Link(c) for c in unique.values()], attributes)
