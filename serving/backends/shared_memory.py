"""System shared memory between the gateway and a Triton on the same host.

With shared memory a batch's tensors are written once into a ``/dev/shm`` region that Triton
maps, and only region names and offsets travel over gRPC; the outputs come back the same
way. Regions are created and registered with Triton once and reused batch after batch.

The pool holds up to ``slots`` slots (one input region and one output region each), one per
batch in flight; a batch that finds no free slot goes over plain gRPC instead of waiting.
What can go wrong, and what the pool does:

* Registration is refused for a reason other than "server unreachable" (typically: Triton is
  on another host and cannot open the key): shared memory is switched off for good, with the
  reason logged, and every batch goes over plain gRPC.
* A call fails on the server (e.g. Triton restarted and forgot its registrations): the slot
  is re-registered before its next use.
* A call times out or is cancelled: Triton may still write into the slot's output region
  later, so the slot is never reused; it is unregistered and removed, and a fresh one is made.
* Shutdown (:meth:`SharedMemoryPool.aclose`): every region is unregistered and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as shm

from serving.backends.triton_requests import RequestObjects

log = logging.getLogger(__name__)

ALIGN = 64
MIN_REGION_BYTES = 1 << 20
REGISTER_TIMEOUT_S = 1.0
TRANSIENT_STATUS = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED",
                              "StatusCode.CANCELLED"})


def aligned(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def _capacity(nbytes: int) -> int:
    """Next power of two, at least 1 MiB: a growing workload re-creates regions rarely."""
    return max(MIN_REGION_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())


class Outcome(enum.Enum):
    OK = "ok"
    SERVER_ERROR = "server_error"
    ABANDONED = "abandoned"


@dataclass
class Region:
    """One ``/dev/shm`` object and the name Triton knows it by."""

    name: str
    size: int
    handle: Any

    @classmethod
    def create(cls, name: str, size: int) -> Region:
        return cls(name, size, shm.create_shared_memory_region(name, f"/{name}", size,
                                                               create_only=True))

    @property
    def key(self) -> str:
        return f"/{self.name}"

    def write(self, array: np.ndarray, offset: int) -> None:
        shm.set_shared_memory_region(self.handle, [array], offset=offset)

    def read(self, dtype: np.dtype[Any], shape: list[int], offset: int) -> np.ndarray:
        """A copy: the region is reused by the next batch."""
        return np.array(shm.get_contents_as_numpy(self.handle, dtype, shape, offset=offset))

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            shm.destroy_shared_memory_region(self.handle)


@dataclass
class Slot:
    """One batch's worth of regions, with the request objects bound to them (built once)."""

    inputs: Region
    outputs: Region
    registered: bool = False
    objects: RequestObjects = field(default_factory=RequestObjects)


class SharedMemoryPool:
    """Registered regions, reused across batches; see the module docstring."""

    def __init__(self, client: InferenceServerClient, slots: int,
                 prefix: str = "rankserve") -> None:
        self._client = client
        self._prefix = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._max_slots = slots
        self._free: list[Slot] = []
        self._all: list[Slot] = []
        self._counter = 0
        self.enabled = True
        self.disabled_reason: str | None = None
        self.acquired = 0
        """Batches that went through shared memory."""
        self.registrations = 0
        """Slot registrations with Triton (once per slot, again after a Triton restart)."""

    def region_names(self) -> list[str]:
        return [r.name for s in self._all for r in (s.inputs, s.outputs)]

    async def acquire(self, input_bytes: int, output_bytes: int, timeout_s: float
                      ) -> Slot | None:
        """A registered slot big enough for the batch, or ``None`` to use plain gRPC."""
        if not self.enabled:
            return None
        slot = self._take(input_bytes, output_bytes)
        if slot is None:
            return None
        if not slot.registered and not await self._register(slot, timeout_s):
            self.release(slot, Outcome.SERVER_ERROR)
            return None
        self.acquired += 1
        return slot

    def _take(self, input_bytes: int, output_bytes: int) -> Slot | None:
        for i, slot in enumerate(self._free):
            if slot.inputs.size >= input_bytes and slot.outputs.size >= output_bytes:
                return self._free.pop(i)
        if self._free:  # every free slot is too small: replace one with a bigger one
            self._retire(self._free.pop(0))
        elif len(self._all) >= self._max_slots:
            return None
        try:
            slot = self._new_slot(input_bytes, output_bytes)
        except shm.SharedMemoryException as e:
            self._disable(f"cannot create a shared memory region: {e}")
            return None
        self._all.append(slot)
        return slot

    def _new_slot(self, input_bytes: int, output_bytes: int) -> Slot:
        self._counter += 1
        base = f"{self._prefix}-{self._counter}"
        return Slot(Region.create(f"{base}-in", _capacity(input_bytes)),
                    Region.create(f"{base}-out", _capacity(output_bytes)))

    async def _register(self, slot: Slot, timeout_s: float) -> bool:
        timeout = min(timeout_s, REGISTER_TIMEOUT_S)
        try:
            for region in (slot.inputs, slot.outputs):
                with contextlib.suppress(InferenceServerException):  # absent after a restart
                    await self._client.unregister_system_shared_memory(
                        region.name, client_timeout=timeout)
                await self._client.register_system_shared_memory(
                    region.name, region.key, region.size, client_timeout=timeout)
        except InferenceServerException as e:
            if e.status() not in TRANSIENT_STATUS:
                self._disable(f"Triton refused to register shared memory ({e.status()}): "
                              f"{e.message()}")
            return False
        slot.registered = True
        self.registrations += 1
        return True

    def release(self, slot: Slot, outcome: Outcome) -> None:
        """Give a slot back after its batch; see the module docstring for each outcome."""
        if outcome is Outcome.ABANDONED or not self.enabled:
            self._retire(slot)
            return
        if outcome is Outcome.SERVER_ERROR:
            slot.registered = False
        self._free.append(slot)

    def mark_unregistered(self) -> None:
        """Triton (re)started: every slot must be registered again before its next use."""
        for slot in self._all:
            slot.registered = False

    def _retire(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self._all.remove(slot)
        if slot.registered:
            task = asyncio.get_running_loop().create_task(self._unregister(slot))
            task.add_done_callback(lambda t: t.exception())
        for region in (slot.inputs, slot.outputs):
            region.destroy()

    async def _unregister(self, slot: Slot) -> None:
        for region in (slot.inputs, slot.outputs):
            with contextlib.suppress(InferenceServerException):
                await self._client.unregister_system_shared_memory(
                    region.name, client_timeout=REGISTER_TIMEOUT_S)

    def _disable(self, reason: str) -> None:
        log.warning("shared memory with Triton is off, using plain gRPC: %s", reason)
        self.enabled = False
        self.disabled_reason = reason
        for slot in list(self._free):
            self._retire(slot)
        self._free.clear()

    async def aclose(self) -> None:
        """Unregister and remove every region; safe to call twice."""
        slots, self._all, self._free = self._all, [], []
        for slot in slots:
            if slot.registered:
                await self._unregister(slot)
            for region in (slot.inputs, slot.outputs):
                region.destroy()
