"""One generation of served model versions: a backend, a batcher per version, rankers.

A generation is built completely (sessions loaded, warmed up, batchers running) before
it takes traffic, and is never changed afterwards: a reload builds the next generation,
the data plane switches to it in one assignment, and the old one drains (its queued and
running batches finish) before it closes. Requests pick their version synchronously at
submit time, so after the switch no new work reaches the old generation and none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.backends.base import Backend, BackendFactory, model_keys
from serving.batching.batcher import Batcher
from serving.batching.layout import CandidateLayout, layout_for
from serving.batching.policy import BatchPolicy, Slots
from serving.errors import RankServeError
from serving.ranking.ranker import Ranker
from serving.repository.served import ServedModel
from serving.rollout.routing import Split
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded model version and the batcher that scores it."""

    model: ServedModel
    ranker: Ranker | None
    batcher: Batcher


class Generation:
    """An immutable set of served versions (see the module docstring)."""

    def __init__(self, backend: Backend, served: Sequence[Served],
                 rollout: Mapping[str, Mapping[int, float]]) -> None:
        self.backend = backend
        self.served = {(s.model.name, s.model.version): s for s in served}
        self.default: dict[str, Served] = {}
        for s in sorted(served, key=lambda s: s.model.version):
            self.default[s.model.name] = s  # the newest loaded version
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.splits = {name: split for name, shares in rollout.items()
                       if (split := Split.of(name, shares, self.versions(name))) is not None}

    def versions(self, name: str) -> list[int]:
        """Loaded versions of ``name``, ascending."""
        return sorted(v for n, v in self.served if n == name)

    def get(self, name: str, version: int) -> Served | None:
        return self.served.get((name, version))

    def for_user(self, name: str, user: str | None) -> Served | None:
        """The version of ``name`` that answers ``user`` (the split, else the default)."""
        split = self.splits.get(name)
        if split is None or user is None:
            return self.default.get(name)
        return self.served[(name, split.version_for(user))]

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, factory: BackendFactory,
                   models: Sequence[ServedModel]) -> Generation:
        """Load, warm up and start every version in ``models`` on a new backend.

        Raises:
            ModelCardError: a model is invalid, or the backend cannot serve this set.
            RankServeError: the backend failed to start.
        """
        keyed = model_keys(models)
        backend = factory(settings, keyed)
        backend.bind_metrics(metrics)
        await backend.start()
        served: list[Served] = []
        try:
            slots = Slots(backend.instances)
            for key, model in keyed.items():
                layout = layout_for(model)
                ranker = (Ranker.from_model(model, model.card) if model.card is not None
                          and isinstance(layout, CandidateLayout) else None)
                policy = BatchPolicy.from_settings(settings, model.max_batch_size)
                batcher = Batcher(backend, key, layout, policy, metrics, slots)
                await _warm_up(backend, batcher, model)
                await batcher.start()
                served.append(Served(model, ranker, batcher))
        except BaseException:
            await _close(backend, served)
            raise
        return cls(backend, served, settings.rollout)

    def acquire(self) -> None:
        """Held by every request (and shadow scoring) from routing to its answer, so a
        drain knows when the last one has finished. Take it in the same step as reading
        :attr:`Rollout.current <serving.rollout.controller.Rollout.current>`."""
        self._users += 1
        self._idle.clear()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """:meth:`acquire` ... :meth:`release` around a block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def drain_and_close(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until the requests already using this generation have
        their answers, then stop the batchers and the backend. Called after the switch, so
        no new request comes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._users:  # a finishing request may hand over to a shadow task
                    await self._idle.wait()
        if self._users:
            log.warning("closing a model generation with %d request(s) still in flight",
                        self._users)
        await _close(self.backend, list(self.served.values()))


async def _close(backend: Backend, served: Sequence[Served]) -> None:
    for s in served:
        await s.batcher.aclose()
    await backend.aclose()


async def _warm_up(backend: Backend, batcher: Batcher, model: ServedModel) -> None:
    """First runs allocate memory, pick kernels and (TensorRT) build engines: each warm-up
    shape repeats until its time is stable, so traffic never pays for that. Warm-up never
    teaches the latency model: one engine build would have it predict seconds for every
    batch of that size (and admission refuse them); it learns from served batches only.
    Best effort: a backend that is not ready yet (Triton still loading) is warmed up by
    traffic instead."""
    try:
        await _warm_up_runs(backend, batcher, model)
    except RankServeError as e:
        log.warning("warm-up of %s skipped: %s", model.name, e.message)


WARMUP_MAX_RUNS = 12
"""Runs per warm-up shape at most, stable or not."""


def stable(times: Sequence[float], window: int) -> bool:
    """Whether the last ``window`` run times agree (within 25% + 0.5 ms): the one-off
    costs are over. ``window`` covers every session of a pool, which backends take in turn."""
    if len(times) < window + 1:  # the first run is setup, never part of the window
        return False
    last = times[-window:]
    return max(last) <= 1.25 * min(last) + 5e-4


async def _warm_up_runs(backend: Backend, batcher: Batcher, model: ServedModel) -> None:
    layout = batcher.layout
    if not isinstance(layout, CandidateLayout):
        return
    loop = asyncio.get_running_loop()
    window = max(2, backend.instances)
    settled: dict[tuple[int, int], float] = {}
    for rows, users in batcher.policy.warmup_shapes():  # every bucket shape, if any
        inputs = {}
        for t in model.inputs:
            n = users if t.name in layout.shared else rows
            shape = [n if axis == 0 and d < 0 else max(d, 1) for axis, d in enumerate(t.shape)]
            inputs[t.name] = np.zeros(shape, dtype=t.numpy_dtype)
        times: list[float] = []
        while len(times) < WARMUP_MAX_RUNS and not stable(times, window):
            started = loop.time()
            await backend.infer(batcher.model, inputs, 60.0)
            times.append(loop.time() - started)
        if not stable(times, window):
            log.warning("warm-up of %s version %d at %d rows did not settle in %d runs "
                        "(last %s ms)", model.name, model.version, rows, len(times),
                        ", ".join(f"{t * 1e3:.1f}" for t in times[-window:]))
        settled[rows, users] = min(times[-window:])
    log.info("warmed up %s version %d: %s", model.name, model.version,
             ", ".join(f"{rows}x{users} rows {t * 1e3:.2f} ms"
                       for (rows, users), t in settled.items()))
