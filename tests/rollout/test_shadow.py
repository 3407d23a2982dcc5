"""Shadow scoring: the response never waits for the candidate version, shadow work is
bounded (extra work dropped and counted), and the comparison reaches /metrics with the
values an independent computation gives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.ranking.value import top_k
from tests.gateway.conftest import Reference
from tests.rollout.conftest import MODEL, GatedBackend, GatewayFactory, make_repository

POLL_S = 0.01


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll a metric-based condition (Prometheus counters have no change events)."""
    for _ in range(int(timeout_s / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not true after {timeout_s} s")


async def test_shadow_never_delays_the_response_and_its_comparison_is_exported(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1, 2], versions_dir)
    gateway = await start_gateway(model_repository=repository, instances=2,
                                  rollout={MODEL: {"1": 100}}, shadow={MODEL: 2},
                                  shadow_max_inflight=1, gated=[f"{MODEL}@2"])
    backend = gateway.backends[-1]
    assert isinstance(backend, GatedBackend)
    backend.gate.clear()  # the candidate version hangs until the test lets it go
    labels = {"model": MODEL, "version": "2"}
    document = max(heldout[:50], key=lambda d: len(d["candidates"]))

    status, answer = await gateway.rank(document)
    assert status == 200, answer
    assert answer["model"]["version"] == 1
    # The answer came back while its shadow scoring was still held at the gate.
    assert gateway.metric("rankserve_shadow_inflight") == 1
    assert gateway.metric("rankserve_shadow_scored_total", labels) == 0

    # A second request while the one shadow slot is taken: answered, not shadowed.
    status, again = await gateway.rank(heldout[1])
    assert status == 200, again
    assert gateway.metric("rankserve_shadow_dropped_total",
                          {"model": MODEL, "reason": "busy"}) == 1
    await until(lambda: backend.held == 1)

    backend.gate.set()
    await until(lambda: gateway.metric("rankserve_shadow_scored_total", labels) == 1)
    assert gateway.metric("rankserve_shadow_inflight") == 0

    # The exported comparison equals one computed directly with both versions' models.
    served, shadow = (Reference.load(versions_dir / str(v)) for v in (1, 2))
    weights = served.weights()
    scores_1 = served.probs(document).astype(np.float64) @ weights
    scores_2 = shadow.probs(document).astype(np.float64) @ weights
    diff = float(np.abs(scores_2 - scores_1).mean())
    assert diff > 0  # version 2 is a genuinely different model
    assert np.isclose(gateway.metric("rankserve_shadow_score_diff_sum", labels), diff,
                      rtol=1e-5)
    k = min(10, len(scores_1))
    overlap = np.intersect1d(top_k(scores_1, k), top_k(scores_2, k)).size / k
    assert np.isclose(gateway.metric("rankserve_shadow_topk_overlap_sum", labels), overlap)

    text = await (await gateway.client.get("/metrics")).text()
    for series in ("rankserve_shadow_score_diff_bucket", "rankserve_shadow_topk_overlap_bucket",
                   "rankserve_shadow_scored_total", "rankserve_shadow_dropped_total",
                   "rankserve_shadow_inflight"):
        assert series in text, series


async def test_no_shadow_when_the_served_version_is_the_candidate(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1, 2], versions_dir)
    gateway = await start_gateway(model_repository=repository, shadow={MODEL: 2})
    status, answer = await gateway.rank(heldout[0])  # no split: the newest version serves
    assert status == 200
    assert answer["model"]["version"] == 2
    assert gateway.metric("rankserve_shadow_inflight") == 0
    assert gateway.metric("rankserve_shadow_scored_total", {"model": MODEL, "version": "2"}) == 0
