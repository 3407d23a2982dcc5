"""The Triton backend: score batches on a Triton Inference Server over gRPC.

One long-lived ``tritonclient.grpc.aio`` channel carries every call; the request objects
(``InferInput`` / ``InferRequestedOutput``) are built once per model and tensor and reused.
Each call's gRPC deadline is the batch's remaining budget, so a hung Triton costs a batch at
most its budget, never more. Around the calls:

* at start, each model's metadata is read and checked against its model card: a Triton
  serving a different signature is a deployment error, and :meth:`TritonBackend.start`
  raises :class:`~serving.errors.ModelCardError` saying what differs (the gateway then
  refuses to become ready). A Triton that is not up yet is not an error: it is polled;
* readiness is polled in the background; when the model becomes ready again (Triton came
  back) the metadata is checked again, shared-memory regions are re-registered and the
  circuit breaker is closed, so recovery needs no request to fail first;
* a :class:`~serving.backends.circuit_breaker.CircuitBreaker` stops calls after consecutive
  failures and probes with one call after a pause;
* ``tritonclient`` exceptions are caught here and re-raised as :mod:`serving.errors` types,
  classified by gRPC status code (never by message text); the server's message is logged,
  not sent to clients;
* with tracing on, every call carries the batch's W3C ``traceparent`` in its gRPC metadata
  (:func:`serving.telemetry.tracing.inject`), so Triton's own trace joins the batch's.

The failover policy around it is :mod:`serving.backends.failover`, chosen in
:mod:`serving.backends.factory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    KeepAliveOptions,
)
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from serving.backends.base import Backend, BackendOutput
from serving.backends.circuit_breaker import BreakerState, CircuitBreaker
from serving.backends.shared_memory import Outcome, SharedMemoryPool, Slot, aligned
from serving.backends.triton_requests import RequestObjects
from serving.backends.triton_signature import Signature, rows_of
from serving.errors import (
    BackendError,
    BadRequest,
    DeadlineExceeded,
    ModelCardError,
    RankServeError,
    Unavailable,
)
from serving.repository.card import ModelCard
from serving.repository.served import ServedModel
from serving.settings import Settings, default
from serving.telemetry import tracing

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_MS = 250
"""gRPC's default reconnect backoff grows to 2 minutes; recovery must take seconds."""

# gRPC status -> (error raised, whether it counts as a Triton failure for the breaker).
# Client-side mistakes (INVALID_ARGUMENT) say nothing about Triton's health.
_BY_STATUS: dict[str, tuple[type[RankServeError], bool]] = {
    "StatusCode.UNAVAILABLE": (Unavailable, True),
    "StatusCode.CANCELLED": (Unavailable, True),
    "StatusCode.NOT_FOUND": (Unavailable, True),
    "StatusCode.RESOURCE_EXHAUSTED": (Unavailable, True),
    "StatusCode.DEADLINE_EXCEEDED": (DeadlineExceeded, True),
    "StatusCode.INVALID_ARGUMENT": (BackendError, False),
}
_DEFAULT_ERROR: tuple[type[RankServeError], bool] = (BackendError, True)


def classify(e: InferenceServerException) -> tuple[RankServeError, bool]:
    """The project's error for a ``tritonclient`` exception, and whether Triton is at fault."""
    status = e.status()
    kind, triton_failed = _BY_STATUS.get(status or "", _DEFAULT_ERROR)
    if status is None:  # raised by tritonclient itself, before any RPC
        kind, triton_failed = BackendError, False
    code = (status or "client").removeprefix("StatusCode.")
    return kind(f"Triton call failed ({code})"), triton_failed


def _channel_args() -> list[tuple[str, Any]]:
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", 4 * RECONNECT_BACKOFF_MS),
    ]


