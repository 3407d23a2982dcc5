"""Shadow scoring: a candidate version scores a copy of live requests, off the critical path.

After the served version's result is ranked, :meth:`ShadowScorer.offer` may start a
background task that encodes the same request for the candidate version (``settings.shadow``),
scores it through that version's batcher, and compares the two score vectors: the mean
absolute score difference and the overlap of the two top-k sets go to Prometheus. The
response never waits for it; the candidate's scores are never returned.

Shadow work is bounded: at most ``shadow_max_inflight`` scorings run at once, and a request
whose served batcher has work queued (the gateway is busy) is not shadowed. Skipped and
failed scorings are counted in ``rankserve_shadow_dropped_total`` by reason.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from serving.errors import RankServeError
from serving.gateway.ranker import Ranker, RankRequest
from serving.ranking.features import PROBS
from serving.ranking.value import ValueModel, top_k
from serving.rollout.generation import Generation, Served
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
OVERLAP_BUCKETS = tuple(i / 10 for i in range(11))
OVERLAP_K = 10
"""Top-k overlap uses the request's ``top_k``, else this many."""


class ShadowMetrics:
    """The shadow comparison's Prometheus series, on the gateway's registry."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.score_diff = Histogram(
            "rankserve_shadow_score_diff",
            "Mean absolute difference between the shadow version's and the served version's "
            "value scores of one request.", ["model", "version"], buckets=DIFF_BUCKETS,
            registry=r)
        self.topk_overlap = Histogram(
            "rankserve_shadow_topk_overlap",
            "Share of the served top-k that the shadow version also ranks in its top-k.",
            ["model", "version"], buckets=OVERLAP_BUCKETS, registry=r)
        self.scored = Counter(
            "rankserve_shadow_scored", "Requests scored in the shadow and compared.",
            ["model", "version"], registry=r)
        self.dropped = Counter(
            "rankserve_shadow_dropped", "Requests not shadowed, by reason (busy: too many "
            "shadow scorings running; load: the served queue is not empty; or the error code "
            "of a failed shadow scoring).", ["model", "reason"], registry=r)
        self.inflight = Gauge(
            "rankserve_shadow_inflight", "Shadow scorings running now.", registry=r)


class ShadowScorer:
    """Starts and bounds the shadow tasks (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = ShadowMetrics(metrics)
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, generation: Generation, served: Served, ranker: Ranker,
              request: RankRequest, probs: np.ndarray) -> None:
        """Shadow this request if a candidate version is configured, loaded and there is
        room; returns at once."""
        name = served.model.name
        version = self.settings.shadow.get(name)
        if version is None or version == served.model.version:
            return
        candidate = generation.get(name, version)
        if candidate is None or candidate.ranker is None:
            self.metrics.dropped.labels(name, "not_loaded").inc()
            return
        if len(self._tasks) >= self.settings.shadow_max_inflight:
            self.metrics.dropped.labels(name, "busy").inc()
            return
        if served.batcher.queued_rows > 0:
            self.metrics.dropped.labels(name, "load").inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._score(generation, ranker, candidate, candidate.ranker, request, probs),
            name=f"shadow-{name}")
        self._tasks.add(task)
        self.metrics.inflight.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.metrics.inflight.dec()

    async def _score(self, generation: Generation, ranker: Ranker, candidate: Served,
                     candidate_ranker: Ranker, request: RankRequest, probs: np.ndarray) -> None:
        await asyncio.sleep(0)  # let the response go out before encoding again
        with generation.using():
            await self._compare(ranker, candidate, candidate_ranker, request, probs)

    async def _compare(self, ranker: Ranker, candidate: Served, candidate_ranker: Ranker,
                       request: RankRequest, probs: np.ndarray) -> None:
        name, version = candidate.model.name, str(candidate.model.version)
        loop = asyncio.get_running_loop()
        try:
            weights = ranker.value.weights(request.weights)
            shadow_weights = candidate_ranker.value.weights(request.weights)
            tensors = candidate_ranker.encode(request)
            deadline = loop.time() + self.settings.default_budget_ms / 1e3
            result = await candidate.batcher.submit(tensors, deadline)
            shadow_probs = result.outputs[PROBS]
            if shadow_probs.shape[0] != probs.shape[0]:
                raise RankServeError(f"shadow returned {shadow_probs.shape[0]} rows")
        except RankServeError as e:
            self.metrics.dropped.labels(name, e.code).inc()
            return
        served_scores = ValueModel.score(probs, weights)
        shadow_scores = ValueModel.score(shadow_probs, shadow_weights)
        k = min(request.top_k or OVERLAP_K, len(served_scores))
        overlap = np.intersect1d(top_k(served_scores, k), top_k(shadow_scores, k)).size / k
        self.metrics.score_diff.labels(name, version).observe(
            float(np.abs(shadow_scores - served_scores).mean()))
        self.metrics.topk_overlap.labels(name, version).observe(overlap)
        self.metrics.scored.labels(name, version).inc()

    async def aclose(self) -> None:
        """Cancel the shadow scorings still running (shutdown: they serve no client)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
