"""The data plane: one object that owns models, backend and batchers, and scores requests.

``/v1/rank`` and ``/v2`` handlers only translate HTTP into calls on :class:`DataPlane`
(:meth:`DataPlane.rank`, :meth:`DataPlane.infer`); both go through the same batcher, so a
``/v2`` request for the ranker shares batches with ``/v1/rank`` traffic.

The loaded versions (backend, batchers, rankers) form one immutable generation owned by
:class:`~serving.rollout.controller.Rollout`, which swaps it on reloads; each request reads
the current generation once, picks its version (the A/B split by user id) and stays with
it. Shadow scoring of a candidate version starts after the served result is ranked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from serving.backends.base import Backend, BackendFactory
from serving.backends.factory import build_backend
from serving.batching.batcher import Batcher
from serving.batching.work import JobResult
from serving.errors import NotFound, Unavailable
from serving.ranking.features import PROBS
from serving.ranking.ranker import Ranker, RankRequest, RankResult
from serving.repository.served import ServedModel
from serving.rollout.controller import Rollout
from serving.rollout.generation import Generation, Served
from serving.rollout.shadow import ShadowScorer
from serving.settings import Settings
from serving.telemetry import tracing
from serving.telemetry.metrics import Metrics, served_var

log = logging.getLogger(__name__)

__all__ = ["DataPlane"]


class DataPlane:
    """Loads the repository, runs the backend and one batcher per model.

    Open with :meth:`start` and close with :meth:`aclose` (the app's cleanup context).
    """

    def __init__(self, settings: Settings, metrics: Metrics,
                 backend_factory: BackendFactory = build_backend) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rollout = Rollout(settings, metrics, backend_factory)
        self.shadow = ShadowScorer(settings, metrics)
        self.draining = False
        self._started = False
        self._encode_s_per_row = 0.0  # EWMA of request decoding + encoding cost, per row

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the versions the repository's policies select, start the backend, warm it
        up, start the batchers.

        Raises:
            ModelCardError: the repository or a model in it is invalid.
            RankServeError: the backend failed to start.
        """
        generation = await self.rollout.start()
        self._started = True
        log.info("serving models %s on backend %s (%d instance(s)); /v1/rank models: %s",
                 sorted(self.models), generation.backend.name, generation.backend.instances,
                 sorted(self.rankers))

    # The current generation's default (newest loaded) version of each model.

    @property
    def models(self) -> dict[str, ServedModel]:
        return {n: s.model for n, s in self._defaults().items()}

    @property
    def rankers(self) -> dict[str, Ranker]:
        return {n: s.ranker for n, s in self._defaults().items() if s.ranker is not None}

    @property
    def batchers(self) -> dict[str, Batcher]:
        return {n: s.batcher for n, s in self._defaults().items()}

    @property
    def backend(self) -> Backend | None:
        generation = self.rollout.current
        return None if generation is None else generation.backend

    def _defaults(self) -> dict[str, Served]:
        generation = self.rollout.current
        return {} if generation is None else generation.default

    async def aclose(self) -> None:
        """Drain: stop batchers (queued work gets 503, running batches finish), then the
        backend. Safe to call twice."""
        self._started = False
        await self.shadow.aclose()
        await self.rollout.aclose()

    def readiness(self) -> str | None:
        """``None`` when ready, else why not (``/readyz`` reports it with a 503)."""
        if self.draining:
            return "the server is shutting down"
        if not self._started or self.backend is None:
            return "models are not loaded"
        if not self.backend.healthy():
            return f"backend {self.backend.name} is not healthy"
        return None

    # -- scoring ---------------------------------------------------------------------------

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """A served model by name, at ``version`` if given, else its default version.

        Raises:
            Unavailable: nothing is loaded yet (as on ``/v1/rank``: retry later).
            NotFound: no such model, or that version is not loaded.
        """
        generation = self.rollout.current
        if generation is None:
            raise Unavailable("models are not loaded yet")
        default = generation.default.get(name)
        if default is None:
            raise NotFound(f"unknown model '{name}'", field="model")
        if version is None:
            return default.model
        served = generation.get(name, version)
        if served is None:
            raise NotFound(f"model '{name}' has no version {version} loaded (serving "
                           f"{generation.versions(name)})", field="version")
        return served.model

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, ascending (``/v2`` model metadata)."""
        generation = self.rollout.current
        return [] if generation is None else generation.versions(name)

    def _route(self, request: RankRequest) -> tuple[Generation, Served, Ranker]:
        """The current generation and the version of the requested model (default:
        ``settings.default_model``) that serves this request's user.

        Raises:
            Unavailable: nothing is loaded yet.
            NotFound: no such model, or it has no model card.
        """
        generation = self.rollout.current
        if generation is None:
            raise Unavailable("models are not loaded yet")
        name = request.model or self.settings.default_model
        user = request.user.get("user_id")
        served = generation.for_user(name, None if user is None else str(user))
        if served is None:
            raise NotFound(f"unknown model '{name}'", field="model")
        if served.ranker is None:
            raise NotFound(f"model '{name}' has no model card; /v1/rank needs one",
                           field="model")
        served_var.set((served.model.name, str(served.model.version)))  # latency labels
        return generation, served, served.ranker

    async def rank(self, request: RankRequest, deadline: float) -> RankResult:
        """Encode, score (batched), apply the value model and rank; then offer the request
        to the shadow scorer.

        Raises:
            BadRequest (or a subclass): invalid options or features, naming the field.
            NotFound: unknown model.
            Overloaded, DeadlineExceeded, Unavailable, BackendError: see Batcher.submit.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        generation, served, ranker = self._route(request)
        weights = ranker.value.weights(request.weights)
        shown = ranker.value.task_indices(request.return_tasks)
        ignored = ranker.encoder.unknown_features(request.user, request.context,
                                                  request.candidates)
        if ignored and self.settings.strict_features:
            ranker.encoder.refuse_unknown(request.user, request.context, request.candidates)
        batcher = served.batcher
        batcher.admit(request.n, deadline, self._encode_s_per_row * request.n)
        with tracing.span("encode", {"rankserve.candidates": request.n}):
            tensors = ranker.encode(request)
        encoded = loop.time()
        self._encode_s_per_row += 0.05 * ((encoded - started) / request.n
                                          - self._encode_s_per_row)
        with generation.using():  # held until the shadow task holds it too
            result = await batcher.submit(tensors, deadline)
            with tracing.span("rank"):
                ranked = ranker.rank(request, result.outputs, weights, shown, result.degraded)
            ranked.ignored = ignored
            ranked.timings.update(queue_ms=round(result.queue_s * 1e3, 3),
                                  backend_ms=round(result.backend_s * 1e3, 3),
                                  batch_rows=result.batch_rows,
                                  encode_ms=round((encoded - started) * 1e3, 3),
                                  server_ms=round((loop.time() - started) * 1e3, 3))
            self.shadow.offer(generation, served, ranker, request, result.outputs[PROBS])
        return ranked

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray],
                    deadline: float) -> JobResult:
        """Run validated raw tensors through ``model`` (the ``/v2`` path), batched.

        Raises:
            BadRequest, Overloaded, DeadlineExceeded, Unavailable, BackendError.
            NotFound: the version was unloaded since the request was decoded.
        """
        generation = self.rollout.current
        if generation is None:
            raise Unavailable("models are not loaded yet")
        served = generation.get(model.name, model.version)
        if served is None:
            raise NotFound(f"model '{model.name}' version {model.version} is no longer "
                           f"loaded", field="version")
        served_var.set((model.name, str(model.version)))  # latency labels
        if served.ranker is not None:
            served.ranker.check_ids(inputs)
        with generation.using():
            return await served.batcher.submit(inputs, deadline)