class TritonBackend(Backend):
    """Scores batches on Triton over gRPC (see the module docstring)."""

    name = "triton"

    def __init__(self, url: str, cards: Mapping[str, ModelCard], *, ready_model: str,
                 instances: int = default("instances"),
                 shared_memory: bool = default("triton_shared_memory"),
                 breaker: CircuitBreaker | None = None,
                 poll_interval_s: float = default("triton_poll_interval_s"),
                 shm_prefix: str = "rankserve") -> None:
        self.url = url
        self._cards = dict(cards)
        self._ready_model = ready_model
        self._instances = instances
        self._use_shm = shared_memory
        self._shm_prefix = shm_prefix
        self.breaker = breaker or CircuitBreaker(default("triton_breaker_failures"),
                                                 default("triton_breaker_reset_s"))
        self._poll_interval_s = poll_interval_s
        self._client: InferenceServerClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self.pool: SharedMemoryPool | None = None
        self._signatures: dict[str, Signature] = {}
        self._objects = RequestObjects()
        self._ready = False
        self.problem: str | None = None
        """Why Triton cannot be used although it answers (e.g. a signature mismatch)."""

    @classmethod
    def from_settings(cls, settings: Settings, models: Mapping[str, ServedModel]
                      ) -> TritonBackend:
        """A Triton backend for ``models``, checked against their model cards at start.

        Raises:
            ModelCardError: several versions of one model are asked for: Triton applies
                its own ``version_policy`` and knows each model by its name alone.
        """
        several = sorted({m.name for key, m in models.items() if key != m.name})
        if several:
            raise ModelCardError(f"several versions of {several} at once need the "
                                 f"embedded backend; Triton serves its own version_policy",
                                 field="version")
        cards = {key: m.card for key, m in models.items() if m.card is not None}
        return cls(settings.triton_url, cards, ready_model=settings.default_model,
                   instances=settings.instances, shared_memory=settings.triton_shared_memory,
                   breaker=CircuitBreaker(settings.triton_breaker_failures,
                                          settings.triton_breaker_reset_s),
                   poll_interval_s=settings.triton_poll_interval_s)

    @property
    def instances(self) -> int:
        return self._instances

    def healthy(self) -> bool:
        return (self._client is not None and self._ready and self.problem is None
                and self.breaker.state is not BreakerState.OPEN)

    def failing(self) -> bool:
        return self.breaker.failing

    async def start(self) -> None:
        """Open the channel, check the models against their cards, start polling.

        Raises:
            ModelCardError: Triton serves a model whose inputs or outputs differ from its
                model card; the message lists every difference.
        """
        self._client = InferenceServerClient(self.url, channel_args=_channel_args())
        if self._use_shm:
            self.pool = SharedMemoryPool(self._client, slots=2 * self._instances,
                                         prefix=self._shm_prefix)
        try:
            await self._check_models()
            self._ready = True
        except Unavailable as e:
            log.warning("Triton at %s is not ready yet (%s); polling every %.1fs",
                        self.url, e.message, self._poll_interval_s)
        except ModelCardError:
            await self.aclose()
            raise
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _check_models(self) -> None:
        """Read every carded model's metadata; raise on a mismatch, Unavailable if down."""
        assert self._client is not None
        for model, card in self._cards.items():
            try:
                metadata = await self._client.get_model_metadata(
                    model, client_timeout=METADATA_TIMEOUT_S)
            except InferenceServerException as e:
                raise Unavailable(f"cannot read metadata of model '{model}' "
                                  f"({(e.status() or 'client').removeprefix('StatusCode.')})"
                                  ) from e
            signature = Signature.from_metadata(metadata)
            problems = signature.differences(Signature.from_card(card))
            if problems:
                raise ModelCardError(f"Triton at {self.url} serves model '{model}' with a "
                                     f"signature that does not match its model card: "
                                     + "; ".join(problems), field=model)
            self._signatures[model] = signature

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """One readiness check; on a not-ready -> ready transition, re-validate and re-arm."""
        assert self._client is not None
        try:
            ready = bool(await self._client.is_model_ready(
                self._ready_model, client_timeout=self._poll_interval_s))
        except InferenceServerException:
            ready = False
        if ready and (not self._ready or self.problem is not None):
            try:
                await self._check_models()
                self.problem = None
            except ModelCardError as e:
                if self.problem != e.message:
                    log.error("Triton is not used: %s", e.message)
                self.problem, ready = e.message, False
            except Unavailable:
                ready = False
            if ready:
                log.info("Triton at %s is ready", self.url)
                if self.pool is not None:
                    self.pool.mark_unregistered()
                self.breaker.reset()
        elif ready and self.breaker.probe_due():
            # Without traffic no call would probe, and a gateway that is not ready gets no
            # traffic: a successful readiness check stands in for the probe.
            self.breaker.reset()
        elif self._ready and not ready:
            log.warning("Triton at %s is not ready", self.url)
        self._ready = ready

    async def aclose(self) -> None:
        """Stop polling, unregister and remove shared memory, close the channel."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self.pool is not None:
            await self.pool.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        """Score one batch on Triton within ``timeout_s``.

        Raises:
            Unavailable: not started, the breaker is open, or Triton is unreachable.
            DeadlineExceeded: ``timeout_s`` passed (the gRPC deadline, or no time to start).
            BackendError: Triton failed on this batch.
            BadRequest: an input is not one the model declares (name or dtype).
        """
        if self._client is None:
            raise Unavailable("the Triton backend is not running")
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left to call Triton")
        if self.problem is not None:
            raise Unavailable("Triton serves a model that does not match its model card")
        if not self.breaker.allow():
            raise Unavailable("Triton is failing; its circuit breaker is open")
        verdict = False
        try:
            result = await asyncio.wait_for(self._call(model, inputs, timeout_s), timeout_s)
            verdict = True
        except (asyncio.TimeoutError, TimeoutError):
            self.breaker.record_failure()
            verdict = True
            raise DeadlineExceeded("Triton did not answer within the batch's deadline") from None
        except InferenceServerException as e:
            error, verdict = classify(e)
            if verdict:
                self.breaker.record_failure()
            log.warning("Triton failed on a batch of %s: %s", model, e)
            raise error from e
        finally:
            if not verdict:  # cancelled, or our own mistake: says nothing about Triton
                self.breaker.record_abandoned()
        self.breaker.record_success()
        return BackendOutput(result)

    async def _call(self, model: str, inputs: Mapping[str, np.ndarray], timeout_s: float
                    ) -> dict[str, np.ndarray]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        signature = await self._signature(model, timeout_s)
        arrays = self._validated(model, signature, inputs)
        slot = await self._acquire_slot(signature, arrays, timeout_s)
        if slot is None:
            return await self._infer_plain(model, signature, arrays, deadline)
        assert self.pool is not None
        outcome = Outcome.ABANDONED  # cancelled or timed out: Triton may still write to it
        try:
            values = await self._infer_shm(model, signature, arrays, slot, deadline)
            outcome = Outcome.OK
            return values
        except InferenceServerException as e:
            if e.status() != "StatusCode.DEADLINE_EXCEEDED":
                outcome = Outcome.SERVER_ERROR
            raise
        finally:
            self.pool.release(slot, outcome)

    async def _signature(self, model: str, timeout_s: float) -> Signature:
        """Models without a card (the ``/v2`` path) get their metadata on first use."""
        if model not in self._signatures:
            assert self._client is not None
            metadata = await self._client.get_model_metadata(model, client_timeout=timeout_s)
            self._signatures[model] = Signature.from_metadata(metadata)
        return self._signatures[model]

    @staticmethod
    def _validated(model: str, signature: Signature, inputs: Mapping[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
        arrays = {}
        for name, value in inputs.items():
            sig = signature.inputs.get(name)
            if sig is None:
                raise BadRequest(f"model '{model}' has no input '{name}'", field=name)
            array = np.ascontiguousarray(value)
            if np_to_triton_dtype(array.dtype) != sig.dtype:
                raise BadRequest(f"input '{name}' must be {sig.dtype}, got "
                                 f"{np_to_triton_dtype(array.dtype)}", field=name)
            arrays[name] = array
        return arrays

    async def _acquire_slot(self, signature: Signature, arrays: Mapping[str, np.ndarray],
                            timeout_s: float) -> Slot | None:
        if self.pool is None:
            return None
        layout = signature.output_layout(rows_of(arrays))
        if layout is None:
            return None
        output_bytes = sum(nbytes for _, nbytes in layout.values())
        input_bytes = sum(aligned(a.nbytes) for a in arrays.values())
        return await self.pool.acquire(input_bytes, output_bytes, timeout_s)

    async def _infer_plain(self, model: str, signature: Signature,
                           arrays: Mapping[str, np.ndarray], deadline: float
                           ) -> dict[str, np.ndarray]:
        assert self._client is not None
        request_inputs = []
        for name, array in arrays.items():
            infer_input = self._objects.input(model, name, signature.inputs[name].dtype)
            infer_input.set_shape(list(array.shape))
            infer_input.set_data_from_numpy(array)
            request_inputs.append(infer_input)
        outputs = [self._objects.output(model, name) for name in signature.outputs]
        result = await self._client.infer(model, request_inputs, outputs=outputs,
                                          client_timeout=self._remaining(deadline),
                                          headers=tracing.inject())
        return {name: result.as_numpy(name) for name in signature.outputs}

    async def _infer_shm(self, model: str, signature: Signature,
                         arrays: Mapping[str, np.ndarray], slot: Slot, deadline: float
                         ) -> dict[str, np.ndarray]:
        assert self._client is not None
        request_inputs, offset = [], 0
        for name, array in arrays.items():
            slot.inputs.write(array, offset)
            infer_input = slot.objects.input(model, name, signature.inputs[name].dtype)
            infer_input.set_shape(list(array.shape))
            infer_input.set_shared_memory(slot.inputs.name, array.nbytes, offset)
            request_inputs.append(infer_input)
            offset += aligned(array.nbytes)
        layout = signature.output_layout(rows_of(arrays))
        assert layout is not None  # checked when the slot was acquired
        outputs = []
        for name, (offset, nbytes) in layout.items():
            requested = slot.objects.output(model, name)
            requested.set_shared_memory(slot.outputs.name, nbytes, offset)
            outputs.append(requested)
        result = await self._client.infer(model, request_inputs, outputs=outputs,
                                          client_timeout=self._remaining(deadline),
                                          headers=tracing.inject())
        values = {}
        for name, sig in signature.outputs.items():
            meta = result.get_output(name)
            values[name] = slot.outputs.read(np.dtype(triton_to_np_dtype(sig.dtype)),
                                             list(meta.shape), layout[name][0])
        return values

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(deadline - asyncio.get_running_loop().time(), 0.001)

