"""``rankserve serve``: flags generated from the settings, and a real process that starts,
answers, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from serving.gateway import command
from serving.settings import Settings
from tests.gateway.conftest import REPOSITORY
from tests.serve_process import serve_process

PROJECT = REPOSITORY.parent


def test_help_lists_every_setting_with_its_default() -> None:
    out = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--help"],
                         capture_output=True, text=True, check=True, cwd=PROJECT,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    for name, info in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in out, name
        assert f"RANKSERVE_{name.upper()}" in out, name
        if isinstance(info.default, (int, float, str)) and not isinstance(info.default, bool):
            assert f"default: {info.default}" in out, name
    assert "--config" in out


def test_serve_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("max_wait_ms: 1.0\nbatch_rows: 512\n")
    with serve_process("--config", str(config), "--model-repository", str(REPOSITORY),
                       env={"RANKSERVE_DEFAULT_BUDGET_MS": "5000"}) as (process, address):
        with urllib.request.urlopen(f"{address}/readyz", timeout=10) as response:
            assert response.status == 200
        body = json.dumps({"user": {"user_id": 1},
                           "candidates": [{"video_id": 1}, {"video_id": 2}]}).encode()
        request = urllib.request.Request(f"{address}/v1/rank", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert sorted(json.loads(response.read())["video_id"]) == [1, 2]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_serving_path_never_imports_torch_or_pandas() -> None:
    code = ("import sys, serving.cli, serving.gateway.command, serving.client; "
            "from serving.cli import COMMANDS; "
            "assert not {'torch', 'pandas'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT)


def _rankserve(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True,
                          text=True, cwd=PROJECT, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_version_and_a_top_level_help_for_users() -> None:
    version = _rankserve("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("rankserve ")
    out = _rankserve("--help").stdout
    assert "getting started:" in out
    assert "rankserve serve --print-config" in out
    for name in ("serve", "train", "export", "check-repo", "triton"):
        assert name in out


def test_serve_help_groups_the_options() -> None:
    out = _rankserve("serve", "--help").stdout
    groups = [line for line in out.splitlines() if line.endswith("settings:")]
    assert groups[:7] == ["server settings:", "backend (embedded ONNX Runtime) settings:",
                          "Triton settings:", "batching settings:", "limits settings:",
                          "security settings:", "rollouts settings:"]
    triton = out.split("Triton settings:")[1].split("batching settings:")[0]
    assert "--triton-url" in triton
    assert "--failover" in triton
    assert "--auth-token-file" in out.split("security settings:")[1]


def test_print_config_shows_the_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-from-file\n")
    result = _rankserve("serve", "--print-config", "--batch-rows", "512",
                        "--auth-token-file", str(token),
                        env={"RANKSERVE_PROVIDERS": '["CPUExecutionProvider"]',
                             "RANKSERVE_ADMIN_TOKEN": "adm"})
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["batch_rows"] == 512
    assert shown["providers"] == ["CPUExecutionProvider"]
    assert shown["auth_token"] == "***"
    assert shown["admin_token"] == "***"
    assert "s3cret" not in result.stdout
    assert "adm\n" not in result.stdout


def test_the_auth_token_file_is_read_and_a_flag_still_wins(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    parser = argparse.ArgumentParser()
    command.configure(parser)
    monkeypatch.setenv("RANKSERVE_AUTH_TOKEN_FILE", str(token))
    assert command.load_settings(parser.parse_args([])).auth_token == "from-file"
    flagged = parser.parse_args(["--auth-token", "from-flag"])
    assert command.load_settings(flagged).auth_token == "from-flag"


def test_a_port_in_use_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No repository there: had it loaded models first, that would be the error.
        result = _rankserve("serve", "--port", str(port),
                            "--model-repository", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rankserve serve: cannot listen on 127.0.0.1:{port}: already in use (setting port: "
        "--port, RANKSERVE_PORT; host: --host)"]


def test_start_warns_about_unknown_variables_and_logs_the_settings_masked() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", "0", "--model-repository",
         str(REPOSITORY), "--auth-token", "s3cret"], cwd=PROJECT, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "RANKSERVE_BACTH_ROWS": "5"})
    entries = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            entries.append(json.loads(line))  # not a terminal: JSON lines
            if entries[-1]["msg"].startswith("listening on"):
                break
    finally:
        process.kill()
        process.wait()
    warnings = [e["msg"] for e in entries if e["level"] == "WARNING"]
    assert any("RANKSERVE_BACTH_ROWS" in w and "RANKSERVE_BATCH_ROWS" in w for w in warnings)
    logged = next(e for e in entries if e["msg"].startswith("settings in force"))
    assert logged["settings"]["auth_token"] == "***"
    assert logged["settings"]["port"] == 0
    assert not any("s3cret" in json.dumps(e) for e in entries)
