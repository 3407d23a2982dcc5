"""/admin: absent unless enabled, its own token (401 without, 403 wrong), and versions
loaded, unloaded and reloaded without a restart, each change visible to traffic."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serving.settings import Settings
from tests.rollout.conftest import (
    ADMIN_TOKEN,
    MODEL,
    GatewayFactory,
    add_version,
    build_versions,
    gateways,
    make_repository,
)

ADMIN = {"admin_enabled": True, "admin_token": ADMIN_TOKEN}


@pytest.fixture(scope="module")
def versions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two genuinely different versions of the ranker (see tests/rollout/conftest.py)."""
    return build_versions(tmp_path_factory.mktemp("versions"))


@pytest.fixture
async def rollout_gateway() -> AsyncIterator[GatewayFactory]:
    """Real gateways whose backend factory survives reloads (the gateway conftest's
    ``start_gateway`` wraps one backend only)."""
    async with gateways() as start:
        yield start


async def test_admin_endpoints_do_not_exist_unless_enabled(rollout_gateway: GatewayFactory,
                                                           versions_dir: Path,
                                                           tmp_path: Path) -> None:
    gateway = await rollout_gateway(model_repository=make_repository(tmp_path, [1], versions_dir),
                                  admin_token=ADMIN_TOKEN)
    for method, path in (("GET", "/admin/models"), ("POST", "/admin/reload"),
                         ("POST", f"/admin/models/{MODEL}/load")):
        status, body = await gateway.admin(method, path, {"version": 1})
        assert status == 404, (path, body)
        assert body["error"]["code"] == "not_found"


def test_enabling_admin_without_a_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="admin_token"):
        Settings.load(None, admin_enabled=True)


async def test_admin_needs_its_own_token(rollout_gateway: GatewayFactory, versions_dir: Path,
                                         tmp_path: Path) -> None:
    gateway = await rollout_gateway(model_repository=make_repository(tmp_path, [1], versions_dir),
                                  auth_token="traffic-token", **ADMIN)
    status, body = await gateway.admin("GET", "/admin/models", token=None)
    assert status == 401
    assert body["error"]["field"] == "Authorization"
    for wrong in ("traffic-token", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", "é"):
        status, body = await gateway.admin("POST", "/admin/reload", token=wrong)
        assert status == 403, wrong
        assert body["error"]["code"] == "forbidden"
    status, body = await gateway.admin("GET", "/admin/models")
    assert status == 200
    assert body["models"] == [{"name": MODEL, "loaded": [1], "on_disk": [1], "default": 1,
                               "split": {}, "shadow": None}]


async def test_load_and_unload_versions_without_restart(
        rollout_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1, 2], versions_dir,
                                 policy="latest { num_versions: 1 }")
    gateway = await rollout_gateway(model_repository=repository,
                                  rollout={MODEL: {"1": 100}}, **ADMIN)
    document = heldout[0]

    async def version_served() -> int:
        status, answer = await gateway.rank(document)
        assert status == 200, answer
        return int(answer["model"]["version"])

    async def v2_ready(version: int) -> int:
        return (await gateway.client.get(f"/v2/models/{MODEL}/versions/{version}/ready")).status

    # The policy serves only the newest version; the split's version 1 is not loaded.
    assert await version_served() == 2
    assert await v2_ready(1) == 404

    status, body = await gateway.admin("POST", f"/admin/models/{MODEL}/load", {"version": 1})
    assert status == 200, body
    assert body["models"][0]["loaded"] == [1, 2]
    assert body["models"][0]["split"] == {"1": 100.0}
    metadata = await (await gateway.client.get(f"/v2/models/{MODEL}")).json()
    assert metadata["versions"] == ["1", "2"]
    assert await version_served() == 1
    assert await v2_ready(1) == 200

    status, body = await gateway.admin("POST", f"/admin/models/{MODEL}/unload", {"version": 1})
    assert status == 200, body
    assert body["models"][0]["loaded"] == [2]
    assert await version_served() == 2
    assert await v2_ready(1) == 404

    status, body = await gateway.admin("POST", f"/admin/models/{MODEL}/unload", {"version": 2})
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert await version_served() == 2


async def test_admin_requests_are_validated(rollout_gateway: GatewayFactory, versions_dir: Path,
                                            tmp_path: Path) -> None:
    gateway = await rollout_gateway(model_repository=make_repository(tmp_path, [1], versions_dir),
                                  **ADMIN)
    cases = [
        (f"/admin/models/{MODEL}/load", {"version": 7}, 404, "version"),
        (f"/admin/models/{MODEL}/load", {"version": 0}, 400, "version"),
        (f"/admin/models/{MODEL}/load", {"version": True}, 400, "version"),
        (f"/admin/models/{MODEL}/load", {"version": "\u00b2"}, 400, "version"),
        (f"/admin/models/{MODEL}/load", {"version": "1"}, 200, None),
        (f"/admin/models/{MODEL}/load", {}, 400, "version"),
        (f"/admin/models/{MODEL}/load", [1], 400, "body"),
        (f"/admin/models/{MODEL}/unload", {"version": 5}, 404, "version"),
        ("/admin/models/nope/load", {"version": 1}, 404, "model"),
        ("/admin/models/..%2F..%2Fetc/load", {"version": 1}, 404, None),
        ("/admin/models/.hidden/load", {"version": 1}, 404, "model"),
    ]
    for path, body, status, field in cases:
        got, answer = await gateway.admin("POST", path, body)
        assert got == status, (path, body, answer)
        if field is not None:
            assert answer["error"]["field"] == field, (path, answer)


async def test_reload_picks_up_a_new_version_on_disk(
        rollout_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path) -> None:
    repository = make_repository(tmp_path, [1], versions_dir,
                                 policy="latest { num_versions: 1 }")
    gateway = await rollout_gateway(model_repository=repository, **ADMIN)
    assert (await gateway.rank(heldout[0]))[1]["model"]["version"] == 1
    add_version(repository, 2, versions_dir / "2")
    assert (await gateway.rank(heldout[0]))[1]["model"]["version"] == 1  # not before reload
    status, body = await gateway.admin("POST", "/admin/reload")
    assert status == 200, body
    assert body["models"][0]["loaded"] == [2]
    assert body["models"][0]["on_disk"] == [1, 2]
    assert (await gateway.rank(heldout[0]))[1]["model"]["version"] == 2

    # A broken new version fails the reload and the serving version stays.
    shutil.copytree(versions_dir / "2", repository / MODEL / "3")
    (repository / MODEL / "3" / "model.onnx").write_bytes(b"not an onnx file")
    status, body = await gateway.admin("POST", "/admin/reload")
    assert status >= 400, body
    assert (await gateway.rank(heldout[0]))[1]["model"]["version"] == 2
    assert gateway.metric("rankserve_model_changes_total",
                          {"action": "reload", "outcome": "failed"}) == 1
