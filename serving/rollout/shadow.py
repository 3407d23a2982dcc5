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

from serving.errors import RankServeError
from serving.ranking.features import PROBS
from serving.ranking.ranker import Ranker, RankRequest
from serving.ranking.value import ValueModel, top_k
from serving.rollout.generation import Generation, Served
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

OVERLAP_K = 10
"""Top-k overlap uses the request's ``top_k``, else this many."""


class ShadowScorer:
    """Starts and bounds the shadow tasks (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
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
            self.metrics.shadow_dropped.labels(name, "not_loaded").inc()
            return
        if len(self._tasks) >= self.settings.shadow_max_inflight:
            self.metrics.shadow_dropped.labels(name, "busy").inc()
            return
        if served.batcher.queued_rows > 0:
            self.metrics.shadow_dropped.labels(name, "load").inc()
            return
        generation.acquire()  # now: a reload must not close the candidate under this task
        task = asyncio.get_running_loop().create_task(
            self._compare(ranker, candidate, candidate.ranker, request, probs),
            name=f"shadow-{name}")
        self._tasks.add(task)
        self.metrics.shadow_inflight.inc()
        task.add_done_callback(lambda done: self._done(done, generation))

    def _done(self, task: asyncio.Task[None], generation: Generation) -> None:
        self._tasks.discard(task)
        self.metrics.shadow_inflight.dec()
        generation.release()

    async def _compare(self, ranker: Ranker, candidate: Served, candidate_ranker: Ranker,
                       request: RankRequest, probs: np.ndarray) -> None:
        await asyncio.sleep(0)  # let the response go out before encoding again
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
        except RankServeError as e:  # counted, not raised: no client waits for this
            self.metrics.shadow_dropped.labels(name, e.code).inc()
            log.debug("shadow scoring by %s version %s failed: %s", name, version, e.message)
            return
        served_scores = ValueModel.score(probs, weights)
        shadow_scores = ValueModel.score(shadow_probs, shadow_weights)
        k = min(request.top_k or OVERLAP_K, len(served_scores))
        overlap = np.intersect1d(top_k(served_scores, k), top_k(shadow_scores, k)).size / k
        self.metrics.shadow_score_diff.labels(name, version).observe(
            float(np.abs(shadow_scores - served_scores).mean()))
        self.metrics.shadow_topk_overlap.labels(name, version).observe(overlap)
        self.metrics.shadow_scored.labels(name, version).inc()

    async def aclose(self) -> None:
        """Cancel the shadow scorings still running (shutdown: they serve no client)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
