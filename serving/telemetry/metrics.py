"""The gateway's Prometheus metrics, all on one registry owned by the application.

Creating metrics on the process-global registry inside a constructor breaks the second
instance (a second app in a test, a reload): every metric here lives on the registry that
:class:`Metrics` creates, and ``/metrics`` renders exactly that registry.

Under ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts the
workers, so prometheus-client keeps every value in a file per process and ``/metrics``, in
whichever worker answers, renders all workers together: counters and histograms sum, the
queue and in-flight gauges sum over live workers, the breaker state is per worker (a
``pid`` label), and ``process_*`` describes the answering worker only.
"""

from __future__ import annotations

import contextvars
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Buckets in seconds, dense between 0.5 ms and 100 ms where a ranking budget lives.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025,
                   0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Shadow comparison: mean absolute value-score difference, and a top-k overlap share.
DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
SHARE_BUCKETS = tuple(i / 10 for i in range(11))
BREAKER_STATES = ("closed", "open", "half_open")
"""Values of ``rankserve_circuit_breaker_state``'s ``state`` label (one is 1, the others 0)."""

served_var: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "rankserve_served_version", default=None)
"""The model name and version answering the current request, set where the data plane
routes it; the middleware labels the request's latency with it (A/B splits compare)."""


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx``...: fast refusals must not pull the success p99 down."""
    return f"{status // 100}xx"


class Metrics:
    """Every ``rankserve_`` metric; names are shared with the Helm chart's dashboards."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_latency = Histogram(
            "rankserve_request_latency_seconds", "End-to-end request latency in the gateway.",
            ["route", "status", "status_class", "model", "version"], buckets=LATENCY_BUCKETS,
            registry=r)
        self.queue_wait = Histogram(
            "rankserve_queue_wait_seconds", "Time a row slice waited in the batcher queue.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram(
            "rankserve_batch_rows", "Rows per dispatched batch.", ["model"],
            buckets=ROW_BUCKETS, registry=r)
        self.backend_latency = Histogram(
            "rankserve_backend_latency_seconds", "Backend service time of one batch, labelled "
            "by the backend that ran it (the fallback's name for a failed-over batch).",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.degraded_answers = Counter(
            "rankserve_degraded_answers", "Requests answered with a degraded score (a "
            "fallback backend ran their rows because the primary failed).", ["model"],
            registry=r)
        self.failover_batches = Counter(
            "rankserve_failover_batches", "Batches the primary backend failed that went "
            "to the fallback, by primary and fallback.", ["primary", "fallback"], registry=r)
        self.breaker_state = Gauge(
            "rankserve_circuit_breaker_state", "Circuit-breaker state of a backend: 1 for "
            "the state it is in (closed, open, half_open), 0 for the others.",
            ["backend", "state"], registry=r, multiprocess_mode="liveall")
        self.queue_rows = Gauge(
            "rankserve_queue_rows", "Rows waiting in the batcher queue.", registry=r,
            multiprocess_mode="livesum")
        self.inflight_batches = Gauge(
            "rankserve_inflight_batches", "Batches running on the backend now.", registry=r,
            multiprocess_mode="livesum")
        self.shed = Counter(
            "rankserve_shed", "Requests refused with 429 because the queue was full.",
            registry=r)
        self.deadline_exceeded = Counter(
            "rankserve_deadline_exceeded", "Requests answered 504 because their budget ran out.",
            registry=r)
        self.latency_model_error = Histogram(
            "rankserve_latency_model_error_seconds",
            "Absolute error of the batcher's predicted batch service time.",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        # Rollouts (serving/rollout): version changes and shadow scoring.
        self.model_changes = Counter(
            "rankserve_model_changes", "Changes of the served versions (start, reload, load, "
            "unload) by outcome; a failed change leaves the previous versions serving.",
            ["action", "outcome"], registry=r)
        self.shadow_score_diff = Histogram(
            "rankserve_shadow_score_diff",
            "Mean absolute difference between the shadow version's and the served version's "
            "value scores of one request.", ["model", "version"], buckets=DIFF_BUCKETS,
            registry=r)
        self.shadow_topk_overlap = Histogram(
            "rankserve_shadow_topk_overlap",
            "Share of the served top-k that the shadow version also ranks in its top-k.",
            ["model", "version"], buckets=SHARE_BUCKETS, registry=r)
        self.shadow_scored = Counter(
            "rankserve_shadow_scored", "Requests scored in the shadow and compared.",
            ["model", "version"], registry=r)
        self.shadow_dropped = Counter(
            "rankserve_shadow_dropped", "Requests not shadowed, by reason (busy: too many "
            "shadow scorings running; load: the served queue is not empty; not_loaded; or the "
            "error code of a failed shadow scoring).", ["model", "reason"], registry=r)
        self.shadow_inflight = Gauge(
            "rankserve_shadow_inflight", "Shadow scorings running now.", registry=r,
            multiprocess_mode="livesum")
        # process_* (CPU seconds, resident memory, open fds, start time) of this process, on
        # this registry: the global registry's copy is not what /metrics renders.
        self._process = ProcessCollector(registry=r)
        self._custom: list[Collector] = [self._process]

    def set_breaker_state(self, backend: str, state: str) -> None:
        """Mark ``state`` (one of :data:`BREAKER_STATES`) as the state of ``backend``'s
        breaker."""
        for name in BREAKER_STATES:
            self.breaker_state.labels(backend, name).set(1 if name == state else 0)

    def register(self, collector: Collector) -> None:
        """Add a custom collector (the GPU collector) to this registry."""
        self.registry.register(collector)
        self._custom.append(collector)

    def render(self) -> bytes:
        """The registry in Prometheus text format: every worker's values when several
        workers share them (see the module docstring), else this registry's."""
        if not os.environ.get(MULTIPROCESS_DIR):
            return generate_latest(self.registry)
        combined = CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        for collector in self._custom:
            combined.register(collector)
        return generate_latest(combined)
