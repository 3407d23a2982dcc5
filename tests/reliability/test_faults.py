"""Backend faults: an exception in one batch fails only that batch's requests (after each
is retried alone), never the process. A wrapper around the real ONNX Runtime backend
injects the fault into every batch holding a marked request: either by corrupting that
batch's ids so that ONNX Runtime itself fails (a real kernel error), or by raising.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from serving.backends.base import Backend, BackendOutput
from serving.backends.factory import build_backend
from serving.gateway.app import create_app
from serving.ranking.features import ITEM_ID, USER_NUM
from serving.settings import Settings
from tests.gateway.conftest import REPOSITORY, Reference
from tests.wrapped_backend import WrappedBackend

Fault = Literal["corrupt", "raise", "once"]
JSON = {"Content-Type": "application/json"}


class FaultyBackend(WrappedBackend):
    """The real backend, except for batches holding the marked user row (``user_num``):
    ``corrupt`` sends them to ONNX Runtime with ids past the embedding table, ``raise``
    raises a plain exception, ``once`` raises only the first time."""

    def __init__(self, inner: Backend, marked: np.ndarray, fault: Fault) -> None:
        super().__init__(inner)
        self.marked = marked
        self.fault = fault
        self.batches: list[int] = []  # users per batch
        self.faults = 0

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray],
                    timeout_s: float) -> BackendOutput:
        users = inputs[USER_NUM]
        if users.shape[1:] != self.marked.shape:  # another model's batch (its warm-up)
            return await self.inner.infer(model, inputs, timeout_s)
        self.batches.append(len(users))
        if not np.isclose(users, self.marked).all(axis=1).any() \
                or (self.fault == "once" and self.faults):
            return await self.inner.infer(model, inputs, timeout_s)
        self.faults += 1
        if self.fault == "corrupt":
            bad = dict(inputs)
            bad[ITEM_ID] = np.full_like(inputs[ITEM_ID], 2**40)
            return await self.inner.infer(model, bad, timeout_s)
        raise RuntimeError("injected fault")


async def start(fault: Fault, marked_doc: dict[str, Any], reference: Reference
                ) -> tuple[TestClient[Any, Any], FaultyBackend]:
    marked = reference.tensors(marked_doc)[USER_NUM][0]
    backends: list[FaultyBackend] = []

    def factory(s: Settings, models: Mapping[str, Path]) -> Backend:
        backends.append(FaultyBackend(build_backend(s, models), marked, fault))
        return backends[0]

    # A long max wait, so the concurrent requests below share one batch.
    settings = Settings.load(None, model_repository=REPOSITORY, max_wait_ms=300.0,
                             default_budget_ms=10_000.0)
    client = TestClient(TestServer(create_app(settings, factory), host="127.0.0.1"))
    await client.start_server()
    backends[0].batches.clear()
    return client, backends[0]


async def post(client: TestClient[Any, Any], doc: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/v1/rank", data=orjson.dumps(doc), headers=JSON)
    return response.status, await response.json()


@pytest.mark.parametrize("fault", ["corrupt", "raise"])
async def test_a_failing_batch_fails_only_the_marked_request(
        fault: Fault, heldout: list[dict[str, Any]], reference: Reference) -> None:
    docs = [{**d, "return_tasks": True} for d in heldout[10:14]]
    marked = 2
    client, backend = await start(fault, docs[marked], reference)
    try:
        results = await asyncio.gather(*(post(client, d) for d in docs))
        assert backend.batches[0] == len(docs)  # all four shared the failing batch
        for i, (status, answer) in enumerate(results):
            if i == marked:
                assert status == 502, answer
                assert answer["error"]["code"] == "backend_error"
            else:
                assert status == 200, answer
                reference.check(docs[i], answer)
        # Then each request was retried alone, and only the marked one failed again.
        assert sorted(backend.batches[1:]) == [1] * len(docs)
        assert backend.faults == 2
        # The process lives on: health, readiness and new requests are fine.
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        status, answer = await post(client, docs[0])
        assert status == 200
        reference.check(docs[0], answer)
        status, answer = await post(client, docs[marked])  # alone in a batch: fails alone
        assert status == 502
    finally:
        await client.close()


async def test_a_transient_fault_is_retried_within_the_budget(
        heldout: list[dict[str, Any]], reference: Reference) -> None:
    docs = [{**d, "return_tasks": True} for d in heldout[20:23]]
    client, backend = await start("once", docs[0], reference)
    try:
        results = await asyncio.gather(*(post(client, d) for d in docs))
        for doc, (status, answer) in zip(docs, results, strict=True):
            assert status == 200, answer
            reference.check(doc, answer)
        assert backend.faults == 1
        assert backend.batches[0] == len(docs)
    finally:
        await client.close()
