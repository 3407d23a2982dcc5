"""The `helm test` hook pod, run for real: its rendered command and environment, pointed at
a real gateway on 127.0.0.1 (embedded backend, the committed model, the chart's rendered
settings file and auth Secret), must pass; with a wrong token it must fail and say why."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.server import wait_ready

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chart-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rendered(render: Any) -> Any:
    return render("--set", "gateway.auth.enabled=true", "--set", f"gateway.auth.token={TOKEN}")


@pytest.fixture(scope="module")
def gateway(rendered: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gateway started from the chart's rendered config and Secret.

    Flags override what only makes sense in the cluster (Triton backend, pod paths, port).
    """
    config = tmp_path_factory.mktemp("gateway") / "config.yaml"
    config.write_text(rendered.one("ConfigMap", "-gateway-config")["data"]["config.yaml"])
    secret = rendered.one("Secret", "-auth")
    token = base64.b64decode(secret["data"]["token"]).decode()
    port = _free_port()
    env = {**os.environ, "RANKSERVE_CONFIG": str(config), "RANKSERVE_AUTH_TOKEN": token,
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--backend", "embedded", "--model-repository",
           str(ROOT / "model_repository"), "--providers", "CPUExecutionProvider"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 60.0, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_hook(rendered: Any, url: str, token: str) -> subprocess.CompletedProcess[str]:
    """The hook pod's container command with its environment, aimed at ``url``."""
    (pod,) = [p for p in rendered.by_kind["Pod"]
              if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["RANKSERVE_URL"].startswith("http://rel-rankserve.ranking.svc:")
    env["RANKSERVE_URL"] = url
    secret_env = [e for e in container["env"] if "valueFrom" in e]
    assert [e["name"] for e in secret_env] == ["RANKSERVE_AUTH_TOKEN"]
    env["RANKSERVE_AUTH_TOKEN"] = token
    assert container["command"] == ["python", "-c"]
    command = [sys.executable, "-c", *container["args"]]
    return subprocess.run(command, env={"PATH": os.environ["PATH"], **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_hook_ranks_through_a_real_gateway(rendered: Any, gateway: str) -> None:
    result = _run_hook(rendered, gateway, TOKEN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK {gateway}/v1/rank: 5 ranked")


def test_hook_fails_loudly(rendered: Any, gateway: str) -> None:
    result = _run_hook(rendered, gateway, "wrong-token")
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAIL {gateway}/v1/rank: HTTP 401")
