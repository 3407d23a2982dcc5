"""The embedded backend: ONNX Runtime sessions inside the gateway process.

Sessions run in a thread pool with one thread per instance: ONNX Runtime releases the GIL
while it computes, so the event loop keeps accepting and batching requests while up to
``instances`` batches run. Each instance has its own session per model (a session pool),
so instances never contend for one session's internal state.

Providers are tried in the configured order (TensorRT -> CUDA -> CPU by default); one that
this ONNX Runtime build lacks, or that fails to initialise, is skipped with the reason
logged. On CUDA the inputs and outputs go through I/O binding, so ONNX Runtime copies each
tensor once instead of staging it through extra host buffers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.backends.base import Backend, BackendOutput
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
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(requested: Sequence[str]) -> list[str]:
    """The requested providers this ONNX Runtime build has, in the requested order.

    CPU is always appended last so a session can always be created.
    """
    available = set(ort.get_available_providers())
    chosen = []
    for name in requested:
        if name in available:
            chosen.append(name)
        else:
            log.info("ONNX Runtime provider %s skipped: not in this build (available: %s)",
                     name, ", ".join(sorted(available)))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class _SessionPool:
    """``instances`` sessions of one model; a worker thread borrows one per batch."""

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self._free: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        first = sessions[0]
        self.output_names = [o.name for o in first.get_outputs()]
        self.providers: list[str] = first.get_providers()
        self.on_gpu = any(p in _GPU_PROVIDERS for p in self.providers)

    def run(self, inputs: Mapping[str, np.ndarray], options: ort.RunOptions) -> dict[str, Any]:
        session = self._free.get()
        try:
            if self.on_gpu:
                return self._run_bound(session, inputs, options)
            values = session.run(self.output_names, dict(inputs), options)
            return dict(zip(self.output_names, values, strict=True))
        finally:
            self._free.put(session)

    def _run_bound(self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray],
                   options: ort.RunOptions) -> dict[str, Any]:
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        session.run_with_iobinding(binding, options)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))


class OnnxRuntimeBackend(Backend):
    """Scores batches with in-process ONNX Runtime sessions (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, models: Mapping[str, Path], *, instances: int = default("instances"),
                 providers: Sequence[str] = default("providers"),
                 intra_op_threads: int = default("intra_op_threads"),
                 inter_op_threads: int = default("inter_op_threads"),
                 graph_optimization: str = default("graph_optimization")) -> None:
        self._models = dict(models)
        self._instances = instances
        self._providers = list(providers)
        self._intra, self._inter = intra_op_threads, inter_op_threads
        self._optimization = OPTIMIZATION_LEVELS[graph_optimization]
        self._pools: dict[str, _SessionPool] = {}
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings, models: Mapping[str, ServedModel]
                      ) -> OnnxRuntimeBackend:
        return cls({key: m.onnx_path for key, m in models.items()},
                   instances=settings.instances, providers=settings.providers,
                   intra_op_threads=settings.intra_op_threads,
                   inter_op_threads=settings.inter_op_threads,
                   graph_optimization=settings.graph_optimization)

    @property
    def instances(self) -> int:
        return self._instances

    async def start(self) -> None:
        """Create the worker threads and every model's sessions (in a worker thread).

        Raises:
            ModelCardError: an ONNX file is missing or ONNX Runtime cannot load it.
        """
        self._executor = ThreadPoolExecutor(self._instances, thread_name_prefix="onnxruntime")
        providers = choose_providers(self._providers)
        loop = asyncio.get_running_loop()
        for model, path in self._models.items():
            sessions = await loop.run_in_executor(self._executor, self._load, model, path,
                                                  providers)
            self._pools[model] = _SessionPool(sessions)

    def _load(self, model: str, path: Path, providers: list[str]) -> list[ort.InferenceSession]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra
        options.inter_op_num_threads = self._inter
        options.graph_optimization_level = self._optimization
        try:
            sessions = [ort.InferenceSession(str(path), options, providers=providers)
                        for _ in range(self._instances)]
        except Exception as e:  # ORT raises its own untyped errors (file, graph, kernel)
            raise ModelCardError(f"ONNX Runtime cannot load model '{model}': {e}",
                                 field=str(path)) from e
        enabled = sessions[0].get_providers()
        for name in providers:
            if name not in enabled:
                log.warning("ONNX Runtime provider %s skipped for model %s: it failed to "
                            "initialise (driver or libraries missing?)", name, model)
        log.info("loaded model %s with %d session(s) on %s", model, self._instances,
                 ", ".join(enabled))
        return sessions

    async def aclose(self) -> None:
        self._pools.clear()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    def healthy(self) -> bool:
        return self._executor is not None and len(self._pools) == len(self._models)

    def providers(self, model: str) -> list[str]:
        """The providers a model's sessions actually run on, best first."""
        return list(self._pools[model].providers)

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        """Run one batch in a worker thread.

        Raises:
            Unavailable: the backend is not started or is closing.
            BackendError: the model is not loaded here, or ONNX Runtime failed on the batch.
            DeadlineExceeded: ``timeout_s`` passed; the run is told to stop early.
        """
        pool = self._pools.get(model)
        if self._executor is None:
            raise Unavailable("the ONNX Runtime backend is not running")
        if pool is None:
            raise BackendError(f"model '{model}' is not loaded in ONNX Runtime")
        options = ort.RunOptions()
        future = asyncio.get_running_loop().run_in_executor(self._executor, pool.run, inputs,
                                                            options)
        try:
            outputs = await asyncio.wait_for(future, max(timeout_s, 0.0))
        except asyncio.TimeoutError:
            options.terminate = True  # the worker thread stops at ORT's next check
            raise DeadlineExceeded("the batch did not finish within its deadline") from None
        except Exception as e:
            log.error("ONNX Runtime failed on a batch of model %s: %s", model, e)
            raise BackendError("ONNX Runtime failed on this batch") from e
        return BackendOutput(outputs)
