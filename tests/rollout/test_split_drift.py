"""A configured split that the served versions cannot honour (a version with a share is not
loaded) is a WARNING at start and on every reload, naming the split really in force; a
split that is honoured logs none."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from serving.rollout.routing import split_drift
from tests.rollout.conftest import ADMIN_TOKEN, MODEL, GatewayFactory, add_version, make_repository

ROLLOUT = {MODEL: {"1": 80, "2": 20}}


def drift_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "serving.rollout.controller" and r.levelno == logging.WARNING]


async def test_split_with_a_version_not_loaded_warns_at_start_and_on_reload(
        start_gateway: GatewayFactory, heldout: list[dict[str, Any]], versions_dir: Path,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="serving.rollout.controller")
    repository = make_repository(tmp_path, [1], versions_dir)
    gateway = await start_gateway(model_repository=repository, rollout=ROLLOUT,
                                  admin_enabled=True, admin_token=ADMIN_TOKEN)
    started = drift_warnings(caplog)
    assert len(started) == 1, started
    assert f"'{MODEL}'" in started[0]
    assert "version(s) [2] not loaded" in started[0]
    assert "{1: 80.0, 2: 20.0}" in started[0]
    assert "split in force {1: 100.0}" in started[0]
    status, answer = await gateway.rank(heldout[0])
    assert status == 200
    assert answer["model"]["version"] == 1

    caplog.clear()
    assert (await gateway.admin("POST", "/admin/reload"))[0] == 200
    assert len(drift_warnings(caplog)) == 1  # still not loaded: said again

    caplog.clear()
    add_version(repository, 2, versions_dir / "2")
    assert (await gateway.admin("POST", "/admin/reload"))[0] == 200
    assert drift_warnings(caplog) == []  # honoured now


def test_drift_when_no_configured_version_is_loaded() -> None:
    drift = split_drift(MODEL, {2: 50.0, 3: 50.0}, [1])
    assert drift is not None
    assert "version(s) [2, 3] not loaded" in drift
    assert "the default version answers everyone" in drift
    assert split_drift(MODEL, {1: 100.0, 2: 0.0}, [1]) is None  # a zero share needs nothing
