"""Settings sources and their priority: defaults < YAML < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import Settings


def test_priority_yaml_then_environment_then_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "rankserve.yaml"
    config.write_text("port: 9100\nbatch_rows: 512\nmax_wait_ms: 0.5\n")
    monkeypatch.setenv("RANKSERVE_BATCH_ROWS", "256")
    settings = Settings.load(config, max_wait_ms=1.5)
    assert (settings.port, settings.batch_rows, settings.max_wait_ms) == (9100, 256, 1.5)


def test_providers_from_the_environment_as_a_comma_separated_list(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSERVE_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    assert Settings.load().providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_wrong_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSERVE_BATCH_ROWS", "many")
    with pytest.raises(ValidationError, match="batch_rows"):
        Settings.load()
