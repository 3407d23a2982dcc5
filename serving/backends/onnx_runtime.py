"""The embedded backend: ONNX Runtime sessions inside the gateway process.

Sessions run in dedicated worker threads, one per instance, each batch handed over and
back with one queue item and one loop wake-up (:mod:`serving.backends.handoff`); ONNX
Runtime releases the GIL
while it computes, so the event loop keeps accepting and batching requests while up to
``instances`` batches run. Each instance has its own session per model (a session pool),
so instances never contend for one session's internal state.

Providers are tried in the configured order (TensorRT -> CUDA -> CPU by default) with
their options from the settings (:mod:`serving.backends.ort_providers`). Every provider a
session did not get is a WARNING with ONNX Runtime's reason, and where
``require_providers`` asks for it (by default whenever the first provider is a GPU one)
the backend refuses to start instead of serving on the CPU. :meth:`session_providers`
says what each session really runs on. On GPU providers (or with ``io_binding: on``)
batches go through bound I/O with packed buffers kept per shape (with shape buckets: per
bucket) and, where ``cuda_graphs`` is on, one CUDA graph per bucket
(:mod:`serving.backends.ort_binding`).

A batch past its deadline is told to stop (``RunOptions.terminate``), but its instance is
held until the worker thread has really returned: ONNX Runtime checks the flag between
nodes only, and a slot handed out while a stuck GPU run still occupies the worker would
queue the next batch invisibly behind it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.backends.base import Backend, BackendOutput
from serving.backends.handoff import WorkerThreads
from serving.backends.ort_binding import BoundRunner
from serving.backends.ort_providers import (
    GPU_PROVIDERS,
    TENSORRT,
    ProviderPlan,
    quiet_native_log,
    tensorrt_profile,
)
from serving.errors import BackendError, DeadlineExceeded, ModelCardError, Unavailable
from serving.repository.served import ServedModel
from serving.settings import Settings, default

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def choose_providers(requested: Sequence[str]) -> list[str]:
    """The requested providers this ONNX Runtime build has, in the requested order, CPU
    last so a session can always be created (see :meth:`ProviderPlan.chain`)."""
    return ProviderPlan(tuple(requested)).chain()[0]


class _Worker:
    """One session and, where bound I/O is on, its runner."""

    def __init__(self, session: ort.InferenceSession, bound: BoundRunner | None) -> None:
        self.session = session
        self.bound = bound


class _SessionPool:
    """``instances`` sessions of one model; a worker thread borrows one per batch."""

    def __init__(self, workers: list[_Worker]) -> None:
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in workers:
            self._free.put(worker)
        first = workers[0].session
        self.output_names = [o.name for o in first.get_outputs()]
        self.session_providers = [w.session.get_providers() for w in workers]
        self.providers: list[str] = self.session_providers[0]

    def run(self, inputs: Mapping[str, np.ndarray], options: ort.RunOptions) -> dict[str, Any]:
        worker = self._free.get()
        try:
            if worker.bound is not None:
                return worker.bound.run(inputs, options)
            values = worker.session.run(self.output_names, dict(inputs), options)
            return dict(zip(self.output_names, values, strict=True))
        finally:
            self._free.put(worker)


class OnnxRuntimeBackend(Backend):
    """Scores batches with in-process ONNX Runtime sessions (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, models: Mapping[str, Path], *, instances: int = default("instances"),
                 providers: Sequence[str] = default("providers"),
                 intra_op_threads: int = default("intra_op_threads"),
                 inter_op_threads: int = default("inter_op_threads"),
                 graph_optimization: str = default("graph_optimization"),
                 plan: ProviderPlan | None = None,
                 io_binding: str = default("io_binding"), bound_shapes: int = 8,
                 buckets: tuple[Sequence[int], Sequence[int]] = ((), ())) -> None:
        self._models = dict(models)
        self._instances = instances
        self._plan = plan or ProviderPlan(tuple(providers), default("require_providers"))
        self._intra, self._inter = intra_op_threads, inter_op_threads
        self._optimization = OPTIMIZATION_LEVELS[graph_optimization]
        self._io_binding = io_binding
        self._bound_shapes = bound_shapes
        self._buckets = buckets
        self._pools: dict[str, _SessionPool] = {}
        self._threads: WorkerThreads | None = None

    @classmethod
    def from_settings(cls, settings: Settings, models: Mapping[str, ServedModel]
                      ) -> OnnxRuntimeBackend:
        return cls({key: m.onnx_path for key, m in models.items()},
                   instances=settings.instances,
                   intra_op_threads=settings.intra_op_threads,
                   inter_op_threads=settings.inter_op_threads,
                   graph_optimization=settings.graph_optimization,
                   plan=ProviderPlan.from_settings(settings), io_binding=settings.io_binding,
                   bound_shapes=_bound_shapes(settings),
                   buckets=(settings.buckets, settings.user_buckets))

    @property
    def instances(self) -> int:
        return self._instances

    @property
    def busy_workers(self) -> int:
        """Worker threads inside a run now (a run cut off at its deadline counts until its
        thread returns)."""
        return 0 if self._threads is None else self._threads.busy

    async def start(self) -> None:
        """Create the worker threads and every model's sessions (in a worker thread).

        Raises:
            ModelCardError: an ONNX file is missing or ONNX Runtime cannot load it.
            Unavailable: a provider that ``require_providers`` requires did not load; the
                message names it and ONNX Runtime's reason.
        """
        threads = self._threads = WorkerThreads(self._instances, "onnxruntime")
        threads.start()
        try:
            providers, options = self._plan.chain()
            for model, path in self._models.items():
                workers = await threads.submit(self._load, model, path, providers,
                                               options).future
                self._pools[model] = _SessionPool(workers)
        except BaseException:
            await self.aclose()
            raise

    def _load(self, model: str, path: Path, providers: list[str],
              provider_options: list[dict[str, str]]) -> list[_Worker]:
        options = quiet_native_log(ort.SessionOptions())
        options.intra_op_num_threads = self._intra
        options.inter_op_num_threads = self._inter
        options.graph_optimization_level = self._optimization
        if TENSORRT in providers:  # one engine for every bucket shape (no buckets: none)
            at = providers.index(TENSORRT)
            provider_options = [*provider_options]
            provider_options[at] = {**tensorrt_profile(path, *self._buckets),
                                    **provider_options[at]}
        try:
            sessions = [ort.InferenceSession(str(path), options, providers=providers,
                                             provider_options=provider_options)
                        for _ in range(self._instances)]
        except Exception as e:  # ORT raises its own untyped errors (file, graph, kernel)
            raise ModelCardError(f"ONNX Runtime cannot load model '{model}': {e}",
                                 field=str(path)) from e
        checked: list[list[str]] = []
        for session in sessions:  # sessions of one model normally agree: check each kind once
            if (got := session.get_providers()) not in checked:
                self._plan.check(model, got, path)
                checked.append(got)
        enabled = sessions[0].get_providers()
        log.info("loaded model %s with %d session(s) on %s", model, self._instances,
                 ", ".join(enabled))
        return [_Worker(s, self._runner(s)) for s in sessions]

    def _runner(self, session: ort.InferenceSession) -> BoundRunner | None:
        first = session.get_providers()[0]
        on_gpu = first in GPU_PROVIDERS
        if self._io_binding == "off" or (self._io_binding == "auto" and not on_gpu):
            return None
        options = self._plan.options.get(first, {})
        device_id = int(options.get("device_id", "0"))
        # One CUDA graph per bucket shape where the provider captures graphs.
        graphs = on_gpu and "1" in (options.get("enable_cuda_graph"),
                                    options.get("trt_cuda_graph_enable"))
        return BoundRunner(session, "cuda" if on_gpu else "cpu", device_id if on_gpu else 0,
                           shapes=self._bound_shapes, graphs=graphs)

    async def aclose(self) -> None:
        self._pools.clear()
        if self._threads is not None:
            threads, self._threads = self._threads, None
            await threads.aclose()

    def healthy(self) -> bool:
        return self._threads is not None and len(self._pools) == len(self._models)

    def providers(self, model: str) -> list[str]:
        """The providers a model's first session actually runs on, best first.

        Raises:
            KeyError: the model is not loaded.
        """
        return list(self._pools[model].providers)

    def session_providers(self) -> dict[str, list[list[str]]]:
        """For every loaded model, the providers each of its sessions really runs on (best
        first): what ``/metrics`` and ``/v2`` metadata report."""
        return {model: [list(p) for p in pool.session_providers]
                for model, pool in self._pools.items()}

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        """Run one batch in a worker thread.

        A run past ``timeout_s`` is told to stop, and this call returns (raising
        :class:`DeadlineExceeded`) only once its worker thread has returned, so the caller
        holds its instance slot as long as the instance is really busy. The same holds if
        this call is cancelled.

        Raises:
            Unavailable: the backend is not started or is closing.
            BackendError: the model is not loaded here, or ONNX Runtime failed on the batch.
            DeadlineExceeded: ``timeout_s`` passed; the run was told to stop early.
        """
        pool = self._pools.get(model)
        threads = self._threads
        if threads is None:
            raise Unavailable("the ONNX Runtime backend is not running")
        if pool is None:
            raise BackendError(f"model '{model}' is not loaded in ONNX Runtime")
        options = ort.RunOptions()
        # One queue item to a worker thread and one loop wake-up back (serving.backends.
        # handoff); the timeout is one timer that tells the run to stop.
        call = threads.submit(pool.run, inputs, options)
        started = time.monotonic()
        timer = asyncio.get_running_loop().call_later(max(timeout_s, 0.0), _terminate, options)
        try:
            outputs = await call.future
        except asyncio.CancelledError:
            options.terminate = True  # the worker thread stops at ORT's next check
            await call.returned()
            raise
        except Exception as e:
            if not options.terminate:
                log.error("ONNX Runtime failed on a batch of model %s: %s", model, e)
                raise BackendError("ONNX Runtime failed on this batch") from e
        finally:
            timer.cancel()
        if options.terminate:  # the timer fired: the run was cut off, or finished too late
            log.warning("a batch of model %s ran %.3f s, past its %.3f s timeout, until its "
                        "worker returned", model, time.monotonic() - started, timeout_s)
            raise DeadlineExceeded("the batch did not finish within its deadline")
        return BackendOutput(outputs)


def _bound_shapes(settings: Settings) -> int:
    """Batch shapes whose bound buffers (and CUDA graphs) each session keeps: every bucket
    shape (4: the default user buckets), or a few recent shapes without buckets."""
    return max(8, len(settings.buckets) * max(len(settings.user_buckets), 4))


def _terminate(options: ort.RunOptions) -> None:
    """The batch's time is up: ONNX Runtime stops the run at its next check."""
    options.terminate = True
