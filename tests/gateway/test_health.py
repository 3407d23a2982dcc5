"""Liveness, readiness and the metrics endpoint."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from serving.errors import Unavailable
from serving.gateway.dataplane import DataPlane
from serving.gateway.keys import DATA_PLANE
from serving.ranking.ranker import RankRequest
from serving.settings import Settings
from serving.telemetry.metrics import Metrics
from tests.gateway.conftest import GatewayFactory


async def test_health_readiness_and_metrics(start_gateway: GatewayFactory,
                                            heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    assert (await gateway.client.get("/healthz")).status == 200
    assert (await gateway.client.get("/readyz")).status == 200
    ranked = await gateway.client.post("/v1/rank", data=orjson.dumps(heldout[0]),
                                       headers={"Content-Type": "application/json"})
    assert ranked.status == 200
    metrics = await gateway.client.get("/metrics")
    text = await metrics.text()
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert ('rankserve_request_latency_seconds_bucket{le="0.005",model="feed_ranker",'
            'route="/v1/rank",status="200",status_class="2xx",version="1"}') in text
    assert 'rankserve_batch_rows_count{model="feed_ranker"} 1.0' in text
    assert "rankserve_latency_model_error_seconds_count" in text

    gateway.app[DATA_PLANE].draining = True  # what SIGTERM's on_shutdown does
    refused = await gateway.client.get("/readyz")
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "unavailable"
    assert (await gateway.client.get("/healthz")).status == 200  # alive while draining


def test_before_models_load_v2_is_unavailable_like_v1() -> None:
    # /v1/rank answered 503 (retry) while /v2 answered 404 (give up) for the same state.
    plane = DataPlane(Settings(), Metrics())
    with pytest.raises(Unavailable):
        plane.model("feed_ranker")
    with pytest.raises(Unavailable):
        plane._route(RankRequest(user={"user_id": 1}, candidates={}, n=0))
