"""What the tracing hooks cost per request, off (the default) and on, in-process.

``python -m loadtests.experiments.tracing_overhead`` runs, ``--requests`` times, exactly
the calls of :mod:`serving.telemetry.tracing` that one ``/v1/rank`` request makes on its
way through the gateway (middleware, handler, data plane, batcher, Triton backend) and
times them against the same loop with no calls, best of ``--repeats``:

* off: no provider, what every gateway without ``OTEL_*`` variables runs;
* on: an SDK provider whose spans go nowhere (a processor that drops them), i.e. the
  cost of creating the spans, not of exporting them.

A gateway process with and without the hooks cannot be told apart on a shared 2-core
machine (its per-request CPU varies by more than the hooks cost), hence this in-process
measure. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider

from serving.telemetry import tracing

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def one_request() -> None:
    """The hook calls of one request that is alone in its batch, in the gateway's order."""
    with tracing.request_span("POST /v1/rank", HEADERS, {"http.request.method": "POST"}) as s:
        now = time.monotonic()
        tracing.record("decode", now, now, now)
        with tracing.span("encode", {"rankserve.candidates": 100}):
            pass
        carried = tracing.current()
        with tracing.batch_span("batch", (carried,), {"rankserve.model": "feed_ranker"}), \
                tracing.span("backend", {"rankserve.backend": "triton"}):
            tracing.inject()
        if tracing.enabled():
            tracing.record("queue wait", now, now, now)
            tracing.record("backend", now, now, now)
        with tracing.span("rank"):
            pass
        tracing.set_status(s, 200)


def nothing() -> None:
    """The baseline: a call of the same depth that does no work."""


def per_call_ns(body: Callable[[], None], requests: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(requests):
            body()
        best = min(best, (time.perf_counter_ns() - start) / requests)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.experiments.tracing_overhead",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    base = per_call_ns(nothing, args.requests, args.repeats)
    tracing.use(None)
    off = per_call_ns(one_request, args.requests, args.repeats) - base
    provider = TracerProvider()  # no processor: spans are built and dropped
    tracing.use(provider)
    on = per_call_ns(one_request, max(args.requests // 20, 1000), args.repeats) - base
    tracing.use(None)
    print("| tracing | hook cost per request |")
    print("|---|---|")
    print(f"| off (default) | {off / 1e3:.2f} µs |")
    print(f"| on, spans dropped | {on / 1e3:.1f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
