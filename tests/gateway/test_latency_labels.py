"""Request latency is split by status class and labelled with the version that answered,
so fast refusals cannot pull the success p99 down and an A/B split can be compared."""

from __future__ import annotations

from typing import Any

import orjson

from tests.gateway.conftest import GatewayFactory

JSON = {"Content-Type": "application/json"}


async def test_latency_labels_split_status_class_and_name_the_version(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway()
    ok = await gateway.client.post("/v1/rank", data=orjson.dumps(heldout[0]), headers=JSON)
    assert ok.status == 200
    bad = await gateway.client.post("/v1/rank", data=b"{not json", headers=JSON)
    assert bad.status == 400
    answered = {"route": "/v1/rank", "status": "200", "status_class": "2xx",
                "model": "feed_ranker", "version": "1"}
    assert gateway.metric("rankserve_request_latency_seconds_count", answered) == 1
    # Refused before any version was chosen: no model label, its own class.
    refused = {"route": "/v1/rank", "status": "400", "status_class": "4xx", "model": "",
               "version": ""}
    assert gateway.metric("rankserve_request_latency_seconds_count", refused) == 1
    text = await (await gateway.client.get("/metrics")).text()
    assert "process_resident_memory_bytes" in text
