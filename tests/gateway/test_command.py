"""``rankserve serve``: flags generated from the settings, and a real process that starts,
answers, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

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
