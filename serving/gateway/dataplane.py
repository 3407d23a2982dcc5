"""The data plane: one object that owns models, backend and batchers, and scores requests.

``/v1/rank`` and ``/v2`` handlers only translate HTTP into calls on :class:`DataPlane`
(:meth:`DataPlane.rank`, :meth:`DataPlane.infer`); both go through the same batcher, so a
``/v2`` request for the ranker shares batches with ``/v1/rank`` traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from serving.backends.base import Backend
from serving.backends.factory import build_backend
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout
from serving.batching.policy import BatchPolicy, Slots
from serving.batching.work import JobResult
from serving.errors import NotFound, RankServeError, Unavailable
from serving.gateway.models import ServedModel, scan_repository
from serving.gateway.ranker import Ranker, RankRequest, RankResult
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

BackendFactory = Callable[[Settings, Mapping[str, Path]], Backend]
WARMUP_ROWS = (1, 32, 256, 1024)


class DataPlane:
    """Loads the repository, runs the backend and one batcher per model.

    Open with :meth:`start` and close with :meth:`aclose` (the app's cleanup context).
    """

    def __init__(self, settings: Settings, metrics: Metrics,
                 backend_factory: BackendFactory = build_backend) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend_factory = backend_factory
        self.models: dict[str, ServedModel] = {}
        self.rankers: dict[str, Ranker] = {}
        self.batchers: dict[str, Batcher] = {}
        self.backend: Backend | None = None
        self.draining = False
        self._started = False
        self._encode_s_per_row = 0.0  # EWMA of request decoding + encoding cost, per row

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model, start the backend, warm it up, start the batchers.

        Raises:
            ModelCardError: the repository or a model in it is invalid.
            RankServeError: the backend failed to start.
        """
        s = self.settings
        self.models = scan_repository(s.model_repository)
        for model in self.models.values():
            if model.card is not None and isinstance(model.layout(), CandidateLayout):
                self.rankers[model.name] = Ranker.from_model(model, model.card)
        self.backend = self._backend_factory(s, {m.name: m.onnx_path
                                                 for m in self.models.values()})
        await self.backend.start()
        slots = Slots(self.backend.instances)
        for model in self.models.values():
            mbs = model.max_batch_size or s.batch_rows
            policy = BatchPolicy(batch_rows=min(s.batch_rows, mbs),
                                 chunk_rows=min(s.chunk_rows, mbs),
                                 max_wait_s=s.max_wait_ms / 1e3,
                                 max_queue_rows=s.max_queue_rows, batching=s.batching)
            batcher = Batcher(self.backend, model.name, model.layout(), policy, self.metrics,
                              slots)
            await self._warm_up(batcher, model)
            await batcher.start()
            self.batchers[model.name] = batcher
        self._started = True
        log.info("serving models %s on backend %s (%d instance(s)); /v1/rank models: %s",
                 sorted(self.models), self.backend.name, self.backend.instances,
                 sorted(self.rankers))

    async def _warm_up(self, batcher: Batcher, model: ServedModel) -> None:
        """First runs allocate memory and pick kernels; they also seed the latency model.
        Best effort: a backend that is not ready yet (Triton still loading) is warmed up
        by traffic instead, and the latency model starts from its prior."""
        try:
            await self._warm_up_runs(batcher, model)
        except RankServeError as e:
            log.warning("warm-up of %s skipped: %s", model.name, e.message)

    async def _warm_up_runs(self, batcher: Batcher, model: ServedModel) -> None:
        layout = batcher.layout
        if not isinstance(layout, CandidateLayout) or self.backend is None:
            return
        for i, rows in enumerate(r for r in WARMUP_ROWS if r <= batcher.policy.batch_rows):
            inputs = {}
            for t in model.inputs:
                n = 1 if t.name in layout.shared else rows
                shape = [n if axis == 0 and d < 0 else max(d, 1) for axis, d in enumerate(t.shape)]
                inputs[t.name] = np.zeros(shape, dtype=t.dtype)
            loop = asyncio.get_running_loop()
            for repeat in range(2):
                started = loop.time()
                await self.backend.infer(model.name, inputs, 60.0)
                if i or repeat:  # the very first run includes one-off setup costs
                    batcher.latency.observe(rows, loop.time() - started)
        fixed, per_row = batcher.latency.coefficients
        log.info("warmed up %s: predicted batch time %.3f ms + %.2f us/row", model.name,
                 fixed * 1e3, per_row * 1e6)

    async def aclose(self) -> None:
        """Drain: stop batchers (queued work gets 503, running batches finish), then the
        backend. Safe to call twice."""
        self._started = False
        for batcher in self.batchers.values():
            await batcher.aclose()
        self.batchers.clear()
        if self.backend is not None:
            await self.backend.aclose()
            self.backend = None

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

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """A served model by name (and version, if given).

        Raises:
            NotFound: no such model or version.
        """
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model '{name}'", field="model")
        if version not in (None, "", str(model.version)):
            raise NotFound(f"model '{name}' has no version {version} (serving "
                           f"{model.version})", field="version")
        return model

    def ranker(self, name: str | None) -> Ranker:
        """The rankable model ``name`` (default: ``settings.default_model``).

        Raises:
            NotFound: no such model, or it has no model card.
        """
        name = name or self.settings.default_model
        ranker = self.rankers.get(name)
        if ranker is None:
            self.model(name)
            raise NotFound(f"model '{name}' has no model card; /v1/rank needs one",
                           field="model")
        return ranker

    async def rank(self, request: RankRequest, deadline: float) -> RankResult:
        """Encode, score (batched), apply the value model and rank.

        Raises:
            BadRequest (or a subclass): invalid options or features, naming the field.
            NotFound: unknown model.
            Overloaded, DeadlineExceeded, Unavailable, BackendError: see Batcher.submit.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        ranker = self.ranker(request.model)
        weights = ranker.value.weights(request.weights)
        shown = ranker.value.task_indices(request.return_tasks)
        batcher = self._batcher(ranker.model.name)
        batcher.admit(request.n, deadline, self._encode_s_per_row * request.n)
        tensors = ranker.encode(request)
        encoded = loop.time()
        self._encode_s_per_row += 0.05 * ((encoded - started) / request.n
                                          - self._encode_s_per_row)
        result = await self._submit(ranker.model.name, tensors, deadline)
        ranked = ranker.rank(request, result, weights, shown)
        ranked.timings.update(encode_ms=round((encoded - started) * 1e3, 3),
                              server_ms=round((loop.time() - started) * 1e3, 3))
        return ranked

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray],
                    deadline: float) -> JobResult:
        """Run validated raw tensors through ``model`` (the ``/v2`` path), batched.

        Raises:
            BadRequest, Overloaded, DeadlineExceeded, Unavailable, BackendError.
        """
        ranker = self.rankers.get(model.name)
        if ranker is not None:
            ranker.check_ids(inputs)
        return await self._submit(model.name, inputs, deadline)

    def _batcher(self, model: str) -> Batcher:
        batcher = self.batchers.get(model)
        if batcher is None:
            raise Unavailable("models are not loaded yet")
        return batcher

    async def _submit(self, model: str, inputs: Mapping[str, np.ndarray],
                      deadline: float) -> JobResult:
        return await self._batcher(model).submit(inputs, deadline)

