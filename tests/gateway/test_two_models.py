"""Two rankers with different schemas behind one gateway: each ranks with its own features
and returns its own candidate id, each reports (or, strict, refuses) the other's features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from serving.ranking.features import FeatureEncoder, columns_from_rows
from serving.repository.card import ModelCard
from serving.repository.schema import Schema, schema_of_card
from serving.train.data import SCHEMA_DIR, load_requests
from serving.train.synthetic import Config, generate, write
from tests.gateway.conftest import REPOSITORY, GatewayFactory, Reference
from tests.gateway.test_rank import post

SECOND = "multiformat_ranker"


@pytest.fixture(scope="module")
def multiformat(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Replayed requests of a small synthetic log in the second model's schema."""
    out = tmp_path_factory.mktemp("multiformat")
    write(generate(Config(users=60, days=8, candidates=6)), out)
    return load_requests(out, schema=Schema.load(SCHEMA_DIR / "multiformat.yaml"), limit=30,
                         min_candidates=3)


def direct_probs(document: dict[str, Any]) -> tuple[np.ndarray, ModelCard]:
    """The second model's probabilities for ``document`` through ONNX Runtime directly."""
    card = ModelCard.load(REPOSITORY / SECOND / "1" / "model_card.json")
    encoder = FeatureEncoder.from_card(card.features, schema_of_card(card))
    rows = document["candidates"]
    tensors = encoder.encode_request(document["user"], document.get("context", {}),
                                     document.get("history"),
                                     columns_from_rows(rows, "item"), len(rows))
    session = ort.InferenceSession(str(REPOSITORY / SECOND / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["probs"], tensors)[0], card


async def test_both_models_rank_each_with_its_own_schema(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        multiformat: list[dict[str, Any]], reference: Reference) -> None:
    gateway = await start_gateway()
    status, answer = await post(gateway, {**heldout[0], "return_tasks": True})
    assert status == 200, answer
    assert answer["model"]["name"] == "feed_ranker"
    reference.check(heldout[0], answer)
    for document in multiformat[:5]:
        status, answer = await post(gateway, {**document, "model": SECOND,
                                              "return_tasks": True})
        assert status == 200, answer
        assert answer["model"] == {"name": SECOND, "version": 1}
        assert "ignored_features" not in answer
        probs, card = direct_probs(document)
        ids = [c["item_id"] for c in document["candidates"]]
        assert sorted(answer["item_id"]) == sorted(ids)  # the schema's candidate id
        got = np.stack([answer["probs"][t] for t in ["click", "dwell", "share", "hide"]], 1)
        for row, item in enumerate(answer["item_id"]):
            assert np.abs(probs[ids.index(item)] - got[row]).max() <= 1e-6
        weights = np.array([card.value_weights[t] for t in card.tasks])
        np.testing.assert_allclose(answer["score"], got @ weights, atol=1e-9)


async def test_a_columnar_body_needs_no_video_id(start_gateway: GatewayFactory,
                                                multiformat: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    document = multiformat[0]
    rows = document["candidates"]
    columns = {name: [r.get(name) for r in rows] for name in rows[0]}
    status, answer = await post(gateway, {**document, "model": SECOND, "candidates": columns})
    assert status == 200, answer
    assert sorted(answer["item_id"]) == sorted(columns["item_id"])
    status, answer = await post(gateway, {**document, "model": SECOND,
                                          "candidates": {**columns, "item_age_hours": [1.0]}})
    assert status == 400
    assert answer["error"]["field"] == "candidates.item_age_hours"
    assert "candidates.item_id" in answer["error"]["message"]  # the length it disagrees with
    without_id = {k: v for k, v in columns.items() if k != "item_id"}
    status, answer = await post(gateway, {**document, "model": SECOND,
                                          "candidates": without_id})
    assert status == 400
    assert answer["error"]["field"] == "candidates.item_id"


def crossed(document: dict[str, Any], model: str | None) -> dict[str, Any]:
    """``document`` with one feature of the other model on each side."""
    extra: dict[str, dict[str, Any]]
    if model == SECOND:  # feed_ranker's names sent to the multi-format ranker
        extra = {"user": {"user_active_degree": "high"}, "context": {"tab": 1},
                 "candidates": {"video_id": 5}}
    else:
        extra = {"user": {"user_tenure_days": 3}, "context": {"surface": "home_feed"},
                 "candidates": {"item_format": "post"}}
    out = {**document, "user": {**document["user"], **extra["user"]},
           "context": {**document.get("context", {}), **extra["context"]},
           "candidates": [{**c, **extra["candidates"]} for c in document["candidates"]]}
    return {**out, "model": model} if model else out


async def test_a_feature_of_one_model_is_unknown_to_the_other(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        multiformat: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    status, answer = await post(gateway, crossed(multiformat[0], SECOND))
    assert status == 200, answer
    assert sorted(answer["ignored_features"]) == ["candidates.video_id", "context.tab",
                                                  "user.user_active_degree"]
    status, answer = await post(gateway, crossed(heldout[0], None))
    assert status == 200, answer
    assert sorted(answer["ignored_features"]) == ["candidates.item_format", "context.surface",
                                                  "user.user_tenure_days"]


async def test_strict_mode_refuses_the_other_models_feature_naming_it(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]],
        multiformat: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(strict_features=True)
    status, answer = await post(gateway, crossed(multiformat[0], SECOND))
    assert status == 400, answer
    assert answer["error"]["field"] in {"candidates.video_id", "context.tab",
                                        "user.user_active_degree"}
    assert "candidates.video_id" in answer["error"]["message"]
    status, answer = await post(gateway, {**multiformat[0], "model": SECOND})
    assert status == 200, answer
    status, answer = await post(gateway, crossed(heldout[0], None))
    assert status == 400
    assert "candidates.item_format" in answer["error"]["message"]


async def test_each_model_describes_its_own_schema(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    response = await gateway.client.get(f"/v1/models/{SECOND}")
    assert response.status == 200
    described = orjson.loads(await response.read())
    assert described["tasks"] == ["click", "dwell", "share", "hide"]
    fields = {f["field"] for f in described["features"]}
    assert {"user.user_id", "context.surface", "history", "candidates.item_format"} <= fields
    assert "candidates.video_id" not in fields


def test_the_second_model_is_small() -> None:
    version = Path(REPOSITORY / SECOND / "1")
    assert sum(f.stat().st_size for f in version.iterdir()) < 3_000_000
