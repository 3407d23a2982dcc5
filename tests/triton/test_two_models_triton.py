"""Both committed rankers through one real tritonserver (their python-backend mirrors):
the Triton gateway scores each model's requests as the embedded one does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from serving.localtriton.server import LocalTriton
from serving.repository.card import CARD_FILE, ModelCard
from serving.repository.schema import Schema
from serving.settings import Settings
from serving.train.data import SCHEMA_DIR, load_requests
from serving.train.synthetic import Config, generate, write
from tests.triton.conftest import start_triton
from tests.triton.rank_requests import RequestMaker, running_gateway

pytestmark = pytest.mark.triton

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
SECOND = "multiformat_ranker"


@pytest.fixture(scope="module")
def both_triton() -> LocalTriton:
    return start_triton(REPOSITORY, "two-models")


def settings(**overrides: Any) -> Settings:
    return Settings(**{"model_repository": REPOSITORY, "port": 0, **overrides})


async def post(session: aiohttp.ClientSession, url: str, doc: dict[str, Any]
               ) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/v1/rank", json=doc) as response:
        return response.status, await response.json()


async def test_triton_serves_both_models_like_the_embedded_backend(
        both_triton: LocalTriton, tmp_path: Path) -> None:
    write(generate(Config(users=40, days=8, candidates=6)), tmp_path)
    second = [{**d, "model": SECOND, "return_tasks": True, "budget_ms": 10_000}
              for d in load_requests(tmp_path, limit=10, min_candidates=2,
                                     schema=Schema.load(SCHEMA_DIR / "multiformat.yaml"))]
    maker = RequestMaker(ModelCard.load(REPOSITORY / "feed_ranker" / "1" / CARD_FILE), seed=7)
    first = [maker.document(20, budget_ms=10_000) for _ in range(10)]
    triton = settings(backend="triton", triton_url=both_triton.grpc_url, failover="none")
    async with running_gateway(settings(backend="embedded")) as (embedded_url, _), \
            running_gateway(triton) as (triton_url, _), aiohttp.ClientSession() as session:
        docs = first + second
        via_triton = await asyncio.gather(*(post(session, triton_url, d) for d in docs))
        embedded = await asyncio.gather(*(post(session, embedded_url, d) for d in docs))
    for doc, (status, ours), (ref_status, reference) in zip(docs, via_triton, embedded,
                                                            strict=True):
        assert status == 200, ours
        assert ref_status == 200, reference
        assert ours["degraded"] is False
        key = "item_id" if doc.get("model") == SECOND else "video_id"
        assert ours["model"]["name"] == (SECOND if key == "item_id" else "feed_ranker")
        got = dict(zip(ours[key], ours["score"], strict=True))
        want = dict(zip(reference[key], reference["score"], strict=True))
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5,
                                   atol=1e-6)
