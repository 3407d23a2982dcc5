"""Reloads under steady load lose nothing: clients keep sending while the served versions
are unloaded, loaded and reloaded several times; every request is answered 200, and no
shadow scoring started before a switch finds its version closed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.rollout.conftest import MODEL, GatewayFactory, make_repository

CLIENTS = 6
ADMIN = {"admin_enabled": True, "admin_token": "admin-secret-for-tests"}


async def test_reloads_under_load_lose_zero_requests(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1, 2], versions_dir)
    gateway = await start_gateway(model_repository=repository, max_wait_ms=2.0,
                                  rollout={MODEL: {"1": 50, "2": 50}}, shadow={MODEL: 2},
                                  **ADMIN)
    statuses: list[int] = []
    versions: set[int] = set()
    stop, answered = asyncio.Event(), asyncio.Event()

    async def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            status, answer = await gateway.rank(heldout[i % len(heldout)])
            statuses.append(status)
            answered.set()
            if status == 200:
                versions.add(answer["model"]["version"])
            else:
                raise AssertionError(answer)
            i += CLIENTS

    clients = [asyncio.create_task(client(c)) for c in range(CLIENTS)]
    changes = [("POST", "/admin/reload", None),
               ("POST", f"/admin/models/{MODEL}/unload", {"version": 1}),
               ("POST", f"/admin/models/{MODEL}/load", {"version": 1}),
               ("POST", "/admin/reload", None),
               ("POST", f"/admin/models/{MODEL}/unload", {"version": 2}),
               ("POST", "/admin/reload", None)]
    try:
        for method, path, body in changes:
            before = len(statuses)
            status, answer = await gateway.admin(method, path, body)
            assert status == 200, answer
            while len(statuses) < before + 2 * CLIENTS:  # traffic flows between changes
                answered.clear()
                await asyncio.wait_for(answered.wait(), 30.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert len(statuses) > 12 * CLIENTS
    assert set(statuses) == {200}
    assert versions == {1, 2}
    assert gateway.metric("rankserve_model_changes_total",
                          {"action": "reload", "outcome": "ok"}) == 3
    assert gateway.metric("rankserve_shadow_scored_total", {"model": MODEL, "version": "2"}) > 0
    assert gateway.metric("rankserve_shadow_dropped_total",
                          {"model": MODEL, "reason": "unavailable"}) == 0
