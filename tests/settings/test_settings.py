"""Settings sources and their priority: defaults < YAML < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import Settings, masked, unknown_environment


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


@pytest.mark.parametrize("text", ['["CPUExecutionProvider"]', "CPUExecutionProvider",
                                  ' [ "CPUExecutionProvider" ] ', "CPUExecutionProvider,"])
def test_list_settings_accept_a_json_list_or_commas(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("RANKSERVE_PROVIDERS", text)
    assert Settings.load().providers == ["CPUExecutionProvider"]
    assert Settings.load(providers=text).providers == ["CPUExecutionProvider"]


def test_a_json_list_that_is_not_one_of_strings_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSERVE_PROVIDERS", '["CPUExecutionProvider", 3]')
    with pytest.raises(ValidationError, match="providers: expected a JSON list of strings"):
        Settings.load()


def test_log_level_only_real_levels_in_any_case() -> None:
    assert Settings.load(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValidationError, match="log_level"):
        Settings.load(log_level="verbose")


@pytest.mark.parametrize(("text", "expected"), [("32MiB", 32 * 1024**2), ("64k", 64_000),
                                                ("2048", 2048), ("1.5 KiB", 1536)])
def test_sizes_accept_units(text: str, expected: int) -> None:
    assert Settings.load(max_body_bytes=text).max_body_bytes == expected


def test_a_size_with_an_unknown_unit_names_the_field() -> None:
    with pytest.raises(ValidationError, match="max_body_bytes: expected bytes"):
        Settings.load(max_body_bytes="32 parsecs")


def test_unknown_environment_variables_are_reported_with_a_suggestion() -> None:
    env = {"RANKSERVE_PORT": "1", "RANKSERVE_BACTH_ROWS": "5", "RANKSERVE_CONFIG": "x.yaml",
           "RANKSERVE_DATA": "d", "HOME": "/"}
    lines = unknown_environment(env)
    assert lines == ["unknown environment variable RANKSERVE_BACTH_ROWS ignored: no such "
                     "setting; did you mean RANKSERVE_BATCH_ROWS?"]


def test_an_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "rankserve.yaml"
    config.write_text("bacth_rows: 5\n")
    with pytest.raises(ValidationError, match="bacth_rows"):
        Settings.load(config)


def test_masked_hides_secrets_only() -> None:
    shown = masked(Settings.load(auth_token="s3cret", admin_enabled=True, admin_token="adm"))
    assert (shown["auth_token"], shown["admin_token"]) == ("***", "***")
    assert shown["port"] == 8000
    assert "s3cret" not in str(shown)
    assert masked(Settings.load())["auth_token"] is None  # unset is shown as unset
