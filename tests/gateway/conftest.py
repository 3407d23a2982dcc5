"""Gateway fixtures: real held-out KuaiRand requests, a real gateway on 127.0.0.1, and a
direct ONNX Runtime reference that scores the same requests without the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from serving.backends.base import Backend
from serving.backends.factory import build_backend
from serving.gateway.app import create_app
from serving.gateway.keys import DATA_PLANE, METRICS
from serving.ranking.counters import CounterJoin
from serving.ranking.features import ITEM_TO_USER, FeatureEncoder, columns_from_rows
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.counters import SNAPSHOT_FILE, CounterSnapshot
from serving.repository.schema import schema_of_card
from serving.settings import Settings
from serving.train.data import load_requests
from tests.batching.pausable import PausableBackend

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
RANKER = REPOSITORY / "feed_ranker" / "1"


@pytest.fixture(scope="session")
def heldout() -> list[dict[str, Any]]:
    """Real requests from the held-out KuaiRand days (one per user and day)."""
    return load_requests(limit=400)


@dataclass
class Reference:
    """Scores a /v1/rank document with ONNX Runtime directly, bypassing the gateway (the
    counters a document lacks joined from the version's snapshot, as a served version does;
    tests/gateway/test_counter_snapshot_http.py checks that join on its own)."""

    session: ort.InferenceSession
    encoder: FeatureEncoder
    card: ModelCard
    join: CounterJoin | None = None

    @classmethod
    def load(cls, version_dir: Path) -> Reference:
        card = ModelCard.load(version_dir / CARD_FILE)
        schema = schema_of_card(card)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(version_dir / ONNX_FILE), options,
                                       providers=["CPUExecutionProvider"])
        snapshot = version_dir / SNAPSHOT_FILE
        join = CounterJoin.of(CounterSnapshot.load(snapshot), schema) \
            if snapshot.is_file() else None
        return cls(session, FeatureEncoder.from_card(card.features, schema), card, join)

    def probs(self, document: dict[str, Any]) -> np.ndarray:
        return self.session.run(["probs"], self.tensors(document))[0]

    def tensors(self, document: dict[str, Any]) -> dict[str, np.ndarray]:
        """The model's inputs for ``document`` (one request row)."""
        rows = document["candidates"]
        n = len(rows)
        user: Mapping[str, Any] = document["user"]
        candidates: Mapping[str, Any] = columns_from_rows(rows, "item")
        if self.join is not None:
            user, candidates = self.join.fill(user, candidates, n)
        tensors = self.encoder.encode_items(candidates, n)
        tensors.update(self.encoder.encode_users(
            {k: [v] for k, v in user.items()},
            {k: [v] for k, v in document.get("context", {}).items()},
            [document.get("history")], 1))
        tensors[ITEM_TO_USER] = np.zeros(n, dtype=np.int64)
        return tensors

    def weights(self) -> np.ndarray:
        return np.array([self.card.value_weights.get(t, 0.0) for t in self.card.tasks])

    def check(self, document: dict[str, Any], answer: dict[str, Any]) -> None:
        """``answer`` ranks exactly ``document``'s candidates with the reference's scores."""
        probs = self.probs(document)
        ids = np.array([c["video_id"] for c in document["candidates"]])
        got_ids = np.asarray(answer["video_id"])
        assert sorted(got_ids.tolist()) == sorted(ids.tolist())
        got = np.stack([answer["probs"][t] for t in self.card.tasks], axis=1)
        for row, video in enumerate(got_ids):
            candidates = probs[ids == video]
            assert np.abs(candidates - got[row]).max(axis=1).min() <= 1e-6
        scores = np.asarray(answer["score"])
        np.testing.assert_allclose(scores, got @ self.weights(), rtol=0, atol=1e-9)
        assert (np.diff(scores) <= 0).all()


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference.load(RANKER)


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    backend: PausableBackend

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def queued_rows(self) -> int:
        return sum(b.queued_rows for b in self.app[DATA_PLANE].batchers.values())


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Starts gateways (settings overrides as keyword arguments) on 127.0.0.1; each one's
    backend is the real configured backend behind a gate the test may close."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        # A generous default budget: the 2-core test machine is shared, and these tests
        # check behaviour, not speed.
        settings = Settings.load(None, **{"model_repository": REPOSITORY, "port": 0,
                                          "max_wait_ms": 2.0, "default_budget_ms": 10_000.0,
                                          **overrides})
        backends: list[PausableBackend] = []

        def factory(s: Settings, models: dict[str, Path]) -> Backend:
            backends.append(PausableBackend(build_backend(s, models)))
            return backends[0]

        app = create_app(settings, factory)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        backends[0].calls.clear()  # forget the warm-up batches
        started.append(Gateway(client, app, backends[0]))
        return started[-1]

    yield start
    for gateway in started:
        gateway.backend.gate.set()
        await gateway.client.close()
